"""Summary images (stage ``summary``): mean, max, std, local correlation, PNR, noise and baseline of a
(motion-corrected) movie in one streaming pass, memory independent of its length (docs/motion.md).
Submodules, each importing only those before it: :mod:`~calflow.summary.params` (config section),
:mod:`~calflow.summary.images` (the streaming accumulator), :mod:`~calflow.summary.store`
(summary.zarr's writer and typed reader), :mod:`~calflow.summary.stage` (:func:`compute_summary`,
what the rule calls) and :mod:`~calflow.summary.plots` (the figure). ``plot_summary`` is imported on
first use, so importing :mod:`calflow.summary` does not load matplotlib.
"""

import importlib
from typing import Any

from calflow.summary.images import SummaryAccumulator
from calflow.summary.params import SummaryParams
from calflow.summary.stage import compute_summary
from calflow.summary.store import SUMMARY_ARRAYS, SummaryImages, read_summary, write_summary

__all__ = [
    "SUMMARY_ARRAYS", "SummaryAccumulator", "SummaryImages", "SummaryParams", "compute_summary",
    "plot_summary", "read_summary", "write_summary",
]


def __getattr__(name: str) -> Any:
    if name in ("plot_summary", "plots"):
        plots = importlib.import_module("calflow.summary.plots")
        value = plots if name == "plots" else plots.plot_summary
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
