"""The ``segment`` config section (:class:`SegmentParams`) and its ``corr_pnr`` subsection
(:class:`CorrPnrParams`), without torch: the workflow reads the keys' roles when it parses.

The training keys are declared once, in :class:`TrainKeys`; both :class:`SegmentParams` (the
whole section) and :class:`calflow.segment.train.TrainParams` (what training uses) extend it.
Keys with ``role="infer"`` steer inference (rule ``segment``) and evaluation only: the workflow
leaves them out of the training rule's params (``SEGMENT_INFER_KEYS`` in
``workflow/rules/segment_common.smk``), so changing them re-runs no training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, invalid, param

# input channels of the segmenter: summary images, then keyframe projections (calflow.segment.data)
CHANNELS = ("mean", "max", "std", "local_corr", "pnr", "keyframe_max", "keyframe_mean", "keyframe_std")
DEFAULT_CHANNELS = ("mean", "max", "std", "local_corr", "pnr", "keyframe_max", "keyframe_std")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class CorrPnrParams:
    """``segment.corr_pnr`` config section (see :mod:`calflow.segment.corr_pnr`)."""

    gsig: float = param(2.0, gt=0)
    radius: float = param(6.0, gt=0)
    min_corr: float = param(0.3, ge=0, le=1)
    min_pnr: float = param(6.0, ge=0)
    footprint_corr: float = param(0.4, ge=0, le=1)
    max_cells: int = param(0, ge=0)
    chunk_frames: int = param(100, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "segment.corr_pnr")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | CorrPnrParams | None) -> CorrPnrParams:
        return from_section(cls, "segment.corr_pnr", config)


@dataclass(frozen=True)
class TrainKeys:
    """The ``segment`` section's network and training keys."""

    network: str = param("unet", choices=("unet", "dcn", "detr"))
    base_channels: int = param(16, ge=1)
    depth: int = param(3, ge=1, le=6)
    deconv_kernels: tuple[int, ...] = param((), ge=2)  # dcn only; () = 2 x stride per scale
    queries: int = param(32, ge=1)  # detr only: cell masks predicted per patch_size tile
    trace_weight: float = param(0.0, ge=0)  # detr only: weight of the trace term (1 - r of extracted traces)
    # instance (fg + distance cue) | semantic (fg only: a library task, e.g. the EM benchmark; the
    # workflow's segment rule needs the cue, so the schema allows instance only)
    task: str = param("instance", choices=("instance", "semantic"))
    iterations: int = param(3000, ge=1)  # the most iterations (see patience)
    patience: int = param(400, ge=0)  # stop when the validation score has not improved for this many (0 = never)
    batch_size: int = param(8, ge=1)
    patch_size: int = param(64, ge=16)
    lr: float = param(2e-3, ge=0)  # 0 freezes the weights (library use, e.g. tests); the config needs > 0
    weight_decay: float = param(1e-4, ge=0)
    val_every: int = param(50, ge=1)
    cue_weight: float = param(1.0, ge=0)
    brightness: float = param(0.2, ge=0)  # additive jitter, in units of the normalised image
    contrast: float = param(0.2, ge=0, le=1)  # multiplicative jitter: x * U[1 - c, 1 + c]
    texture: float = param(0.0, ge=0)  # cell-sized textured background: amplitude U[0, texture] (0 = off)
    device: str = param("auto", choices=DEVICES, runtime=True)

    def __post_init__(self) -> None:
        check_fields(self, "segment")
        if self.patch_size % 2**self.depth:
            raise invalid("segment", "patch_size", self.patch_size, f"must be a multiple of 2**depth = {2**self.depth}",
                          f"use a multiple of {2**self.depth}, e.g. 64")
        if self.network == "detr" and self.patch_size % 8:
            raise invalid("segment", "patch_size", self.patch_size, "must be a multiple of 8 for network: detr",
                          "use a multiple of 8, e.g. 64")


@dataclass(frozen=True)
class SegmentParams(TrainKeys):
    """The whole ``segment`` config section (docs/segment.md explains every key)."""

    lr: float = param(2e-3, gt=0)  # TrainKeys.lr, > 0 in the config
    init: str = param("pretrained", choices=("pretrained", "scratch", "generalist"))
    generalist_model: str = ""
    channels: list[str] = param(factory=lambda: list(DEFAULT_CHANNELS), choices=CHANNELS)
    train_sessions: list[str] = param(factory=list)
    heldout_sessions: list[str] = param(factory=list)
    validation_fraction: float = param(0.25, ge=0, le=0.9)
    pretrained: str = ""
    # inference and evaluation
    tta: bool = param(True, role="infer")
    iou_threshold: float = param(0.5, gt=0, le=1, role="infer")
    centroid_max_distance: float = param(5.0, gt=0, role="infer")
    prob_threshold: float | None = param(None, ge=0, le=1, role="infer")  # None: chosen at training
    cue_threshold: float | None = param(None, ge=0, le=1, role="infer")
    min_size: int = param(10, ge=0, role="infer")
    method: str = param("network", choices=("network", "corr_pnr"), role="infer")
    corr_pnr: CorrPnrParams = param(factory=CorrPnrParams, role="infer")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | SegmentParams | None) -> SegmentParams:
        if isinstance(config, SegmentParams):
            return config
        config = dict(config or {})
        if "deconv_kernels" in config:
            config["deconv_kernels"] = tuple(config["deconv_kernels"] or ())
        if "corr_pnr" in config:
            config["corr_pnr"] = CorrPnrParams.from_config(config["corr_pnr"])
        return from_section(cls, "segment", config)
