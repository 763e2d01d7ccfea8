"""The ``motion`` config section: :class:`MotionParams`, one ``param(...)`` field per key (pixels
unless noted), checked once by :func:`calflow.params.check_fields`; ``device`` resolves to a torch
device (:meth:`MotionParams.torch_device`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from calflow.device import resolve_device
from calflow.params import check_fields, from_section, invalid, param, workflow_keys

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MotionParams:
    """Tunables of the ``motion`` config section (pixels unless noted).

    max_shift: largest rigid shift searched, px. piecewise: also estimate patch shifts.
    patch_size / overlap: square patch side and overlap between neighbouring patches, px.
    max_deviation: largest patch shift away from the (rounded) rigid shift, px.
    smooth_sigma: Gaussian smoothing of the rigid cross-correlation, px. highpass_sigma: also
    remove structure larger than this from the rigid correlation, px (0 = off).
    patch_snr_threshold: patches whose correlation peak is less than this many times the next
    best peak use the map averaged with their neighbours (0 = off). patch_outlier_px: patch
    shifts further than this from the median of their 3x3 neighbourhood are replaced by it, px
    (0 = off).
    template_frames: frames sampled (evenly over the movie) to build the template.
    iterations: rigid template-refinement rounds. batch_size: frames per batch, capped
    automatically so a batch's working set stays near 512 MiB (see :func:`effective_batch`). device: auto | cpu | cuda. interpolation: bicubic | bilinear (final warp).
    field_interpolation: cubic | linear (patch grid -> dense field). output_dtype: input | float32.
    num_threads: torch CPU threads (0 = auto: usable cores - 1, the last core runs the overlapped
    zarr reading/compression). seed: fixes any randomness (ties, GPU).
    split_frames: 0 = one motion job per session; N > 0 = scatter-gather, a template job, chunk jobs of
    N frames each (rounded up to whole raw.zarr chunks) and a gather (:mod:`calflow.motion.split`). The
    workflow reads it: it is not in the rule's params, nor in :meth:`to_dict` (``motion_params``), so
    the result does not depend on it.
    """

    max_shift: int = param(15, ge=1)
    piecewise: bool = True
    patch_size: int = param(64, ge=8)
    overlap: int = param(32, ge=0)
    max_deviation: int = param(5, ge=0)
    smooth_sigma: float = param(1.15, ge=0.3, le=5, fix="use about 1.15 (px)")
    highpass_sigma: float = param(0.0, ge=0, fix="use 0 (off) or about 10 (px)")
    template_frames: int = param(200, ge=1)
    iterations: int = param(3, ge=0)
    patch_snr_threshold: float = param(1.2, ge=0, fix="use 0 (off) or about 1.2")
    patch_outlier_px: float = param(2.0, ge=0, fix="use 0 (off) or about 2 (px)")
    batch_size: int = param(100, ge=1)
    device: str = param("auto", choices=("auto", "cpu", "cuda"), runtime=True)
    interpolation: str = param("bicubic", choices=("bicubic", "bilinear"))
    field_interpolation: str = param("cubic", choices=("cubic", "linear"))
    output_dtype: str = param("input", choices=("input", "float32"))
    num_threads: int = param(0, ge=0, runtime=True)
    seed: int = param(0, ge=0)
    split_frames: int = param(0, ge=0, workflow=True)

    def __post_init__(self) -> None:
        check_fields(self, "motion")
        if self.overlap >= self.patch_size:
            raise invalid("motion", "overlap", self.overlap, f"must be smaller than patch_size ({self.patch_size})",
                          "use about patch_size / 2")
        if self.device == "cuda" and not _cuda_available():
            raise invalid("motion", "device", self.device, "CUDA was requested but torch sees no GPU",
                          "use device: auto (GPU when present, CPU otherwise)")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | MotionParams | None) -> MotionParams:
        """Build from the config's ``motion`` mapping; unknown keys raise CalflowInputError."""
        return from_section(cls, "motion", config)

    def to_dict(self) -> dict[str, Any]:
        """The keys that shape the result (stored as ``motion_params``): all but the workflow's."""
        skip = workflow_keys(type(self))
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    def torch_device(self) -> torch.device:
        return resolve_device(self.device, key="motion.device")


def _cuda_available() -> bool:
    """Whether torch sees a GPU (torch imported here, so the section's checks stay torch-free otherwise)."""
    import torch

    return bool(torch.cuda.is_available())
