"""Segmenter inputs and targets: channel stacks, normalisation, targets from masks, augmentation.

* Inputs for a calcium session are a (C, H, W) float32 stack of summary images
  (``summary.zarr``: mean, max, std, local_corr, pnr) and keyframe projections
  (``keyframes.zarr``: keyframe_max, keyframe_mean, keyframe_std), each normalised robustly
  (:func:`normalise`: median -> 0, 99.5th percentile -> 1) so sessions of different brightness
  look alike to the network.
* Targets (:func:`targets_from_labels`): ``fg`` (cell = 1) and the instance cue ``cue``: inside
  every cell the Euclidean distance to its boundary divided by that cell's largest distance
  (1 at the centre, -> 0 at the edge, 0 outside), computed per instance so that touching cells
  get separate peaks.
* Augmentation (:func:`dihedral`): the 8 symmetries of the square (4 rotations x optional
  transpose-flip), applied with the same ``k`` to inputs and targets; brightness/contrast
  jitter is applied to the inputs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from calflow.errors import CalflowInputError
from calflow.segment.params import DEFAULT_CHANNELS as DEFAULT_CHANNELS  # the segment.channels default

SUMMARY_CHANNELS = ("mean", "max", "std", "local_corr", "pnr")
KEYFRAME_CHANNELS = {"keyframe_max": "projection_max", "keyframe_mean": "projection_mean",
                     "keyframe_std": "projection_std"}


def normalise(img: np.ndarray) -> np.ndarray:
    """Robust per-image scaling: median -> 0, 99.5th percentile -> 1 (float32)."""
    img = np.nan_to_num(np.asarray(img, dtype=np.float32))
    lo, hi = np.percentile(img, [50.0, 99.5])
    return ((img - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def load_inputs(summary_store: str | Path, keyframes_store: str | Path | None,
                channels: tuple[str, ...] | list[str] = DEFAULT_CHANNELS) -> np.ndarray:
    """(C, H, W) normalised input stack of one session."""
    from calflow.keyframes.store import read_keyframes
    from calflow.summary.store import read_summary_images

    out = []
    summ = read_summary_images(summary_store, tuple(ch for ch in channels if ch in SUMMARY_CHANNELS))[0]
    kf = (read_keyframes(keyframes_store) if keyframes_store is not None
          and any(ch in KEYFRAME_CHANNELS for ch in channels) else None)
    for ch in channels:
        if ch in SUMMARY_CHANNELS:
            out.append(np.asarray(summ[ch]))
        elif ch in KEYFRAME_CHANNELS:
            if kf is None:
                raise CalflowInputError(f"input channel '{ch}' needs keyframes.zarr", fix="add the keyframes store")
            out.append(np.asarray(getattr(kf, KEYFRAME_CHANNELS[ch])))
        else:
            raise CalflowInputError(f"unknown segmenter input channel '{ch}'",
                                    fix=f"use {', '.join(SUMMARY_CHANNELS + tuple(KEYFRAME_CHANNELS))}")
    return np.stack([normalise(x) for x in out])


def targets_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fg, cue) float32 targets from a (H, W) label image (0 = background)."""
    labels = np.asarray(labels)
    fg = (labels > 0).astype(np.float32)
    cue = np.zeros(labels.shape, dtype=np.float32)
    for k, sl in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        m = labels[sl] == k
        d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        if d.max() > 0:
            cue[sl][m] = (d[m] / d.max()).astype(np.float32)
    return fg, cue


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0..7) of the 8 dihedral transforms, on the last two axes: rot90 by k % 4, then a flip if k >= 4."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index {k} not in 0..7")
    y = np.rot90(x, k % 4, axes=(-2, -1))
    if k >= 4:
        y = np.flip(y, axis=-1)
    return np.ascontiguousarray(y)


def dihedral_inverse(x: np.ndarray, k: int) -> np.ndarray:
    """Undo :func:`dihedral` (flip first, then rotate back)."""
    y = np.flip(x, axis=-1) if k >= 4 else x
    return np.ascontiguousarray(np.rot90(y, -(k % 4), axes=(-2, -1)))


@dataclass
class Sample:
    """One training/validation image: inputs (C, H, W), targets (H, W) and, for instances, labels."""

    image: np.ndarray
    fg: np.ndarray
    cue: np.ndarray | None = None
    labels: np.ndarray | None = None
    name: str = ""
    frames: np.ndarray | None = None  # (T, H, W) frame stack for the detr trace term (keyframes or movie)
    traces: np.ndarray | None = None  # (max label, T) target traces, row id - 1 = label id (None: mask averages)

    @classmethod
    def from_labels(cls, image: np.ndarray, labels: np.ndarray, name: str = "", instance: bool = True) -> Sample:
        fg, cue = targets_from_labels(labels)
        return cls(image=np.asarray(image, np.float32), fg=fg, cue=cue if instance else None,
                   labels=np.asarray(labels) if instance else None, name=name)

    def crop(self, ys: slice, xs: slice) -> Sample:
        """A sub-region (for train/validation splits of one field of view); labels are relabelled."""
        labels, traces = None, None
        if self.labels is not None:
            from skimage.segmentation import relabel_sequential

            labels, _, inverse = relabel_sequential(self.labels[ys, xs])
            if self.traces is not None:  # row i - 1 of the crop's traces = the cell now labelled i
                traces = self.traces[np.asarray(inverse(np.arange(1, int(labels.max()) + 1)), np.int64) - 1]
        return Sample(self.image[:, ys, xs], self.fg[ys, xs], None if self.cue is None else self.cue[ys, xs],
                      labels, self.name, None if self.frames is None else self.frames[:, ys, xs], traces)
