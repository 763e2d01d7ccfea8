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

from calflow.errors import CalflowInputError
from calflow.params import from_section

MAX_MEMBERS = 64


@dataclass(frozen=True)
class ClassifyParams:
    """The ``classify`` config section (docs/classify.md explains every key)."""

    downsample: int = 2  # block-average frames by this factor (128 -> 64 px)
    normalise: str = "global"  # global: (F - mean image) / std of the movie | pixel: per-pixel z-score over time
    context: int = 5  # input channels: frames t - context .. t + context (clamped at the movie's ends)
    depth: int = 2  # conv blocks (each: two 3x3 conv + ReLU; 2x2 max-pool between blocks)
    width: int = 8  # channels of the first block (doubling per block, capped at 4 x width)
    head_channels: int = 4  # 1x1 conv channels before the position-aware linear head
    dropout: float = 0.5
    mask: str = "none"  # none | cells | targets
    mask_radius: float = 8.0  # targets mask: px (full resolution) around each target
    mask_dilate: int = 2  # cells mask: dilation of the footprint union, px (full resolution)
    brightness: float = 0.4  # additive jitter in normalised units
    contrast: float = 0.4  # gain drawn from [1 - c, 1 + c]
    shift: int = 2  # random translation by up to this many px (classifier resolution), residual motion
    mix: float = 0.0  # probability of adding an unstimulated training window (other spontaneous activity)
    n_folds: int = 2  # cross-fitting folds of contiguous trial blocks
    iterations: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    group_by: str = "animal"  # animal (sessions '<animal><sep><condition>' share one model) | session
    animal_separator: str = "_"
    num_threads: int = 0  # torch CPU threads (0 = leave as set by the runner)
    scratch_dir: str = ""  # directory of the downsampled movie's scratch file ("" = system temp dir, $TMPDIR)
    members: int = 5  # seed ensemble: networks per fold, trained at once as one grouped module (1 = one network)
    shuffle_control: bool = True  # workflow: also train a control classifier on shuffled trial labels
    control_members: int = 1  # workflow: members of that control's ensemble (its spread is small, docs/compare.md)

    def __post_init__(self) -> None:
        def bad(key: str, fix: str) -> CalflowInputError:
            return CalflowInputError(f"classify.{key} = {getattr(self, key)!r}", file="config", fix=fix)

        if self.mask not in ("none", "cells", "targets"):
            raise bad("mask", "use none, cells or targets")
        if self.normalise not in ("global", "pixel"):
            raise bad("normalise", "use global or pixel")
        if self.group_by not in ("animal", "session"):
            raise bad("group_by", "use animal or session")
        if self.n_folds < 2:
            raise bad("n_folds", "use 2 or more (every frame needs a held-out prediction)")
        if self.downsample < 1 or self.depth < 1 or self.width < 1 or self.iterations < 1 or self.batch_size < 1:
            raise bad("downsample" if self.downsample < 1 else "depth", "use positive integers")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "use a value in [0, 1)")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise bad("members", f"use 1 (one network) to {MAX_MEMBERS}")
        if not 1 <= self.control_members <= MAX_MEMBERS:
            raise bad("control_members", f"use 1 (one network) to {MAX_MEMBERS}")
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
        raise CalflowInputError(f"classify.scratch_dir = {scratch_dir!r}: {path} is not an existing writable directory",
                                file="config", fix="create it (node-local disk with room for the downsampled movie) "
                                                   "or use '' for the system temp dir ($TMPDIR)")
    return path
