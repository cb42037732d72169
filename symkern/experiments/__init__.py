"""Experiments, one module per experiment, each with ``main(argv) -> int`` for ``symkern run NAME``.

* :mod:`symkern.experiments.teacher_student` — the mean-field paper's teacher–student grid
  (``symkern run teacher-student``);
* :mod:`symkern.experiments.si_subspace` — discovering the strongly invariant subspace E^G by
  iterated free training (``symkern run si-subspace``).

Shared plumbing (configuration, atomic checkpoints, provenance) is in
:mod:`symkern.experiments.common`. Nothing here is imported by ``import symkern``.
"""
