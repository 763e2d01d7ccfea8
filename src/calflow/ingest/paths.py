"""The movie spec of the sessions sheet's ``movie`` column, without opening anything: the format
extensions, ``#name`` suffixes, ``;``-lists, globs and TIFF folders (:func:`source_paths`, which the
workflow calls at parse time), and :func:`sha256_of` the files behind a spec."""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

from calflow.errors import CalflowInputError

TIFF_EXT = (".tif", ".tiff", ".btf", ".tf8")
HDF5_EXT = (".h5", ".hdf5", ".hdf")
NWB_EXT = (".nwb",)
ZARR_EXT = (".zarr",)
NPY_EXT = (".npy",)


def _split_spec(spec: str) -> tuple[str, str | None]:
    if "#" in spec:
        base, name = spec.split("#", 1)
        return base, (name or None)
    return spec, None


def _expand_tiffs(spec: str, base_dir: Path | None) -> list[Path]:
    parts = [p.strip() for p in spec.split(";") if p.strip()]
    paths: list[Path] = []
    for part in parts:
        p = Path(part)
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        if any(c in part for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(p)))
            if not matches:
                raise CalflowInputError("the pattern matches no file", file=p, fix="check the movie path")
            paths.extend(matches)
        elif p.is_dir() and p.suffix.lower() not in ZARR_EXT:
            matches = sorted(q for q in p.iterdir() if q.suffix.lower() in TIFF_EXT)
            if not matches:
                raise CalflowInputError("the folder holds no .tif/.tiff file", file=p, fix="check the movie path")
            paths.extend(matches)
        else:
            paths.append(p)
    return paths


def source_paths(spec: str | Path, base_dir: Path | None = None) -> list[Path]:
    """The files behind a movie spec: ``#name`` stripped, ``;``-lists, globs and TIFF folders expanded.

    Paths need not exist yet (the workflow may make them); a glob or folder that matches no file
    raises :class:`CalflowInputError`.
    """
    return _expand_tiffs(_split_spec(str(spec))[0], base_dir)


def sha256_of(paths: list[Path], block: int = 1 << 22) -> str:
    """SHA-256 over the bytes of ``paths`` in order (directories: their files in sorted order)."""
    h = hashlib.sha256()
    for path in paths:
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            if path.is_dir():
                h.update(str(f.relative_to(path)).encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(block):
                    h.update(chunk)
    return h.hexdigest()

