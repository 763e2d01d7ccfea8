"""The bundled generalist segmenter: trained on simulated sessions only, with broad randomisation.

    python -m calflow.segment.pretrain --out resources/segmenter_pretrained.pt [--cache /tmp/pretrain-cache]

Every training and validation session is drawn by :func:`random_sim_params` from its own seed
(``numpy.random.default_rng([seed, 18])``) and rendered by :mod:`calflow.simulate` (no real data:
the data under ../shared are for evaluation only, their licences do not cover shipping derived
weights). What varies from session to session:

* zoom and cells: mean cell radius log-uniform 3-10 px (diameter ~6-20 px), +-15 % per cell,
  ellipticity, soft edges, nuclear exclusion (dark nucleus 0-80 %), overlap 0-30 %;
  density: cells cover 8-45 % of the field of view;
* activity and GCaMP kinetics: rate 0.02-1 Hz (log-uniform; many cells never fire in a short
  movie, as in real recordings), rise 10-150 ms, decay 0.25-2 s, transient amplitude 0.2-2 x the
  resting brightness, resting brightness and its spread across cells;
* contrast: 80 sessions draw cells at 0.3-2 x and neuropil / background at 0.05-1 F units; 32
  (seeds 1000-1031) draw dim cells (0.1-0.5) on bright neuropil (0.5-2) and background (0.3-2), as
  in many real recordings;
* imaging: 4-30 frames/s, 200-800 frames, 128-256 px fields, photons per unit 2-100 (shot noise),
  read noise, neuropil level and smoothness, background level and smoothness, baseline;
* motion residue: the movies are not motion-corrected; rigid shifts bounded by 0-1.5 px and a small
  non-rigid deformation stand in for what registration leaves.

Training adds cell-sized texture to the inputs (``texture`` 0.5, see calflow.segment.train): real
fields of view are full of cell-sized neuropil texture that is not a cell, which the smooth
simulated neuropil lacks; without it the generalist over-segments real movies.

Each session goes through the pipeline's own summary (:func:`calflow.summary.compute_summary`) and
keyframes (:func:`calflow.keyframes.compute_keyframes`, 50 keyframes) into the segmenter's input
stack; the labels are the simulator's masks (footprint >= half its peak). Validation sessions use
seeds no training session uses; training stops on a validation plateau (``patience``).

The network is the default architecture of the ``segment`` config section (U-Net, base 16,
depth 3, the default seven input channels), so a lab's annotated sessions fine-tune it
(``segment.init: pretrained``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from calflow.simulate import SimParams

log = logging.getLogger("calflow.segment")

# seeds of the training and the validation sessions (no seed in both); seeds whose thousands digit is
# odd (1000-1999, 101000-101999) draw the low-contrast family: dim cells on bright neuropil
TRAIN_SEEDS = ((0, 80), (1000, 1032))
VAL_SEEDS = ((100000, 100012), (101000, 101004))
PRETRAIN_PARAMS = {"network": "unet", "base_channels": 16, "depth": 3, "iterations": 6000, "patience": 1250,
                   "val_every": 250, "batch_size": 8, "patch_size": 64, "lr": 2e-3, "brightness": 0.3,
                   "contrast": 0.3, "texture": 0.5, "device": "cpu", "seed": 0}


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_sim_params(seed: int) -> SimParams:
    """One randomised simulated session (see the module doc for the ranges)."""
    rng = np.random.default_rng([int(seed), 18])
    low_contrast = (int(seed) // 1000) % 2 == 1
    h = int(rng.choice([128, 160, 192, 256]))
    w = int(rng.choice([128, 160, 192, 256]))
    r = _logu(rng, 3.0, 10.0)
    cover = rng.uniform(0.08, 0.45)
    n_cells = int(np.clip(round(cover * h * w / (np.pi * r * r)), 4, 400))
    tau_decay = _logu(rng, 0.25, 2.0)
    return SimParams(
        n_frames=int(rng.integers(200, 801)), height=h, width=w, fps=_logu(rng, 4.0, 30.0),
        n_cells=n_cells, radius_min=0.85 * r, radius_max=1.15 * r, ellipticity=rng.uniform(0.05, 0.5),
        edge_softness=rng.uniform(0.4, 1.5), nucleus_fraction=rng.uniform(0.3, 0.6),
        nucleus_depth=rng.uniform(0.0, 0.8), overlap_fraction=rng.uniform(0.0, 0.3),
        cell_brightness=_logu(rng, 0.1, 0.5) if low_contrast else _logu(rng, 0.3, 2.0),
        brightness_cv=rng.uniform(0.2, 0.8),
        spike_rate_hz=_logu(rng, 0.02, 1.0), rate_cv=rng.uniform(0.3, 1.5),
        population_coupling=rng.uniform(0.0, 0.6), tau_rise_s=min(rng.uniform(0.01, 0.15), 0.5 * tau_decay),
        tau_decay_s=tau_decay, spike_amplitude=_logu(rng, 0.2, 2.0), amplitude_cv=rng.uniform(0.2, 0.6),
        neuropil_level=rng.uniform(0.5, 2.0) if low_contrast else rng.uniform(0.05, 1.0),
        neuropil_scale_px=rng.uniform(3.0, 20.0),
        neuropil_noise=rng.uniform(0.05, 0.3), bg_level=rng.uniform(0.3, 2.0) if low_contrast else rng.uniform(0.05, 1.0),
        bg_scale=rng.uniform(0.1, 0.5),
        baseline=rng.uniform(0.0, 0.5), photons_per_unit=_logu(rng, 2.0, 100.0), read_noise=rng.uniform(2.0, 15.0),
        motion=True, max_shift=rng.uniform(0.0, 1.5), rigid_std=rng.uniform(0.1, 0.8),
        nonrigid=bool(rng.random() < 0.5), nonrigid_amplitude=rng.uniform(0.0, 0.5), n_targets=0,
    )


def simulated_truth(seed: int):
    """The ground truth of the randomised session ``seed`` (a dense draw that does not fit gets fewer cells)."""
    from calflow.errors import CalflowInputError
    from calflow.simulate import simulate

    p = random_sim_params(seed)
    while True:
        try:
            return simulate(p, seed=int(seed))
        except CalflowInputError as err:
            if "could not place" not in str(err) or p.n_cells <= 4:
                raise
            p = dataclasses.replace(p, n_cells=max(4, int(p.n_cells * 0.8)))


def active_labels(truth, labels: np.ndarray, min_spikes: int = 2) -> np.ndarray:
    """``labels`` with the cells that spike fewer than ``min_spikes`` times in the movie set to 0 (background)."""
    active = np.asarray(truth.spikes).sum(axis=1) >= min_spikes
    keep = np.concatenate([[False], active])  # label k + 1 = cell k
    return np.where(keep[labels], labels, 0).astype(np.int32)


def simulated_inputs(seed: int, channels=None, n_keyframes: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) segmenter inputs and (H, W) labels (every cell) of the randomised session ``seed``."""
    from calflow.io import MovieWriter
    from calflow.keyframes import compute_keyframes
    from calflow.segment.data import DEFAULT_CHANNELS, load_inputs
    from calflow.simulate import render_frames
    from calflow.summary import compute_summary

    truth = simulated_truth(seed)
    p = truth.params
    movie = render_frames(truth, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with MovieWriter(tmp / "m.zarr", movie.shape, movie.dtype, fps=p.fps, chunk_frames=100) as w:
            w.write(movie)
        compute_summary(tmp / "m.zarr", tmp / "s.zarr")
        compute_keyframes(tmp / "m.zarr", tmp / "k.zarr", {"n_keyframes": n_keyframes})
        image = load_inputs(tmp / "s.zarr", tmp / "k.zarr", list(channels or DEFAULT_CHANNELS))
    return image, truth.masks().astype(np.int32)


def load_or_simulate(seed: int, cache: Path | None, labels_mode: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels of session ``seed`` (cached in ``cache``); ``labels_mode`` "active": only the
    cells that spike at least twice are labelled, the silent ones are background (see module doc)."""
    f = cache / f"session{seed:06d}.npz" if cache else None
    if f is not None and f.exists():
        z = np.load(f)
        image, labels = z["image"], z["labels"]
    else:
        image, labels = simulated_inputs(seed)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f".{f.stem}.{os.getpid()}.tmp.npz")
            np.savez_compressed(tmp, image=image, labels=labels)
            tmp.replace(f)
    if labels_mode == "active":
        labels = active_labels(simulated_truth(seed), labels)
    return image, labels


def seeds_of(ranges) -> list[int]:
    return [s for a, b in ranges for s in range(a, b)]


def pretrain(out: Path, *, cache: Path | None = None, checkpoint_dir: Path | None = None,
             train_seeds=TRAIN_SEEDS, val_seeds=VAL_SEEDS,
             params: dict | None = None, labels_mode: str = "all") -> dict:
    """Simulate (or read from ``cache``) the sessions, train, write the segmenter file ``out``."""
    from calflow.segment.data import DEFAULT_CHANNELS, Sample
    from calflow.segment.train import train

    t0 = time.perf_counter()
    tr = [Sample.from_labels(*load_or_simulate(s, cache, labels_mode), name=f"sim{s}") for s in seeds_of(train_seeds)]
    va = [Sample.from_labels(*load_or_simulate(s, cache, labels_mode), name=f"sim{s}") for s in seeds_of(val_seeds)]
    t_data = time.perf_counter() - t0
    log.info("%d training and %d validation sessions ready in %.0f s", len(tr), len(va), t_data)
    p = {**PRETRAIN_PARAMS, **(params or {})}
    meta = {"channels": list(DEFAULT_CHANNELS), "generalist": True, "trained_on": "simulated sessions only "
            "(calflow.segment.pretrain)", "labels": labels_mode, "train_seeds": [list(r) for r in train_seeds],
            "val_seeds": [list(r) for r in val_seeds]}
    ck = checkpoint_dir or Path(tempfile.mkdtemp(prefix="pretrain-ckpt-"))
    res = train(tr, va, p, ck, out_path=out, meta=meta)
    res.update({"data_seconds": t_data, "train_sessions": len(tr), "val_sessions": len(va), "params": p,
                "model_bytes": Path(out).stat().st_size if Path(out).exists() else None})
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("resources/segmenter_pretrained.pt"))
    ap.add_argument("--cache", type=Path, default=None, help="folder for the simulated sessions' inputs (reused)")
    ap.add_argument("--checkpoints", type=Path, default=None, help="checkpoint folder (a rerun resumes from it)")
    ap.add_argument("--iterations", type=int, default=PRETRAIN_PARAMS["iterations"])
    ap.add_argument("--patience", type=int, default=PRETRAIN_PARAMS["patience"])
    ap.add_argument("--labels", choices=("all", "active"), default="all",
                    help="label every simulated cell, or only those that spike at least twice (silent ones = background)")
    ap.add_argument("--texture", type=float, default=PRETRAIN_PARAMS["texture"],
                    help="texture augmentation amplitude (TrainParams.texture; 0 = the first, rejected generalist)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--metrics", type=Path, default=None, help="write the training metrics JSON here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    res = pretrain(args.out, cache=args.cache, checkpoint_dir=args.checkpoints,
                   params={"iterations": args.iterations, "patience": args.patience, "texture": args.texture},
                   labels_mode=args.labels)
    text = json.dumps(res, indent=2, default=str)
    if args.metrics:
        args.metrics.write_text(text)
    print(json.dumps({k: res[k] for k in ("best_score", "best_iteration", "iterations", "seconds", "data_seconds",
                                          "model_bytes")}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
