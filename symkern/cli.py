"""The ``symkern`` command line: ``symkern info`` and ``symkern run NAME``."""

from __future__ import annotations

import argparse
import json
import sys

# Experiments known to the CLI, with the issue that delivers each. An experiment whose module is
# not written yet fails with a clear message instead of pretending to run.
EXPERIMENTS: dict[str, str] = {
    "teacher-student": "symkern.experiments.teacher_student",
    "si-subspace": "symkern.experiments.si_subspace",
    "mirror-sparsity": "symkern.experiments.mirror_sparsity",
    "mirror-lowrank": "symkern.experiments.mirror_lowrank",
    "mirror-ensemble": "symkern.experiments.mirror_ensemble",
    "mirror-plasticity": "symkern.experiments.mirror_plasticity",
    "mirror-dcs": "symkern.experiments.mirror_dcs",
    "mirror-threshold": "symkern.experiments.mirror_threshold",
}


def _cmd_info(args: argparse.Namespace) -> int:
    from symkern.info import format_info, info  # noqa: PLC0415

    print(json.dumps(info(), indent=2) if args.json else format_info())
    return 0


def _cmd_run(args: argparse.Namespace, rest: list[str]) -> int:
    import importlib  # noqa: PLC0415

    module_name = EXPERIMENTS[args.name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(
            f"symkern: experiment {args.name!r} is not implemented yet ({module_name} does not "
            "exist in this version).",
            file=sys.stderr,
        )
        return 2
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: the C++ kernels stop within ~0.2 s (csrc/chunks.h); what the experiment wrote
        # so far (results, checkpoints) stays on disk. 130 = 128 + SIGINT, the shell convention.
        print(
            f"\nsymkern run {args.name}: interrupted (Ctrl-C). What it wrote so far stays in its "
            f"output directory; see `symkern run {args.name} --help` for --resume.",
            file=sys.stderr,
        )
        return 130
    except FloatingPointError as e:
        # a run that diverged (NaN/inf) with valid but too large parameters: bad input values
        # are usage errors (rc 2) before any work; this is found during the work
        print(f"symkern run {args.name}: error: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="symkern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, backends and why each is (not) available")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    p_run = sub.add_parser("run", help="run an experiment (options after NAME go to it)")
    p_run.add_argument("name", choices=sorted(EXPERIMENTS))
    # everything after NAME (its --help included) belongs to the experiment's own parser
    p_run.add_argument("experiment_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "info":
        return _cmd_info(args)
    return _cmd_run(args, args.experiment_args)


if __name__ == "__main__":
    sys.exit(main())
