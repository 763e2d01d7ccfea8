"""Save and load model and checkpoint files weights-only; a damaged, tampered or foreign file is
one clear line. Files saved with :func:`save_weights` carry a SHA-256 of their content
(``calflow_sha256``), so a flipped weight is caught too (torch's zip reader does not notice it)."""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from calflow.errors import CalflowInputError

DIGEST = "calflow_sha256"


def _digest(obj: Any) -> str:
    """SHA-256 over every tensor's dtype, shape and bytes and every plain value, in key order."""
    import torch

    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(f"K{k!r}".encode())
                walk(x[k])
        elif isinstance(x, list | tuple):
            h.update(f"L{len(x)}".encode())
            for v in x:
                walk(v)
        else:
            h.update(f"V{x!r}".encode())

    walk(obj)
    return h.hexdigest()


def save_weights(blob: dict, path: str | Path) -> None:
    """``torch.save(blob)`` to ``path`` (open it through calflow.io.atomic_output) with its digest."""
    import torch

    torch.save({**blob, DIGEST: _digest(blob)}, path)


def load_weights(path: str | Path, map_location: Any = "cpu", *, keys: Iterable[str] = (),
                 fix: str = "delete the file and rerun the stage that writes it") -> dict:
    """``torch.load(path, weights_only=True)``; a truncated, tampered or foreign file (not a dict
    holding ``keys``) is a :class:`CalflowInputError` naming the file, never unpickled code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CalflowInputError("model file does not exist", file=path, fix=fix)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; a truncated one has no central directory
        raise CalflowInputError("not a readable checkpoint, truncated or damaged (not a complete torch zip file)",
                                file=path, fix=fix)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused a non-tensor object: tampered or foreign
        what = re.search(r"GLOBAL (\S+)", str(err))
        raise CalflowInputError("refused to load: it holds objects other than weights"
                                + (f" ({what[1]})" if what else ""), file=path, fix=fix) from err
    except Exception as err:  # noqa: BLE001 - zip/pickle/EOF/runtime errors of a truncated or damaged file
        why = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise CalflowInputError(f"not a readable checkpoint, truncated or damaged ({type(err).__name__}: {why})",
                                file=path, fix=fix) from err
    if isinstance(blob, dict) and DIGEST in blob:
        stored = blob.pop(DIGEST)
        if stored != _digest(blob):
            raise CalflowInputError("checksum mismatch: the file was altered after calflow wrote it", file=path, fix=fix)
    missing = [k for k in keys if not isinstance(blob, dict) or k not in blob]
    if missing:
        raise CalflowInputError(f"not a calflow checkpoint of this kind (no {', '.join(map(repr, missing))})",
                                file=path, fix=fix)
    return blob
