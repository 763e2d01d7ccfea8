"""The ``classify`` config section (:class:`ClassifyParams`) and where the scratch files go.

Lengths are px at the classifier's resolution (the full resolution block-averaged by
``downsample``) unless a field says "full resolution"; ``context`` is in frames.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calflow.params import check_fields, from_section, invalid, param

MAX_MEMBERS = 64


@dataclass(frozen=True)
class ClassifyParams:
    """The ``classify`` config section (docs/classify.md explains every key)."""

    downsample: int = param(2, ge=1)  # block-average frames by this factor (128 -> 64 px)
    # global: (F - mean image) / std of the movie | pixel: per-pixel z-score over time
    normalise: str = param("global", choices=("global", "pixel"))
    context: int = param(5, ge=0)  # input channels: frames t - context .. t + context (clamped at the movie's ends)
    depth: int = param(2, ge=1, le=6)  # conv blocks (each: two 3x3 conv + ReLU; 2x2 max-pool between blocks)
    width: int = param(8, ge=1)  # channels of the first block (doubling per block, capped at 4 x width)
    head_channels: int = param(4, ge=1)  # 1x1 conv channels before the position-aware linear head
    dropout: float = param(0.5, ge=0, le=0.95)
    mask: str = param("none", choices=("none", "cells", "targets"))
    mask_radius: float = param(8.0, gt=0)  # targets mask: px (full resolution) around each target
    mask_dilate: int = param(2, ge=0)  # cells mask: dilation of the footprint union, px (full resolution)
    brightness: float = param(0.4, ge=0)  # additive jitter in normalised units
    contrast: float = param(0.4, ge=0, le=1)  # gain drawn from [1 - c, 1 + c]
    shift: int = param(2, ge=0)  # random translation by up to this many px (classifier resolution), residual motion
    mix: float = param(0.0, ge=0, le=1)  # probability of adding an unstimulated training window
    n_folds: int = param(2, ge=2, fix="use 2 or more (every frame needs a held-out prediction)")  # cross-fitting folds
    iterations: int = param(400, ge=1)
    batch_size: int = param(32, ge=1)
    lr: float = param(2e-3, gt=0)
    weight_decay: float = param(0.01, ge=0)
    checkpoint_every: int = param(100, ge=1, runtime=True)
    seed: int = param(0, ge=0)
    device: str = param("auto", choices=("auto", "cpu", "cuda"), runtime=True)
    # animal (sessions '<animal><sep><condition>' share one model) | session
    group_by: str = param("animal", choices=("animal", "session"))
    animal_separator: str = "_"
    num_threads: int = param(0, ge=0, runtime=True)  # torch CPU threads (0 = leave as set by the runner)
    # directory of the downsampled movie's scratch file ("" = system temp dir, $TMPDIR): a path of the
    # machine, so the rule leaves it out of its params and the script reads it from the config
    scratch_dir: str = param("", runtime=True, workflow=True)
    # seed ensemble: networks per fold, trained at once as one grouped module (1 = one network)
    members: int = param(5, ge=1, le=MAX_MEMBERS, fix=f"use 1 (one network) to {MAX_MEMBERS}")
    # the shuffled-label control: the workflow trains it (rule train_classifier) with control_members networks
    # (classify_control_members), so neither is a param of the real classifier; control_members stays in the
    # checkpoint fingerprint (always its default there), as it always has
    shuffle_control: bool = param(True, runtime=True, workflow=True)
    control_members: int = param(1, ge=1, le=MAX_MEMBERS, workflow=True, fix=f"use 1 (one network) to {MAX_MEMBERS}")

    def __post_init__(self) -> None:
        check_fields(self, "classify")
        scratch_root(self.scratch_dir)  # an existing writable directory, or ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ClassifyParams | None) -> ClassifyParams:
        """The section's parameters; its ``profile`` is ignored here: calflow.config.load_config has
        already written the profile's values into the sections (calflow.config.apply_profile)."""
        if isinstance(config, Mapping) and "profile" in config:
            config = {k: v for k, v in config.items() if k != "profile"}
        return from_section(cls, "classify", config)


def scratch_root(scratch_dir: str = "") -> Path:
    """Directory the scratch files go to: ``scratch_dir`` (``~`` and ``$VARS`` expanded) or, when
    empty, the system temp dir (``tempfile.gettempdir()``: $TMPDIR, i.e. node-local scratch on most
    clusters). A bad directory is a :class:`CalflowInputError` naming ``classify.scratch_dir``."""
    if not scratch_dir:
        return Path(tempfile.gettempdir())
    path = Path(os.path.expandvars(os.path.expanduser(str(scratch_dir))))
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise invalid("classify", "scratch_dir", scratch_dir, f"{path} is not an existing writable directory",
                      "create it (node-local disk with room for the downsampled movie) or use '' for the system temp "
                      "dir ($TMPDIR)")
    return path
