"""Plumbing shared by the experiments: configuration, atomic files, versions, progress, tables.

Configuration. An experiment declares a dataclass of parameters and named presets (dicts of
overrides). The effective configuration is, later winning:

    dataclass defaults  <  preset (``--preset NAME``)  <  config file (``--config FILE``,
    TOML or JSON, flat keys = field names)  <  command-line flags (``--field-name VALUE``)

Every field gets a flag: lists are comma-separated (``--n-values 5,10,50``), booleans take
true/false. Unknown keys in a config file are an error (typos should not be silently ignored).

Checkpoints. Finished work is written with :func:`atomic_write_json` / :func:`atomic_save_npz`
(write to a temporary file in the same directory, fsync, then ``os.replace``), so a crash or a
SIGKILL leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import typing
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from symkern._checks import as_device

__all__ = [
    "atomic_save_npz",
    "atomic_write_json",
    "all_finite",
    "check_backend",
    "check_device",
    "check_diverged",
    "check_fields",
    "check_out_dir",
    "config_field",
    "nan_max",
    "option",
    "parse_experiment_args",
    "atomic_write_text",
    "build_config",
    "config_hash",
    "format_table",
    "load_checkpoint",
    "progress",
    "torch_threads",
    "versions",
]


# ----------------------------------------------------------------------------------------------
# configuration


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_list(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence):
        args = typing.get_args(tp)
        return True, (args[0] if args else str)
    return False, None


_TYPE_WORDS = {int: "an integer", float: "a number"}


def _coerce(name: str, tp, value):
    """Convert a config-file or CLI value to the field's type (with a clear error)."""
    is_list, elem = _is_list(tp)
    if is_list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{option(name)}: expected a list, got {value!r}")
        return [_coerce(name, elem, v) for v in value]
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(name, args[0], value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"{option(name)}: must be one of {list(allowed)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{option(name)}: expected true/false, got {value!r}")
    try:
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{option(name)}: expected {_TYPE_WORDS.get(tp, tp.__name__)}, got {value!r}"
        ) from None
    if tp is str:
        return str(value)
    return value


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A flat dict from a TOML (``.toml``, via tomllib) or JSON file.

    A file that cannot be decoded (not UTF-8) or parsed is a ValueError ``--config PATH: reason``
    (a usage error on the command line); a missing / unreadable file is the OSError naming it.
    """
    path = Path(path)
    text = path.read_bytes()
    try:
        if path.suffix.lower() == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib  # noqa: PLC0415 — Python ≥ 3.11
            else:  # pragma: no cover — Python 3.10
                import tomli as tomllib  # noqa: PLC0415
            data = tomllib.loads(text.decode())
        else:
            data = json.loads(text)  # bytes: UTF-8 (BOM allowed), UTF-16 / 32 detected
    except UnicodeDecodeError as e:
        raise ValueError(f"--config {path}: cannot decode the text ({e})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError / TOMLDecodeError: ValueError
        raise ValueError(f"--config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the config must be a table / object of parameters")
    return data


def parse_experiment_args(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    config_cls,
    presets: Mapping[str, Mapping[str, Any]],
    default_out: str,
    validate: Callable[[Any], None],
    resume: bool = True,
) -> tuple[argparse.Namespace, Any]:
    """The shared command line of ``symkern run NAME``: --preset, --config, --out, [--resume],
    --no-progress and one flag per Config field. Returns (args, the effective config): preset <
    config file < CLI values (:func:`build_config`), then ``validate(cfg)``, which raises
    ValueError for a bad combination;
    a bad value exits with the parser's usage error naming it."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--preset", default="quick", choices=sorted(presets),
                   help="parameter preset (default: quick)")  # fmt: skip
    p.add_argument("--config", default=None, help="TOML or JSON file of parameters")
    p.add_argument("--out", default=default_out, help="output directory")
    if resume:
        p.add_argument("--resume", action="store_true",
                       help="continue from the finished cells in --out")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p, config_cls, presets)
    args = p.parse_args(argv)
    names = set(config_cls.__dataclass_fields__)
    cli = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        file_values = load_config_file(args.config) if args.config else None
        cfg = build_config(config_cls, presets, args.preset, file_values, cli)
        validate(cfg)
        check_out_dir(args.out)
    except (ValueError, OSError) as e:
        p.error(str(e))
    return args, cfg


