"""Quality measures of a registration: :func:`crispness` of a mean image (CaImAn's: the Frobenius
norm of its gradient, borders cropped) and the Pearson correlation of each frame's central crop
with the template (stored as ``corr_with_template`` / ``corr_with_template_before``)."""

from __future__ import annotations

import numpy as np
import torch

from calflow.motion.register import _EPS


def crispness(image: np.ndarray, margin: int = 0) -> float:
    """Frobenius norm of the spatial gradient of ``image`` (CaImAn's crispness); higher = sharper.

    ``margin`` px are cropped on every side first (borders touched by the warp).
    """
    img = np.asarray(image, dtype=np.float64)
    if margin > 0 and min(img.shape) > 2 * margin + 2:
        img = img[margin:-margin, margin:-margin]
    gy, gx = np.gradient(img)
    return float(np.sqrt(np.sum(gy**2 + gx**2)))


def _corr_with(x: torch.Tensor, tz: torch.Tensor, margin: int) -> torch.Tensor:
    """Pearson correlation (B,) of each frame's central crop with a z-normalised template crop."""
    if margin > 0:
        x = x[:, margin:-margin, margin:-margin]
    xf = x.reshape(x.shape[0], -1)
    xf = xf - xf.mean(dim=1, keepdim=True)
    return (xf @ tz) / (xf.norm(dim=1) + _EPS)
