"""The ``cnmf.zarr`` store (the contract classify/gradcam/decode read; layout in docs/cnmf.md).

numpy, scipy and zarr only, so the NWB export and the CaImAn adapter run without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr

from calflow.io import atomic_output, open_group, require_arrays, write_array


def _centroids(A: sp.csr_matrix, width: int) -> np.ndarray:
    """(K, 2) float64 (y, x) centres of the footprints' supports (as calflow.metrics.centroids)."""
    m = sp.csr_matrix(A > 0, dtype=np.float64)
    yy, xx = np.divmod(np.arange(m.shape[1]), width)
    n = np.maximum(np.asarray(m.sum(axis=1)).ravel(), 1)
    return np.stack([m @ yy / n, m @ xx / n], axis=1) if m.shape[0] else np.zeros((0, 2))


def write_cnmf(out_store: str | Path, *, A: np.ndarray | sp.spmatrix, C: np.ndarray, C_raw: np.ndarray,
               S: np.ndarray, dff: np.ndarray, b: np.ndarray, f: np.ndarray, accepted: np.ndarray, snr: np.ndarray,
               r_spatial: np.ndarray, g: np.ndarray, frame_shape: tuple[int, int], fps: float,
               attrs: Mapping[str, Any] | None = None) -> None:
    """Write the cnmf.zarr contract (DESIGN / docs/cnmf.md) atomically."""
    H, W = frame_shape
    Acsr = sp.csr_matrix(A, dtype=np.float32)
    Acsr.eliminate_zeros()
    K = Acsr.shape[0]
    cents = _centroids(Acsr, W)
    with atomic_output(out_store) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs.update({"fps": float(fps), "frame_shape": [H, W], "n_components": K, "format": "csr",
                            "A_shape": [K, H * W], "pixel_order": "C (row-major: pixel = y * width + x)",
                            **dict(attrs or {})})
        write_array(tmp, "A_data", Acsr.data.astype(np.float32), ("nnz",))
        write_array(tmp, "A_indices", Acsr.indices.astype(np.int64), ("nnz",))
        write_array(tmp, "A_indptr", Acsr.indptr.astype(np.int64), ("component_ptr",))
        ct = ("component", "time")
        for name, arr in (("C", C), ("C_raw", C_raw), ("S", S), ("dff", dff)):
            write_array(tmp, name, np.asarray(arr, np.float32).reshape(K, np.shape(f)[1]), ct)
        write_array(tmp, "b", np.asarray(b, np.float32), ("background", "y", "x"))
        write_array(tmp, "f", np.asarray(f, np.float32), ("background", "time"))
        write_array(tmp, "centroids", cents.astype(np.float64), ("component", "axis"))
        write_array(tmp, "accepted", np.asarray(accepted, bool), ("component",))
        write_array(tmp, "snr", np.asarray(snr, np.float32), ("component",))
        write_array(tmp, "r_spatial", np.asarray(r_spatial, np.float32), ("component",))
        write_array(tmp, "g", np.asarray(g, np.float32).reshape(K, 2), ("component", "lag"))


def read_cnmf(store: str | Path) -> dict[str, Any]:
    """cnmf.zarr -> dict of numpy arrays, ``A`` as CSR (K, H*W), and ``attrs``."""
    g = open_group(store)
    attrs = dict(g.attrs)
    out: dict[str, Any] = {"attrs": attrs}
    out["A"] = sp.csr_matrix((np.asarray(g["A_data"][:]), np.asarray(g["A_indices"][:]),
                              np.asarray(g["A_indptr"][:])), shape=tuple(attrs["A_shape"]))
    for name in ("C", "C_raw", "S", "dff", "b", "f", "centroids", "accepted", "snr", "r_spatial", "g"):
        out[name] = np.asarray(g[name][...])
    return out




def read_cnmf_arrays(store: str | Path, names: tuple[str, ...],
                     optional: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The attrs of a cnmf.zarr and only its arrays ``names`` (plus those of ``optional`` it holds),
    for readers that need a few traces rather than the whole store; a store that does not open or
    lacks one of ``names`` is one CalflowInputError line."""
    g = require_arrays(store, names)
    return dict(g.attrs), {k: np.asarray(g[k][...]) for k in (*names, *(o for o in optional if o in g))}
