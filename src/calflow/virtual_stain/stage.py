"""Rule ``virtual_stain``: one dataset of paired images -> model, metrics, virtual-stain maps, figures.

For every image of the dataset (rows of the virtual_stain sheet, :mod:`.sheet`: ``dataset, image,
label_free, fluorescence, split`` with split ``train`` or ``test``):

1. the label-free image is standardised (zero mean, unit sd); both images are cut into
   ``block_size`` blocks (:mod:`.blocks`);
2. the fluorescence is binarised (``threshold``: a number or ``otsu``, per image) and each block is
   positive when the positive area is at least ``min_fraction`` of it;
3. the CNN's hyperparameters are searched on the training images (:mod:`.search`), the best are
   trained on all training images;
4. held-out (``test``) blocks are scored: F1, accuracy, precision, recall at probability 0.5 and
   ROC AUC; each test image's block probabilities are rebuilt into a full-size map;
5. each test image's positive fraction is estimated as the mean block probability and compared
   with the fluorescence-measured fraction of positive blocks (Pearson r over test images).

Outputs (``out_dir`` = results/virtual_stain/{dataset}/): ``metrics.json``, ``model.pt``
(weights-only state dict + hyperparameters), ``maps.zarr`` (per test image a group with
``probability`` (y, x) float32 NaN outside whole blocks, ``block_probability``,
``block_fraction``, ``block_label`` (block_y, block_x)), ``plots/`` (examples, fractions, ROC).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError
from calflow.params import check_fields, from_section, invalid, param
from calflow.virtual_stain import blocks as B

log = logging.getLogger(__name__)

@dataclass
class VirtualStainParams:
    """The ``virtual_stain`` config section without ``sheet`` and ``demo``."""

    block_size: int = param(16, ge=4)
    threshold: float | str = "otsu"      # fluorescence binarisation: a number (image units) or "otsu"
    min_fraction: float = param(0.25, gt=0, le=1)  # positive block: binarised area fraction >= this
    n_trials: int = param(8, ge=1)       # optuna trials
    timeout_s: float = param(0.0, ge=0)  # optuna time budget in s (0 = none)
    epochs: int = param(10, ge=1)
    batch_size: int = param(64, ge=2)
    validation_fraction: float = param(0.25, gt=0, le=0.9)  # training images held out for the search's validation
    device: str = param("auto", choices=("auto", "cpu", "cuda"), runtime=True)
    seed: int = param(0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "virtual_stain")
        if not (self.threshold == "otsu" or (isinstance(self.threshold, int | float)
                                             and not isinstance(self.threshold, bool))):
            raise invalid("virtual_stain", "threshold", self.threshold, "must be a number or otsu",
                          "give a number in fluorescence units or 'otsu'")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | VirtualStainParams | None) -> VirtualStainParams:
        return from_section(cls, "virtual_stain", config)


# --------------------------------------------------------------------------------------------
# the images
# --------------------------------------------------------------------------------------------


def read_image(path: str | Path) -> np.ndarray:
    """A 2-d float32 image from .tif/.tiff, .npy or .png/.jpg (RGB(A): mean of the colour channels)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            img = tifffile.imread(path)
        elif suffix == ".npy":
            img = np.load(path, allow_pickle=False)
        else:
            from skimage.io import imread

            img = imread(path)
    except FileNotFoundError as err:
        raise CalflowInputError("image not found", file=path, fix="check the virtual_stain sheet") from err
    except Exception as err:  # noqa: BLE001 - readers raise many kinds for a bad file
        raise CalflowInputError(f"cannot read the image ({err})", file=path, fix="use a 2-d TIFF, PNG or .npy") from err
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].astype(np.float64).mean(axis=-1)
    img = np.squeeze(img)
    if img.ndim != 2:
        raise CalflowInputError(f"image of shape {img.shape} is not 2-d", file=path, fix="give one plane per file")
    img = img.astype(np.float32)
    if not np.isfinite(img).all():
        raise CalflowInputError("image holds NaN or infinite values", file=path, fix="fix or drop the image")
    return img


def standardise(img: np.ndarray) -> np.ndarray:
    """Zero mean, unit sd (float32)."""
    sd = float(img.std())
    return ((img - img.mean()) / (sd if sd > 0 else 1.0)).astype(np.float32)


@dataclass
class ImageBlocks:
    name: str
    split: str
    shape: tuple[int, int]
    grid: tuple[int, int]
    x: np.ndarray           # (n, s, s) standardised label-free blocks
    fraction: np.ndarray    # (n,) positive area fraction
    label: np.ndarray       # (n,) bool


