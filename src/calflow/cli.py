"""The ``calflow`` command line: simulate data, ingest a movie, validate a config.

The pipeline itself runs through Snakemake (``snakemake --cores 2``); these commands are for
making test data and for checking inputs before a long cluster run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from calflow import __version__
from calflow.errors import CalflowInputError


def _cmd_ingest(args: argparse.Namespace) -> None:
    from calflow.ingest import ingest

    info = ingest(
        args.movie,
        args.out,
        fps=args.fps,
        params={"chunk_frames": args.chunk_frames, "nan_policy": args.nan_policy},
        progress=True,
    )
    print(f"wrote {args.out}: {info['frames']} frames, {info['frames'] / info['seconds']:.0f} frames/s")


def _cmd_validate(args: argparse.Namespace) -> None:
    from calflow.config import load_config, load_sessions
    from calflow.nwb_metadata import check_sheet_metadata

    cfg = load_config(args.config, args.schemas)
    sessions = load_sessions(args.sessions or cfg["sessions"], args.schemas)
    for line in check_sheet_metadata(sessions, cfg["nwb"], sheet_file=args.sessions or cfg["sessions"],
                                     config_file=args.config):
        print(f"calflow warning: {line}", file=sys.stderr)
    print(f"{args.config}: valid; {len(sessions)} session(s): {', '.join(sessions.index)}")


def _cmd_simulate(args: argparse.Namespace) -> None:
    from calflow import simulate

    out = simulate.run_from_args(args)
    print(f"wrote simulated session to {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"calflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a simulated two-photon session with its ground truth")
    from calflow import simulate

    simulate.add_arguments(p)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("ingest", help="convert a raw movie into a raw.zarr store")
    p.add_argument("movie", help="movie path (.tif/.h5#/dataset/.nwb/.zarr/.npy; several TIFFs: ';'-separated)")
    p.add_argument("out", type=Path, help="output store, e.g. results/s1/raw.zarr")
    p.add_argument("--fps", type=float, required=True, help="frame rate (frames/s)")
    p.add_argument("--chunk-frames", type=int, default=100, help="frames per zarr chunk")
    p.add_argument("--nan-policy", choices=["error", "fill_previous"], default="error")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("validate", help="check config/config.yaml and the sessions sheet")
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("--sessions", type=Path, default=None, help="default: the config's sessions entry")
    p.add_argument("--schemas", type=Path, default=None, help="default: workflow/schemas of this checkout")
    p.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CalflowInputError as err:
        print(f"calflow error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
