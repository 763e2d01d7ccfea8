"""The ``gradcam`` config section (:class:`GradcamParams`) and the names of its choices. No torch, so
the config tests and the workflow read it without loading the network code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, invalid, param

SCORES = ("vs_none", "logit")
METHODS = ("gradcam", "hirescam")
METHOD_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM"}


@dataclass(frozen=True)
class GradcamParams:
    """The ``gradcam`` config section (docs/classify.md)."""

    layer: str = "0"  # "last" or the index of a conv block of the classifier (0 = first)
    # gradcam: channel weights = spatial mean of the gradient | hirescam: gradient x activation
    method: str = param("gradcam", choices=METHODS)
    # vs_none: sum over the pattern's targets of logit - none logit | logit: sum of logits
    score: str = param("vs_none", choices=SCORES)
    # which layer-resolution maps ZNCC compares: signed | relu (Grad-CAM as displayed)
    zncc_map: str = param("signed", choices=("signed", "relu"))
    batch_size: int = param(64, ge=1)
    # where the backward passes run: auto = the GPU when torch sees one (same code path on the CPU)
    device: str = param("auto", choices=("auto", "cpu", "cuda"), runtime=True)

    def __post_init__(self) -> None:
        check_fields(self, "gradcam")
        if self.layer != "last" and not str(self.layer).isdigit():
            raise invalid("gradcam", "layer", self.layer, "must be last or the index of a conv block",
                          "use 'last' or the index of a conv block, e.g. '1'")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | GradcamParams | None) -> GradcamParams:
        cfg = dict(config) if isinstance(config, Mapping) else config
        if isinstance(cfg, dict) and "layer" in cfg:
            cfg["layer"] = str(cfg["layer"])
        return from_section(cls, "gradcam", cfg)
