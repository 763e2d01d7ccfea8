"""Read the ``footprints.zarr`` store (layout in docs/segment.md), which rule segment writes
(:func:`calflow.segment.infer.write_footprints`) and segment's evaluation, cnmf and classify read.

numpy, scipy and zarr only, so cnmf (and its CaImAn adapter) reads the footprints without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from calflow.io import open_group


def read_footprints(store: str | Path) -> tuple[sp.csr_matrix, dict]:
    """footprints.zarr -> (CSR (K, H*W) float32, attrs)."""
    g = open_group(store)
    attrs = dict(g.attrs)
    mat = sp.csr_matrix((np.asarray(g["data"][:]), np.asarray(g["indices"][:]), np.asarray(g["indptr"][:])),
                        shape=tuple(attrs["shape"]))
    return mat, attrs


def read_labels(store: str | Path) -> tuple[np.ndarray | None, dict]:
    """footprints.zarr -> (its label image (H, W) int, or None if the store has none; attrs)."""
    g = open_group(store)
    return (np.asarray(g["labels"]) if "labels" in g else None), dict(g.attrs)
