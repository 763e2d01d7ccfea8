"""virtual_stain's result file ``results/virtual_stain/{dataset}/metrics.json`` (held-out block
metrics, the chosen configuration and the search; keys in docs/virtual_stain.md), written by
:func:`write_virtual_stain_metrics` and read by :func:`read_virtual_stain_metrics`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from calflow.io import read_json, write_json

METRICS_KEYS = ("test", "n_train_images", "n_test_images")


def write_virtual_stain_metrics(path: str | Path, result: Mapping[str, Any]) -> None:
    """The result dict of :func:`calflow.virtual_stain.stage.run_dataset` as metrics.json, atomically."""
    write_json(path, dict(result))


def read_virtual_stain_metrics(path: str | Path) -> dict[str, Any]:
    """A virtual_stain metrics.json: ``test`` (f1, accuracy, precision, recall, roc_auc, n_blocks),
    ``pearson_r``, ``n_train_images``, ``n_test_images``, ``dataset``, ``config``, ..."""
    return read_json(path, what="virtual_stain's metrics.json", fix="rerun the virtual_stain stage",
                     required=METRICS_KEYS)
