"""Inference: network outputs -> probability and cue maps -> instances (watershed) -> footprints.

:func:`predict` runs a model on one (C, H, W) image (reflect-padded to a multiple of
``2**depth``; optionally averaged over the 8 dihedral transforms, ``tta``).
:func:`instances_from_maps` turns the cell probability and the distance cue into a label image:
markers are the connected components of ``cue > cue_threshold`` inside ``prob > prob_threshold``,
flooded by :func:`skimage.segmentation.watershed` on ``-cue`` within the foreground; instances
smaller than ``min_size`` px are dropped.
:func:`segment_session` writes ``footprints.zarr`` (see docs/segment.md; read it with
:func:`calflow.segment.footprints.read_footprints`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import zarr
from scipy import ndimage

from calflow.checkpoint import load_weights
from calflow.device import resolve_device
from calflow.io import atomic_output, write_array
from calflow.segment.data import dihedral, dihedral_inverse, load_inputs
from calflow.segment.model import build_model


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, *, depth: int, device: torch.device | str = "cpu",
            tta: bool = False) -> np.ndarray:
    """(C_out, H, W) sigmoid outputs of ``model`` on a (C, H, W) image."""
    model.eval()
    c, h, w = image.shape
    m = 2**depth
    ph, pw = (-h) % m, (-w) % m
    x = np.pad(image, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")
    ks = range(8) if tta else [0]
    acc = None
    for k in ks:
        xt = torch.from_numpy(dihedral(x, k)[None]).to(device)
        y = torch.sigmoid(model(xt))[0].cpu().numpy()
        y = dihedral_inverse(y, k)
        acc = y if acc is None else acc + y
    out = acc / len(ks)
    return out[:, ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]


def instances_from_maps(prob: np.ndarray, cue: np.ndarray | None, *, prob_threshold: float = 0.5,
                        cue_threshold: float = 0.5, min_size: int = 10) -> np.ndarray:
    """(H, W) int32 label image from the probability map and the distance cue (watershed)."""
    from skimage.segmentation import watershed

    fg = prob > prob_threshold
    if cue is None:
        labels, _ = ndimage.label(fg)
    else:
        markers, _ = ndimage.label((cue > cue_threshold) & fg)
        labels = watershed(-cue, markers, mask=fg)
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    labels[small[labels]] = 0
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32)


def instances_from_boundaries(prob: np.ndarray, *, marker_threshold: float = 0.8, min_marker: int = 20,
                              smooth: float = 1.0) -> np.ndarray:
    """(H, W) int32 labels that tile the whole image, for membrane-separated cells (EM): markers are the
    connected regions where the (gaussian-smoothed) interior probability exceeds ``marker_threshold``
    (regions under ``min_marker`` px dropped), flooded by watershed on the boundary probability
    ``1 - prob``, so every pixel, membranes included, joins the cell whose interior it is closest to
    across the weakest boundary."""
    from skimage.segmentation import watershed

    p = ndimage.gaussian_filter(np.asarray(prob, np.float32), smooth) if smooth > 0 else np.asarray(prob, np.float32)
    markers, _ = ndimage.label(p > marker_threshold)
    sizes = np.bincount(markers.ravel())
    small = sizes < min_marker
    small[0] = False
    markers[small[markers]] = 0
    return watershed(1.0 - p, markers).astype(np.int32)


def footprints_from_labels(labels: np.ndarray, weights: np.ndarray) -> sp.csr_matrix:
    """CSR (K, H*W) float32: ``weights`` (e.g. the probability) on each instance's pixels."""
    flat = labels.ravel()
    pix = np.flatnonzero(flat)
    order = np.argsort(flat[pix], kind="stable")
    pix = pix[order]
    k = int(flat.max()) if flat.size else 0
    return sp.csr_matrix((weights.ravel()[pix].astype(np.float32), (flat[pix] - 1, pix)), shape=(k, flat.size))