# --- validation of Config values (each experiment's ``_validate`` uses these) -----------------

SEED_LIMIT = 2**64  # Philox seeds are ints in [0, 2^64)
PHILOX_STEP_LIMIT = 2**32  # the particle engine's step counter is 32-bit: step0 + steps <= 2^32


def option(name: str) -> str:
    """The command-line flag of a Config field, as the user types it: ``n_values`` →
    ``--n-values``."""
    return "--" + name.replace("_", "-")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# rule → (test, "expected" for one value, for a list of values)
_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "int >= 1": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", "integers >= 1"),
    "int >= 0": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", "integers >= 0"),
    "seed": (
        lambda v: _is_int(v) and 0 <= v < SEED_LIMIT,
        "an integer in [0, 2^64)",
        "integers in [0, 2^64)",
    ),
    "finite > 0": (
        lambda v: _is_real(v) and math.isfinite(v) and v > 0,
        "a finite number > 0",
        "finite numbers > 0",
    ),
    "finite >= 0": (
        lambda v: _is_real(v) and math.isfinite(v) and v >= 0,
        "a finite number >= 0",
        "finite numbers >= 0",
    ),
    "finite": (lambda v: _is_real(v) and math.isfinite(v), "a finite number", "finite numbers"),
}
RULES = tuple(_RULES)


def check_fields(cfg, rules: Mapping[str, str], *, allow_empty: Sequence[str] = ()) -> None:
    """Check named fields of a Config dataclass against a rule each (one of :data:`RULES`:
    ``"int >= 1"``, ``"int >= 0"``, ``"seed"``, ``"finite > 0"``, ``"finite >= 0"``,
    ``"finite"``); raise ValueError naming the flag (``--eta must be a finite number > 0, got
    -1.0``). A list field must be non-empty (unless named in ``allow_empty``) with every element
    passing the rule; a field whose default is None may be None."""
    defaults = {
        f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING
    }
    for name, rule in rules.items():
        if rule not in _RULES:
            raise KeyError(f"unknown rule {rule!r} for {name}; known: {list(_RULES)}")
        test, one, many = _RULES[rule]
        value = getattr(cfg, name)
        if value is None and name in defaults and defaults[name] is None:
            continue
        if isinstance(value, list | tuple):
            if (not value and name not in allow_empty) or not all(test(v) for v in value):
                empty = "" if name in allow_empty else "non-empty "
                raise ValueError(f"{option(name)} must be a {empty}list of {many}, got {value!r}")
        elif not test(value):
            raise ValueError(f"{option(name)} must be {one}, got {value!r}")


def check_backend(
    backend: str, device: str | torch.device = "cpu", *, name: str = "backend"
) -> None:
    """``backend`` must be "auto" or a backend name (symkern.backends.registry); a forced backend
    must be able to run on ``device`` here (e.g. triton needs CUDA), and SYMKERN_BACKEND, which
    "auto" obeys, must be a valid name. ValueError naming the flag otherwise."""
    from symkern.backends import registry  # noqa: PLC0415

    names = ("auto", *registry.BACKEND_PRIORITY)
    if backend not in names:
        raise ValueError(f"{option(name)} must be one of {list(names)}, got {backend!r}")
    forced = registry._requested_backend(backend)  # "auto" → SYMKERN_BACKEND, checked there
    if forced == "auto":
        return
    be = registry.get_backend(forced)
    reasons = be.availability_reasons() or be.device_reasons(torch.device(device), forced=True)
    if reasons:
        via = option(name) if backend != "auto" else "SYMKERN_BACKEND"
        raise ValueError(f"{via} {forced}: cannot run here: {'; '.join(reasons)}")


