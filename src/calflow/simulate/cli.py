"""Ground-truth simulator: two-photon-like calcium-imaging sessions with everything known.

The command line: ``calflow simulate`` (:mod:`calflow.cli` adds :func:`add_arguments` and calls
:func:`run_from_args`) and ``python -m calflow.simulate`` (:func:`main_simulate`, whose ``--help``
shows the first line of this docstring).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calflow.errors import CalflowInputError
from calflow.simulate.files import GENERATOR, write_session
from calflow.simulate.params import _PAIR_FIELDS, SimParams


def _cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``out_dir``, ``--seed``, ``--config``, ``--block-frames``, ``--threads`` and one
    ``--<param>`` option per :class:`SimParams` field (defaults come from SimParams)."""
    parser.add_argument("out_dir", type=Path, nargs="?", default=None,
                        help="session directory to write (created or replaced); or give --out")
    parser.add_argument("--out", type=Path, default=None, help="session directory to write (same as OUT_DIR)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the recording (default 0)")
    parser.add_argument("--anatomy-seed", type=int, default=None,
                        help="seed of cells, targets, W and maps (default: --seed); share it across an "
                        "animal's sessions")
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON or YAML file of SimParams fields; command-line options override it")
    parser.add_argument("--block-frames", type=int, default=None,
                        help="frames rendered per block (memory vs speed; output is identical)")
    parser.add_argument("--threads", type=int, default=None, help="rendering threads (default min(2, CPUs))")
    group = parser.add_argument_group("simulation parameters (see docs/simulate.md)")
    hints = SimParams.field_types()
    for f in dataclasses.fields(SimParams):
        kind = hints[f.name]
        helptext = f"{f.metadata.get('help', '')} (default {f.default!r})"
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": helptext}
        if kind is bool:
            group.add_argument(_cli_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "nonrigid_grid":
            group.add_argument(_cli_flag(f.name), type=int, nargs=2, metavar=("GY", "GX"), **kw)
        elif f.name == "fov_offset":
            group.add_argument(_cli_flag(f.name), type=float, nargs=2, metavar=("DY", "DX"), **kw)
        elif kind is int or kind == (int | None):
            group.add_argument(_cli_flag(f.name), type=int, **kw)
        else:
            group.add_argument(_cli_flag(f.name), type=float, **kw)


def _load_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise CalflowInputError(f"cannot read the config ({err.strerror})", file=path, fix="check the path") from err
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - json/yaml errors
        raise CalflowInputError(f"not valid JSON/YAML ({err})", file=path, fix="fix the syntax") from err
    if isinstance(data, dict) and isinstance(data.get("params"), dict) and data.get("generator") == GENERATOR:
        data = data["params"]  # a params.json written by write_session
    if not isinstance(data, dict):
        raise CalflowInputError("must hold a mapping of parameter names to values", file=path,
                                fix="write e.g. {\"n_frames\": 2000}")
    return data


def params_from_args(args: argparse.Namespace) -> SimParams:
    """SimParams from parsed arguments: defaults < --config file < explicit options."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(_load_config(Path(args.config)))
        SimParams.from_dict(values, source=args.config)  # name the file if the file itself is bad
    for f in dataclasses.fields(SimParams):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = tuple(v) if f.name in _PAIR_FIELDS else v
    return SimParams.from_dict(values)


def run_from_args(args: argparse.Namespace) -> Path:
    """Run :func:`write_session` from parsed arguments; returns the session directory."""
    out_dir = getattr(args, "out", None) or args.out_dir
    if out_dir is None:
        raise CalflowInputError("no output directory given", fix="pass --out DIR (or DIR as the first argument)")
    args.out_dir = Path(out_dir)
    params = params_from_args(args)
    write_session(args.out_dir, params, args.seed, anatomy_seed=getattr(args, "anatomy_seed", None),
                  block_frames=args.block_frames, threads=args.threads)
    return Path(args.out_dir)


def main_simulate(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m calflow.simulate OUT_DIR [options]``; returns 0 or 2."""
    parser = argparse.ArgumentParser(prog="calflow simulate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = run_from_args(args)
    except CalflowInputError as err:
        print(f"calflow simulate: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0
