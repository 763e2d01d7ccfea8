"""Report figures for the motion and summary stages (PNG, written next to the zarr outputs)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402

from calflow.errors import CalflowInputError  # noqa: E402


def _open(store: str | Path, needed: tuple[str, ...]) -> zarr.Group:
    store = Path(store)
    try:
        group = zarr.open_group(store, mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises many types for broken stores
        raise CalflowInputError(f"not a readable zarr store ({err})", file=store,
                                fix="rerun the stage that writes it") from err
    missing = [k for k in needed if k not in group]
    if missing:
        raise CalflowInputError(f"missing arrays {missing}", file=store, fix="rerun the stage that writes it")
    return group


def _save(fig: plt.Figure, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    formats = tuple(formats)
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad or not formats:
        raise CalflowInputError(f"unsupported figure format(s) {bad or formats}", fix="use png, svg or pdf")
    return formats


def _show(ax: plt.Axes, img: np.ndarray, title: str) -> None:
    lo, hi = np.percentile(img, [1, 99.7])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def plot_motion(motion_store: str | Path, out_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Figures from motion.zarr: shift traces, correlation with the template, mean images.

    Returns the paths, per figure in ``formats`` order: ``motion_shifts``, ``motion_correlation``,
    ``motion_mean_images`` (.png by default; svg/pdf on request).
    """
    formats = _check_formats(formats)
    g = _open(motion_store, ("rigid_shifts", "patch_shifts", "corr_with_template",
                             "corr_with_template_before", "mean_before", "mean_after"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fps = float(g.attrs.get("fps", np.nan))
    rigid = np.asarray(g["rigid_shifts"])
    patch = np.asarray(g["patch_shifts"])
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
    paths += _save(fig, out / "motion_shifts", formats)

    before = np.asarray(g["corr_with_template_before"])
    after = np.asarray(g["corr_with_template"])
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
    paths += _save(fig, out / "motion_correlation", formats)

    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    cb, ca = g.attrs.get("crispness_before"), g.attrs.get("crispness_after")
    _show(axes[0], np.asarray(g["mean_before"]), f"mean, raw (crispness {cb:.4g})" if cb else "mean, raw")
    _show(axes[1], np.asarray(g["mean_after"]), f"mean, corrected (crispness {ca:.4g})" if ca else "mean, corrected")
    paths += _save(fig, out / "motion_mean_images", formats)
    return paths


def plot_summary(summary_store: str | Path, out_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Figure ``summary_images`` (.png by default) with the mean, max, std, local-correlation and
    PNR images."""
    formats = _check_formats(formats)
    names = ("mean", "max", "std", "local_corr", "pnr")
    g = _open(summary_store, names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.6))
    for ax, name in zip(axes, names, strict=True):
        img = np.asarray(g[name])
        if name in ("local_corr", "pnr"):
            im = ax.imshow(img, cmap="magma", vmin=np.percentile(img, 1), vmax=np.percentile(img, 99.7))
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            ax.set_title(name, fontsize=9)
            ax.set_axis_off()
        else:
            _show(ax, img, name)
    return _save(fig, out / "summary_images", formats)