def image_blocks(name: str, split: str, label_free: np.ndarray, fluorescence: np.ndarray,
                 p: VirtualStainParams, *, file: str | Path | None = None) -> ImageBlocks:
    """Blocks and block labels of one image pair."""
    if label_free.shape != fluorescence.shape:
        raise CalflowInputError(f"image '{name}': label-free {label_free.shape} and fluorescence "
                                f"{fluorescence.shape} differ in shape", file=file, fix="pair images of the same size")
    frac = B.block_fractions(B.binarise(fluorescence, p.threshold), p.block_size)
    return ImageBlocks(name, split, label_free.shape, frac.shape, B.cut_blocks(standardise(label_free), p.block_size),
                       frac.ravel(), B.block_labels(frac, p.min_fraction).ravel())


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------


def _metrics(prob: np.ndarray, label: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    pred = prob >= 0.5
    both = 0 < label.sum() < len(label)
    return {
        "f1": float(f1_score(label, pred, zero_division=0)),
        "accuracy": float(accuracy_score(label, pred)),
        "precision": float(precision_score(label, pred, zero_division=0)),
        "recall": float(recall_score(label, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(label, prob)) if both else float("nan"),
        "n_blocks": int(len(label)),
        "n_positive": int(label.sum()),
    }


def _fingerprint(p: VirtualStainParams, x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> str:
    """A hash of the training blocks, their labels and the settings: checkpoints of other data are ignored."""
    h = hashlib.sha256(json.dumps([asdict(p), list(names)], sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def run_dataset(images: Sequence[Mapping[str, str]], out_dir: str | Path, params: VirtualStainParams | dict | None = None,
                *, dataset: str = "") -> dict[str, Any]:
    """Train, evaluate and map one dataset. ``images``: dicts with image, label_free, fluorescence, split."""
    from calflow.checkpoint import save_weights
    from calflow.device import resolve_device
    from calflow.io import atomic_output, write_array
    from calflow.virtual_stain.model import TrainConfig, predict, train_model
    from calflow.virtual_stain.search import search
    from calflow.virtual_stain.store import write_virtual_stain_metrics

    p = from_section(VirtualStainParams, "virtual_stain", params)
    out_dir = Path(out_dir)
    data = [image_blocks(r["image"], r["split"], read_image(r["label_free"]), read_image(r["fluorescence"]), p,
                         file=r["label_free"]) for r in images]
    train = [d for d in data if d.split == "train"]
    test = [d for d in data if d.split == "test"]
    if not train or not test:
        raise CalflowInputError(f"dataset '{dataset}': {len(train)} training and {len(test)} test images",
                                fix="give every dataset split train and split test images")
    n_val = min(max(1, int(round(p.validation_fraction * len(train)))), len(train) - 1) if len(train) > 1 else 0
    fit, val = (train[: len(train) - n_val], train[len(train) - n_val:]) if n_val else (train, train)
    cat = lambda ds: (np.concatenate([d.x for d in ds]), np.concatenate([d.label for d in ds]).astype(np.float32))  # noqa: E731
    x_tr, y_tr = cat(train)
    if y_tr.min() == y_tr.max():
        raise CalflowInputError(f"dataset '{dataset}': every training block is {'positive' if y_tr[0] else 'negative'}",
                                fix="check virtual_stain.threshold / min_fraction or add images with both kinds")
    base = TrainConfig(epochs=p.epochs, batch_size=p.batch_size, seed=p.seed)
    # checkpoints: each finished search trial's score and the final training's last epoch, so a killed
    # job resumes where it stopped; the fingerprint ties them to these blocks and settings
    ckdir = out_dir / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(p, x_tr, y_tr, [d.name for d in train])
    best, trials = search(*cat(fit), *cat(val), base, n_trials=p.n_trials, timeout_s=p.timeout_s, device=p.device,
                          record=ckdir / "search.json", fingerprint=fp)
    model = train_model(x_tr, y_tr, best, p.device, checkpoint=ckdir / "final_last.pt",
                        fingerprint=f"{fp}:{json.dumps(asdict(best), sort_keys=True)}")
    probs = [predict(model, d.x) for d in test]
    prob_all = np.concatenate(probs)
    lab_all = np.concatenate([d.label for d in test])
    est = np.array([pr.mean() for pr in probs])
    meas = np.array([d.label.mean() for d in test])
    pearson = float("nan")
    if len(test) >= 2 and est.std() > 0 and meas.std() > 0:
        from scipy.stats import pearsonr

        pearson = float(pearsonr(est, meas)[0])
    result: dict[str, Any] = {
        "dataset": dataset,
        "params": asdict(p),
        "device": str(resolve_device(p.device, key="virtual_stain.device")),
        "n_train_images": len(train), "n_validation_images": n_val, "n_test_images": len(test),
        "n_train_blocks": int(len(y_tr)), "train_positive_fraction": float(y_tr.mean()),
        "test": _metrics(prob_all, lab_all),
        "pearson_r": pearson,
        "images": [{"image": d.name, "estimated_fraction": float(e), "measured_fraction": float(m),
                    "measured_area_fraction": float(d.fraction.mean()), **_metrics(pr, d.label)}
                   for d, pr, e, m in zip(test, probs, est, meas, strict=True)],
        "search": {"best": asdict(best), "trials": trials},
    }
    with atomic_output(out_dir / "maps.zarr") as tmp:
        import zarr

        zarr.open_group(tmp, mode="w", attributes={"block_size": p.block_size, "images": [d.name for d in test],
                                                    "dataset": dataset})
        for d, pr in zip(test, probs, strict=True):
            g = _safe(d.name)
            write_array(tmp, f"{g}/probability", B.rebuild(pr.reshape(d.grid), p.block_size, d.shape), ("y", "x"),
                        {"image": d.name})
            write_array(tmp, f"{g}/block_probability", pr.reshape(d.grid).astype(np.float32), ("block_y", "block_x"))
            write_array(tmp, f"{g}/block_fraction", d.fraction.reshape(d.grid).astype(np.float32), ("block_y", "block_x"))
            write_array(tmp, f"{g}/block_label", d.label.reshape(d.grid), ("block_y", "block_x"))
    with atomic_output(out_dir / "model.pt") as tmp:
        save_weights({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "config": asdict(best)}, tmp)
    with atomic_output(out_dir / "plots") as tmp:
        tmp.mkdir(parents=True)
        figures(result, test, probs, images, p, tmp)
    write_virtual_stain_metrics(out_dir / "metrics.json", result)
    return result


def figures(result: dict[str, Any], test: Sequence[ImageBlocks], probs: Sequence[np.ndarray],
            images: Sequence[Mapping[str, str]], p: VirtualStainParams, out: Path) -> None:
    """examples.png (label-free / fluorescence / virtual stain of up to 2 test images), fractions.png, roc.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    rows = {r["image"]: r for r in images}
    show = list(zip(test, probs, strict=True))[:2]
    fig, axes = plt.subplots(len(show), 3, figsize=(9, 3.1 * len(show)), squeeze=False)
    for ax, (d, pr) in zip(axes, show, strict=True):
        lf, fl = read_image(rows[d.name]["label_free"]), read_image(rows[d.name]["fluorescence"])
        ax[0].imshow(lf, cmap="gray")
        ax[0].set_title(f"{d.name}: label-free", fontsize=8)
        ax[1].imshow(fl, cmap="magma")
        ax[1].contour(B.rebuild(d.label.reshape(d.grid), p.block_size, d.shape), levels=[0.5], colors="c",
                      linewidths=0.6)
        ax[1].set_title("fluorescence (cyan: positive blocks)", fontsize=8)
        im = ax[2].imshow(B.rebuild(pr.reshape(d.grid), p.block_size, d.shape), cmap="magma", vmin=0, vmax=1)
        ax[2].set_title("virtual stain (P positive)", fontsize=8)
        for a in ax:
            a.set_axis_off()
        fig.colorbar(im, ax=ax[2], shrink=0.8)
    fig.savefig(out / "examples.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    est = [r["estimated_fraction"] for r in result["images"]]
    meas = [r["measured_fraction"] for r in result["images"]]
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.scatter(meas, est, s=18)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("positive fraction, fluorescence")
    ax.set_ylabel("positive fraction, virtual stain")
    ax.set_title(f"held-out images, Pearson r = {result['pearson_r']:.3f}", fontsize=8)
    fig.savefig(out / "fractions.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    lab = np.concatenate([d.label for d in test])
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    if 0 < lab.sum() < len(lab):
        fpr, tpr, _ = roc_curve(lab, np.concatenate(probs))
        ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"held-out blocks, ROC AUC = {result['test']['roc_auc']:.3f}", fontsize=8)
    fig.savefig(out / "roc.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
