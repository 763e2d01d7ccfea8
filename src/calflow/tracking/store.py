"""``results/tracking/{animal}/tracking.zarr`` (written and read here; contract in docs/tracking.md) and
the seed stores of the re-extraction (the ``footprints.zarr`` layout of docs/segment.md).

numpy, scipy and zarr only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from calflow.errors import CalflowInputError
from calflow.io import atomic_output, require_arrays, write_array, write_group

_TRACKING_ATTRS = ("animal", "sessions", "reference", "frame_shape", "A_shape", "threshold")
_RERUN_TRACK = "rerun the track stage (delete the store first)"

TRACKING_DIMS = {
    "A_data": ("nnz",),
    "A_indices": ("nnz",),
    "A_indptr": ("cell_ptr",),
    "centroids": ("cell", "axis"),
    "members": ("cell", "session"),
    "scores": ("cell", "session"),
    "to_session": ("session", "axis", "y", "x"),
    "to_reference": ("session", "axis", "y", "x"),
    "rigid_shift": ("session", "axis"),
    "affine": ("session", "row", "col"),
    "candidate_scores": ("pair",),
    "reference_image": ("y", "x"),
}


def write_tracking(out_store: str | Path, *, union: sp.csr_matrix, centroids: np.ndarray, members: np.ndarray,
                   scores: np.ndarray, to_session: np.ndarray, to_reference: np.ndarray, rigid_shift: np.ndarray,
                   affine: np.ndarray, candidate_scores: np.ndarray, reference_image: np.ndarray,
                   attrs: Mapping[str, Any]) -> None:
    """Write tracking.zarr atomically (arrays as in :data:`TRACKING_DIMS`, ``attrs`` as given)."""
    A = sp.csr_matrix(union, dtype=np.float32)
    arrays = {
        "A_data": A.data.astype(np.float32), "A_indices": A.indices.astype(np.int64),
        "A_indptr": A.indptr.astype(np.int64), "centroids": np.asarray(centroids, np.float64),
        "members": np.asarray(members, np.int64), "scores": np.asarray(scores, np.float64),
        "to_session": np.asarray(to_session, np.float32), "to_reference": np.asarray(to_reference, np.float32),
        "rigid_shift": np.asarray(rigid_shift, np.float64), "affine": np.asarray(affine, np.float64),
        "candidate_scores": np.asarray(candidate_scores, np.float64),
        "reference_image": np.asarray(reference_image, np.float32),
    }
    write_group(out_store, {**dict(attrs), "A_shape": [int(A.shape[0]), int(A.shape[1])], "format": "csr"},
                arrays, TRACKING_DIMS)


@dataclass(frozen=True)
class Tracking:
    """tracking.zarr (docs/tracking.md): U union cells, S sessions (``sessions``, the sheet's order),
    (Y, X) the reference's frames. ``union`` CSR (U, Y*X) float32 footprints in the reference frame,
    ``centroids`` (U, 2) px, ``members`` (U, S) component index in each session's cnmf.zarr (-1 = not
    found there), ``scores`` (U, S) match scores (NaN: started the cell or not found),
    ``to_session`` / ``to_reference`` (S, 2, Y, X) coordinate maps (calflow.tracking.register),
    ``rigid_shift`` (S, 2), ``affine`` (S, 3, 3), ``candidate_scores`` (n,) the threshold's sample,
    ``reference_image`` (Y, X), ``threshold`` and the rest of the attrs in ``attrs``."""

    animal: str
    sessions: tuple[str, ...]
    reference: str
    frame_shape: tuple[int, int]
    union: sp.csr_matrix
    centroids: np.ndarray
    members: np.ndarray
    scores: np.ndarray
    to_session: np.ndarray
    to_reference: np.ndarray
    rigid_shift: np.ndarray
    affine: np.ndarray
    candidate_scores: np.ndarray
    reference_image: np.ndarray
    threshold: float
    attrs: dict

    @property
    def n_cells(self) -> int:
        return int(self.members.shape[0])

    def union_dense(self) -> np.ndarray:
        """Union footprints (U, Y, X) float32 (allocates U*Y*X*4 bytes)."""
        return self.union.toarray().reshape(-1, *self.frame_shape)


def read_tracking(store: str | Path) -> Tracking:
    """Read tracking.zarr; a store that does not open or lacks an array is one CalflowInputError line."""
    g = require_arrays(store, tuple(TRACKING_DIMS))
    attrs = dict(g.attrs)
    missing = [k for k in _TRACKING_ATTRS if k not in attrs]
    if missing:
        raise CalflowInputError(f"tracking store lacks attributes {missing}", file=store, fix=_RERUN_TRACK)
    try:
        a = {name: np.asarray(g[name][...]) for name in TRACKING_DIMS}
        union = sp.csr_matrix((a["A_data"], a["A_indices"], a["A_indptr"]), shape=tuple(attrs["A_shape"]))
    except Exception as err:  # noqa: BLE001 - zarr and scipy raise many types for damaged arrays
        raise CalflowInputError(f"damaged tracking store ({type(err).__name__}: {str(err)[:120]})", file=store,
                                fix=_RERUN_TRACK) from err
    return Tracking(animal=str(attrs["animal"]), sessions=tuple(attrs["sessions"]), reference=str(attrs["reference"]),
                    frame_shape=tuple(attrs["frame_shape"]), union=union, centroids=a["centroids"],
                    members=a["members"], scores=a["scores"], to_session=a["to_session"],
                    to_reference=a["to_reference"], rigid_shift=a["rigid_shift"], affine=a["affine"],
                    candidate_scores=a["candidate_scores"], reference_image=a["reference_image"],
                    threshold=float(attrs["threshold"]), attrs=attrs)


def write_seeds(out_store: str | Path, footprints: sp.csr_matrix, frame_shape: tuple[int, int],
                attrs: Mapping[str, Any] | None = None) -> None:
    """A footprints.zarr (docs/segment.md layout, no label image) of seeds CSR (K, H*W): what
    :func:`calflow.cnmf.stage.run_cnmf` reads."""
    A = sp.csr_matrix(footprints, dtype=np.float32)
    H, W = frame_shape
    with atomic_output(out_store) as tmp:
        import zarr

        zarr.open_group(tmp, mode="w", zarr_format=3).attrs.update({
            "format": "csr", "shape": [int(A.shape[0]), H * W], "frame_shape": [H, W],
            "n_components": int(A.shape[0]), "pixel_order": "C (row-major: pixel = y * width + x)",
            **dict(attrs or {})})
        write_array(tmp, "data", A.data.astype(np.float32), ("nnz",))
        write_array(tmp, "indices", A.indices.astype(np.int64), ("nnz",))
        write_array(tmp, "indptr", A.indptr.astype(np.int64), ("component_ptr",))
