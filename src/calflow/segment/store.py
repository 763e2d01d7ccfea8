"""The segment stage's JSON files (torch-free), written and read here:

- ``results/models/segmenter_metrics.json``: where the run's segmenter came from (``source``:
  trained | given | generalist) and, when trained, its training record (:func:`write_segmenter_metrics`,
  :func:`read_segmenter_metrics`);
- ``results/{session}/segment_eval.json``: a session's footprints scored against its masks
  (``iou``, ``centroid``, ``f1``, ``heldout``; :func:`write_segment_eval`, :func:`read_segment_eval`);
- the run's summary of those (:func:`write_evaluation_summary`).

The footprints store itself is :mod:`calflow.segment.footprints`'s (``write_footprints`` /
``read_footprints``). Keys are documented in docs/segment.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from calflow.io import read_json, write_json


def write_segmenter_metrics(path: str | Path, metrics: Mapping[str, Any]) -> None:
    """segmenter_metrics.json, atomically."""
    write_json(path, dict(metrics))


def read_segmenter_metrics(path: str | Path) -> dict[str, Any]:
    """segmenter_metrics.json: ``source`` (trained | given | generalist), ``pretrained``, ``arch``,
    ``meta``; when trained also ``train_sessions``, ``iterations``, ``best_score``, ``init``, ..."""
    return read_json(path, what="segmenter_metrics.json", fix="rerun the train_segmenter stage (delete the file first)",
                     required=("source",))


def write_segment_eval(path: str | Path, evaluation: Mapping[str, Any]) -> None:
    """A session's segment_eval.json, atomically."""
    write_json(path, dict(evaluation))


def read_segment_eval(path: str | Path) -> dict[str, Any]:
    """A session's segment_eval.json: ``session``, ``heldout``, ``iou`` and ``centroid`` (each f1,
    precision, recall, n_true, ...), ``f1`` (= iou.f1), ``n_true``, ``n_pred``."""
    return read_json(path, what="segment_eval.json", fix="rerun the evaluate_segment stage (delete the file first)",
                     required=("session", "heldout", "iou", "centroid", "f1"))


def write_evaluation_summary(path: str | Path, summary: Mapping[str, Any]) -> None:
    """The run's segmentation summary (mean F1 over held-out and training sessions), atomically."""
    write_json(path, dict(summary))
