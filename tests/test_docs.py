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
    "symkern.meanfield.metrics",
    "symkern.mirror.sweeps",
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
