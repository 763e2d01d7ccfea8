"""The stage's stores: the cnmf.zarr traces, frame rate and decay time it reads
(:func:`load_traces`, :func:`decay_time_s`), and decode.json, written by :func:`write_decode` and
read by :func:`read_decode` (the parsed result, keys in docs/decode.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calflow.decode.params import TRACES
from calflow.errors import CalflowInputError
from calflow.io import read_json, write_json


def _all_finite(x: np.ndarray, rows: int = 512) -> bool:
    return all(np.isfinite(x[i: i + rows]).all() for i in range(0, x.shape[0], rows))


def load_traces(store: str | Path, kind: str = "dff", accepted_only: bool = True) -> tuple[np.ndarray, float, np.ndarray]:
    """(traces (K', T) in the stored dtype, fps, component indices) from a cnmf.zarr (the contract).

    K' is 0 when the session has no (accepted) components; :func:`decode_session` records that.
    """
    from calflow.io import open_group

    store = Path(store)
    try:
        g = open_group(store, mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises several kinds for a missing/bad store
        raise CalflowInputError(f"cannot open the CNMF store ({err})", file=store, fix="rerun the cnmf stage") from err
    if kind not in g:
        raise CalflowInputError(f"no array {kind!r} in the CNMF store", file=store,
                                fix=f"set decode.traces to one of {', '.join(k for k in TRACES if k in g) or 'dff, C'}")
    x = np.asarray(g[kind][...])
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    fps = float(g.attrs.get("fps", 0) or 0)
    if fps <= 0:
        raise CalflowInputError("attribute fps missing or not positive", file=store, fix="rerun the cnmf stage")
    idx = np.arange(x.shape[0])
    if accepted_only and "accepted" in g:
        acc = np.asarray(g["accepted"][...], bool)
        if acc.shape != (x.shape[0],):
            raise CalflowInputError(f"accepted has shape {acc.shape}, {kind} {x.shape}", file=store,
                                    fix="rerun the cnmf stage")
        if not acc.all():
            idx = idx[acc]
            x = x[idx]
    if not _all_finite(x):
        raise CalflowInputError(f"{kind} holds NaN or infinite values", file=store, fix="rerun the cnmf stage")
    return x, fps, idx


def decay_time_s(store: str | Path, idx: np.ndarray, fps: float) -> float | None:
    """Median calcium decay time (s) of components ``idx`` from cnmf.zarr's AR coefficients ``g``
    (the larger root of z² = g1 z + g2); None without ``g`` or without a stable decay."""
    from calflow.io import open_group

    g = open_group(Path(store), mode="r")
    if "g" not in g or not len(idx):
        return None
    coef = np.asarray(g["g"][...], np.float64)
    coef = (coef[:, None] if coef.ndim == 1 else coef)[idx]
    g1, g2 = coef[:, 0], (coef[:, 1] if coef.shape[1] > 1 else np.zeros(len(idx)))
    root = (g1 + np.sqrt(np.maximum(g1 * g1 + 4 * g2, 0))) / 2
    ok = (root > 0) & (root < 1)
    return float(np.median(-1.0 / (fps * np.log(root[ok])))) if ok.any() else None


def write_decode(out_json: str | Path, result: dict[str, Any]) -> None:
    """Write the result dict of :func:`calflow.decode.decode` to ``out_json`` (indented JSON, atomically)."""
    write_json(out_json, result)


def read_decode(path: str | Path) -> dict[str, Any]:
    """The result dict of a decode.json (keys in docs/decode.md): ``status``, ``classes``,
    ``classifiers.{name}`` (accuracy, ci95, confusion, p_value, ...), ``params``, ..."""
    return read_json(path, what="decode.json", fix="rerun the decode stage", required=("status",))