def read_segmenter(path: str | Path, map_location: Any = "cpu", *,
                   fix: str = "use a calflow segmenter file (results/models/segmenter.pt), or delete it and rerun") -> dict:
    """A segmenter file's ``{"state_dict", "arch", "meta"}`` through :func:`calflow.checkpoint.load_weights`
    (weights only; its SHA-256 is checked when it has one: files written before the segmenter saved with
    :func:`calflow.checkpoint.save_weights`, like the bundled generalist, have none and still load)."""
    return load_weights(path, map_location, keys=("state_dict", "arch"), fix=fix)


def load_segmenter(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a calflow segmenter file (:func:`read_segmenter`) into its network, in eval mode."""
    blob = read_segmenter(path, device)
    model = build_model(blob["arch"])
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, {"arch": blob["arch"], "meta": blob.get("meta", {})}


def segment_image(model: torch.nn.Module, arch: Mapping[str, Any], image: np.ndarray,
                  post: Mapping[str, Any], device: torch.device | str = "cpu", tta: bool = False) -> dict:
    """Probability, cue and instance labels of one (C, H, W) image (``detr``: no cue, no TTA)."""
    if arch.get("kind") == "detr":
        from calflow.segment.detr import segment_image_detr

        return segment_image_detr(model, arch, image, post, device)
    out = predict(model, image, depth=int(arch.get("depth", 3)), device=device, tta=tta)
    prob = out[0]
    cue = out[1] if out.shape[0] > 1 else None
    labels = instances_from_maps(prob, cue, **post)
    return {"probability": prob, "cue": cue, "labels": labels}


def segment_session(summary_store: str | Path, keyframes_store: str | Path, model_path: str | Path,
                    out_store: str | Path, *, device: str = "auto", tta: bool = True,
                    post: Mapping[str, Any] | None = None) -> dict:
    """Segment one session and write ``footprints.zarr``; return a summary dict."""
    dev = resolve_device(device)
    model, info = load_segmenter(model_path, dev)
    arch, meta = info["arch"], info["meta"]
    image = load_inputs(summary_store, keyframes_store, meta.get("channels"))
    # thresholds given as None keep the values tuned on the validation region at training
    post = {**meta.get("post", {}), **{k: v for k, v in (post or {}).items() if v is not None}}
    res = segment_image(model, arch, image, post, dev, tta)
    n = write_footprints(out_store, res["labels"], res["probability"], probability=res["probability"], cue=res["cue"],
                         attrs={"method": "network", "model": str(model_path), "arch": dict(arch), "post": post,
                                "tta": bool(tta)})
    return {"n_components": n, "device": str(dev)}


def write_footprints(out_store: str | Path, labels: np.ndarray, weights: np.ndarray, *,
                     probability: np.ndarray | None = None, cue: np.ndarray | None = None,
                     attrs: Mapping[str, Any] | None = None) -> int:
    """Write footprints.zarr (docs/segment.md) from a label image and per-pixel weights; return K."""
    h, w = labels.shape
    fp = footprints_from_labels(labels, weights)
    from calflow.metrics import centroids

    cents = centroids(fp > 0, (h, w)) if fp.shape[0] else np.zeros((0, 2))
    with atomic_output(out_store) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs.update({"format": "csr", "shape": [int(fp.shape[0]), h * w], "frame_shape": [h, w],
                            "n_components": int(fp.shape[0]), "pixel_order": "C (row-major: pixel = y * width + x)",
                            **dict(attrs or {})})
        write_array(tmp, "data", fp.data.astype(np.float32), ("nnz",))
        write_array(tmp, "indices", fp.indices.astype(np.int64), ("nnz",))
        write_array(tmp, "indptr", fp.indptr.astype(np.int64), ("component_ptr",))
        write_array(tmp, "labels", labels.astype(np.int32), ("y", "x"))
        write_array(tmp, "centroids", cents.astype(np.float64), ("component", "axis"))
        if probability is not None:
            write_array(tmp, "probability", np.asarray(probability, np.float32), ("y", "x"))
        if cue is not None:
            write_array(tmp, "cue", np.asarray(cue, np.float32), ("y", "x"))
    return int(fp.shape[0])
