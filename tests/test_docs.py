"""The docstring examples are run: an example that no longer holds fails here."""

import doctest
import importlib

import pytest
import torch

import symkern

MODULES = [
    "symkern.ops.orbit",
    "symkern.ops.fixed_point",
    "symkern.ops.mirror",
    "symkern.ops.particles",
    "symkern.groups.constructors",
    "symkern.groups._native",
    "symkern.groups.continuous",
    "symkern.groups.group",
    "symkern.groups.orbits",
    "symkern.groups.reps",
    "symkern.groups.schreier_sims",
    "symkern.meanfield.laws",
    "symkern.meanfield.metrics",
    "symkern.meanfield.problem",
    "symkern.meanfield.teachers",
    "symkern.meanfield.trainer",
    "symkern.meanfield.units",
    "symkern.mirror.core",
    "symkern.mirror.dcs",
    "symkern.mirror.sweeps",
    "symkern.mirror.thresholds",
    "symkern.testing",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module,
        extraglobs={"symkern": symkern, "torch": torch},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {name}'s examples fail (output above)"