def check_device(device: str, *, name: str = "device") -> torch.device:
    """``device`` parsed by torch.device: "cpu" or "cuda[:index]" with that CUDA device present.
    ValueError naming the flag otherwise."""
    return as_device(device, option(name))


def check_out_dir(out: str | os.PathLike) -> None:
    """Create the output directory (the run would next) and check a file can be written in it,
    so that an unusable ``--out`` is a usage error before any work, not a traceback after it.
    OSError naming ``--out`` otherwise."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise OSError(f"--out {out}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        where = f": {e.filename}" if e.filename and str(e.filename) != str(path) else ""
        raise OSError(
            f"--out {out}: cannot write an output directory there ({why}{where})"
        ) from None


# --- claims: a claim computed from NaN / inf data must not hold --------------------------------


def _flat(values) -> Iterator[Any]:
    """The numbers in nested containers (dicts: their values)."""
    if isinstance(values, torch.Tensor | np.ndarray):
        values = values.tolist()
    if isinstance(values, Mapping):
        values = values.values()
    if isinstance(values, Iterable) and not isinstance(values, str | bytes):
        for v in values:
            yield from _flat(v)
    else:
        yield values


def all_finite(values) -> bool:
    """True when every number in ``values`` (nested lists / tuples / arrays / dict values; None
    skipped) is finite. Claims AND this in: ``nan <= tol`` is False, but ``not (nan > tol)``,
    ``min``/``max`` over a list with a NaN after its first element, and ``inf >= threshold`` are
    not, so a claim must not be able to hold on NaN or inf data."""
    return all(v is None or math.isfinite(float(v)) for v in _flat(values))


def check_diverged(params: Mapping[str, torch.Tensor], what: str) -> None:
    """FloatingPointError ("... diverged ...: ``what``") when a parameter tensor holds NaN or
    inf: the next training call would refuse it, and an SVD would fail on it, with a less clear
    message. ``symkern run`` prints it as a one-line error."""
    bad = [k for k, v in params.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise FloatingPointError(f"training diverged (NaN/inf in {', '.join(bad)}): {what}")


def nan_max(values, default: float = float("nan")) -> float:
    """max of the numbers in ``values``, NaN when any is NaN (Python's max skips a NaN that is
    not first: max([0.0, nan]) is 0.0); ``default`` when there are none."""
    vals = [float(v) for v in _flat(values) if v is not None]
    if not vals:
        return default
    if any(math.isnan(v) for v in vals):
        return float("nan")
    return max(vals)


def config_field(default, help_text: str):
    """A dataclass field of an experiment Config with its --help text (lists get a factory)."""
    if isinstance(default, list):
        return dataclasses.field(
            default_factory=lambda: list(default), metadata={"help": help_text}
        )
    return dataclasses.field(default=default, metadata={"help": help_text})


def add_config_arguments(
    parser: argparse.ArgumentParser, cls, presets: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """One ``--field-name`` flag per dataclass field (default: not given). The help shows the
    value the flag defaults to: the dataclass default, or, where the presets set the field to
    different values, each preset's (the dataclass default alone would misstate it)."""
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        factory = f.default_factory
        default = factory() if factory is not dataclasses.MISSING else f.default
        per_preset = {name: values.get(f.name, default) for name, values in (presets or {}).items()}
        if any(v != default for v in per_preset.values()):
            shown = "; ".join(f"--preset {name}: {v!r}" for name, v in per_preset.items())
        else:
            shown = f"{default!r}"
        # argparse %-formats help strings
        help_full = f"{help_text} (default: {shown})".replace("%", "%%")
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar="VALUE",
            help=help_full if help_text else argparse.SUPPRESS,
        )


