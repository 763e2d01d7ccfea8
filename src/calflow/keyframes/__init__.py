"""Keyframe selection (stage ``keyframes``): K representative frames of the motion-corrected movie,
streamed in blocks of ``batch_size`` frames. ``activity`` ranks frames by their high-passed residual
over its noise and keeps the best ones ``min_gap`` apart; ``kmeans`` keeps the medoids of a k-means
clustering of incremental-PCA features (docs/segment.md). Submodules, each importing only those
before it: :mod:`~calflow.keyframes.params` (config section), :mod:`~calflow.keyframes.activity`,
:mod:`~calflow.keyframes.kmeans`, :mod:`~calflow.keyframes.store` (keyframes.zarr's writer and typed
reader) and :mod:`~calflow.keyframes.stage` (:func:`compute_keyframes`, what the rule calls).
"""

from calflow.keyframes.activity import activity_scores, pick_top
from calflow.keyframes.kmeans import _down, kmeans_keyframes
from calflow.keyframes.params import KeyframeParams
from calflow.keyframes.stage import compute_keyframes, select_keyframes
from calflow.keyframes.store import KEYFRAME_ARRAYS, PROJECTIONS, Keyframes, read_keyframes, write_keyframes

__all__ = [
    "KEYFRAME_ARRAYS", "PROJECTIONS", "KeyframeParams", "Keyframes", "_down", "activity_scores",
    "compute_keyframes", "kmeans_keyframes", "pick_top", "read_keyframes", "select_keyframes",
    "write_keyframes",
]
