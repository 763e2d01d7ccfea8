"""Figures of the ``motion`` stage, drawn from motion.zarr (:func:`calflow.motion.store.read_motion`):
:func:`plot_motion` writes ``motion_shifts`` (rigid shifts and the range of patch shifts, px, over
time), ``motion_correlation`` (r with the template before and after) and ``motion_mean_images``
(raw and corrected mean images). Imports matplotlib (:mod:`calflow.figures`); :mod:`calflow.motion`
loads it only when ``plot_motion`` is first used."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calflow.figures import check_formats, plt, save_figure, show_image
from calflow.motion.store import read_motion


def plot_motion(motion_store: str | Path, out_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Figures from motion.zarr: shift traces, correlation with the template, mean images.

    Returns the paths, per figure in ``formats`` order: ``motion_shifts``, ``motion_correlation``,
    ``motion_mean_images`` (.png by default; svg/pdf on request).
    """
    formats = check_formats(formats)
    m = read_motion(motion_store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fps = m.fps
    rigid = m.shifts.rigid_shifts
    patch = m.shifts.patch_shifts
    n_t = rigid.shape[0]
    t = np.arange(n_t) / fps if np.isfinite(fps) and fps > 0 else np.arange(n_t)
    xlabel = "time (s)" if np.isfinite(fps) and fps > 0 else "frame"
    paths = []

    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    for k, name in enumerate(("dy", "dx")):
        axes[k].plot(t, rigid[:, k], lw=0.8, color="k", label="rigid")
        if patch.shape[1] * patch.shape[2] > 1:
            p = patch[..., k].reshape(n_t, -1)
            axes[k].fill_between(t, p.min(axis=1), p.max(axis=1), color="tab:orange", alpha=0.35,
                                 lw=0, label="patch range")
        axes[k].set_ylabel(f"{name} (px)")
        axes[k].legend(loc="upper right", fontsize=7)
    dev = np.linalg.norm(patch - rigid[:, None, None, :], axis=-1).reshape(n_t, -1)
    axes[2].plot(t, dev.max(axis=1), lw=0.8, color="tab:orange")
    axes[2].set_ylabel("max |patch - rigid| (px)")
    axes[2].set_xlabel(xlabel)
    fig.suptitle("Motion: estimated shifts (displacement of the content)", fontsize=10)
    paths += save_figure(fig, out / "motion_shifts", formats)

    before = m.shifts.corr_with_template_before
    after = m.shifts.corr_with_template
    fig, axes = plt.subplots(1, 2, figsize=(9, 3), gridspec_kw={"width_ratios": [3, 1]})
    axes[0].plot(t, before, lw=0.7, color="tab:gray", label=f"raw (mean {before.mean():.3f})")
    axes[0].plot(t, after, lw=0.7, color="tab:blue", label=f"corrected (mean {after.mean():.3f})")
    axes[0].set_xlabel(xlabel)
    axes[0].set_ylabel("r with template")
    axes[0].legend(fontsize=7)
    axes[1].scatter(before, after, s=3, alpha=0.5)
    lim = [min(before.min(), after.min()), 1]
    axes[1].plot(lim, lim, "k--", lw=0.7)
    axes[1].set_xlabel("raw r")
    axes[1].set_ylabel("corrected r")
    paths += save_figure(fig, out / "motion_correlation", formats)

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    cb, ca = m.attrs.get("crispness_before"), m.attrs.get("crispness_after")
    show_image(axes[0], m.images.mean_before, f"mean, raw (crispness {cb:.4g})" if cb else "mean, raw")
    show_image(axes[1], m.images.mean_after,
               f"mean, corrected (crispness {ca:.4g})" if ca else "mean, corrected")
    paths += save_figure(fig, out / "motion_mean_images", formats)
    return paths