def build_config(
    cls,
    presets: Mapping[str, Mapping[str, Any]],
    preset: str,
    file_values: Mapping[str, Any] | None,
    cli_values: Mapping[str, Any],
):
    """The dataclass instance: defaults < preset < config file < CLI (see the module doc)."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    types = _field_types(cls)
    values: dict[str, Any] = {}
    for source, mapping in (
        ("preset", presets[preset]),
        ("config file", file_values or {}),
        ("command line", cli_values),
    ):
        for key, value in mapping.items():
            key = key.replace("-", "_")
            if key not in types:
                raise ValueError(f"{source}: unknown parameter {key!r}; known: {sorted(types)}")
            if value is None:
                continue
            values[key] = _coerce(key, types[key], value)
    return cls(**values)


def config_hash(cfg: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """A short stable hash of (some of) a config, to check a checkpoint belongs to it."""
    sub = {k: cfg[k] for k in (keys if keys is not None else sorted(cfg))}
    blob = json.dumps(sub, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# atomic files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write_bytes(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (tmp file + fsync + os.replace)."""
    data = json.dumps(obj, indent=1, default=_json_default, allow_nan=True).encode()
    _atomic_write_bytes(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    _atomic_write_bytes(Path(path), lambda fh: fh.write(text.encode()))


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` atomically. An array may not be named ``allow_pickle``: numpy
    ≥ 2.1 takes that keyword for its own flag and would not save the array (older numpy saves
    it), so the name is refused on every version."""
    if "allow_pickle" in arrays:
        raise ValueError("atomic_save_npz: an array cannot be named 'allow_pickle'")
    # (Any: numpy's stubs match a ``**dict`` against the ``allow_pickle: bool`` keyword too)
    named: dict[str, Any] = dict(arrays)
    _atomic_write_bytes(Path(path), lambda fh: np.savez_compressed(fh, **named))


# what reading a damaged checkpoint raises: truncated / hand-edited JSON or npz, a directory
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def load_checkpoint(
    path: str | os.PathLike, *, keys: Sequence[str] = (), log=print
) -> dict[str, Any] | None:
    """A finished-work file written by :func:`atomic_write_json` (``.json``: a JSON object that
    must hold every key in ``keys``) or :func:`atomic_save_npz` (``.npz``: its arrays, read
    eagerly), or None to recompute it. A missing file gives None silently; an unreadable one
    (truncated, not JSON / npz, not such an object: atomic writes make it unlikely, a copy or a
    hand edit need not) gives None and ``log("cells/NAME unreadable: recomputing (why)")``."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        if path.suffix == ".npz":
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            with z:
                data = {k: z[k] for k in z.files}
        else:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
            missing = [k for k in keys if k not in data]
            if missing:
                raise ValueError(f"no {', '.join(map(repr, missing))}")
    except _UNREADABLE as e:
        log(f"{path.parent.name}/{path.name} unreadable: recomputing ({type(e).__name__}: {e})")
        return None
    return data


# ----------------------------------------------------------------------------------------------
# provenance, backends, progress, tables


def versions() -> dict[str, Any]:
    """Versions of everything that shapes the numbers, and the machine."""
    from symkern import __version__  # noqa: PLC0415

    out: dict[str, Any] = {
        "symkern": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for mod, key in (("ot", "POT"), ("matplotlib", "matplotlib")):
        try:
            out[key] = __import__(mod).__version__
        except ImportError:
            out[key] = None
    try:
        from symkern.info import info  # noqa: PLC0415

        i = info()
        out["openmp"], out["omp_threads"] = i.get("openmp"), i.get("omp_threads")
        out["forced_backend"] = i.get("forced_backend")
    except Exception as e:  # noqa: BLE001 — provenance must never crash a finished run
        out["info_error"] = repr(e)
    return out


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restored on exit.

    Loops that alternate tiny torch ops with engine calls run faster with one torch thread: the
    C++ engine's OpenMP pool and torch's pool otherwise spin against each other on few cores
    (measured: 25 ms → 3 ms per step on 2 shared cores).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "it"):
    """A tqdm bar (ETA included) on stderr; a no-op object when disabled or tqdm is missing."""
    if enabled:
        try:
            from tqdm.auto import tqdm  # noqa: PLC0415

            return tqdm(
                total=total,
                desc=desc,
                initial=initial,
                file=sys.stderr,
                dynamic_ncols=True,
                unit=unit,
                unit_scale=True,
            )
        except ImportError:
            pass

    class _Null:
        def update(self, n=1):
            pass

        def set_postfix_str(self, s):
            pass

        def close(self):
            pass

    return _Null()


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0.0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.4f}"
    return str(v)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, NaN-free inputs assumed."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


# --- cells: named units of work, each checkpointed atomically (the mirror experiments) ----------


def _cell_digest(name: str, cell: dict[str, Any]) -> str:
    """A hash of a cell's name and content as JSON stores them (so the computed cell and the one
    read back agree): a cell file copied under another name, or edited, fails it."""
    stored = json.loads(json.dumps(cell, default=_json_default, allow_nan=True))
    blob = json.dumps({"name": name, "cell": stored}, sort_keys=True, allow_nan=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_cells(
    out: Path,
    names: list[str],
    compute: Callable[[str], dict[str, Any]],
    cfg_dict: dict[str, Any],
    not_in_hash: set[str],
    *,
    resume: bool,
    desc: str,
    show_progress: bool,
    log=print,
) -> dict[str, dict[str, Any]]:
    """Compute every named cell (or load it from ``out/cells`` when resuming and its config
    hash matches; an unreadable cell file, see :func:`load_checkpoint`, or one whose name or
    content digest is not its own — copied from another cell, edited — is logged and
    recomputed); each finished cell is written atomically before the next starts."""
    h = config_hash({k: v for k, v in cfg_dict.items() if k not in not_in_hash})
    cells: dict[str, dict[str, Any]] = {}
    if resume:
        for n in names:
            data = load_checkpoint(out / "cells" / f"{n}.json", keys=("hash", "cell"), log=log)
            if data is None or data["hash"] != h:
                continue
            if not isinstance(data["cell"], dict):
                log(f"cells/{n}.json unreadable: recomputing (its cell is not an object)")
            elif data.get("name") != n or data.get("digest") != _cell_digest(n, data["cell"]):
                log(f"cells/{n}.json is not this run's cell {n} (copied or edited): recomputing")
            else:
                cells[n] = data["cell"]
        if cells:
            log(f"resume: {len(cells)} finished cell(s) loaded")
    bar = progress(len(names), desc, enabled=show_progress, initial=len(cells), unit="cell")
    try:
        for n in names:
            if n in cells:
                continue
            bar.set_postfix_str(n)
            cells[n] = compute(n)
            record = {"hash": h, "name": n, "digest": _cell_digest(n, cells[n]), "cell": cells[n]}
            atomic_write_json(out / "cells" / f"{n}.json", record)
            bar.update(1)
    finally:
        bar.close()
    return cells


def torch_dtype(cfg) -> torch.dtype:
    """``cfg.dtype`` ("float64" / "float32") as a torch dtype; ValueError naming it otherwise."""
    if cfg.dtype not in ("float64", "float32"):
        raise ValueError(f"--dtype must be float64 or float32, got {cfg.dtype!r}")
    return getattr(torch, cfg.dtype)


def print_claims(results: Mapping[str, Any], out: str | Path) -> None:
    """Print each claim of an experiment's results ("holds" / "FAILS" with its numbers), then
    the wall time and where results.json is."""
    for name, claim in results["claims"].items():
        print(f"{name}: {'holds' if claim['holds'] else 'FAILS'} {claim}")
    print(f"wall time {results['wall_time_s']:.1f} s; results in {Path(out) / 'results.json'}")


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use: matplotlib
    is an experiments dependency)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Lay out ``fig``, write it as PNG to ``path`` atomically (never a half-written file), and
    close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    _atomic_write_bytes(Path(path), lambda fh: fh.write(buf.getvalue()))
