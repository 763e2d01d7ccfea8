"""Segmenter benchmark: simulated held-out F1; Neurofinder (the generalist without annotation,
fine-tuned, from scratch, corr_pnr seeds, Suite2p, and CNMF seeded by each); generalist inference +
CNMF speed on 512 x 512 x 2000 frames; ISBI 2012 EM IoU and adapted Rand error (U-Net vs DCN,
deconvolution kernel sweep); BBBC039 nuclei F1; demo inference frames/s.

    snakemake --cores 2                       # the demo first: its held-out evaluation is read here
    python benchmarks/segment.py [--threads 1] [--s2p-python /tmp/s2p-venv/bin/python] [--only nf,speed,isbi,bbbc]
    python benchmarks/segment.py --only detr [--detr-iterations 400]   # U-Net vs detr (with/without trace term)

Prints a table and writes benchmarks/out/segment.json. Nothing here is asserted by tests.

* Simulated: ``results/models/segment_evaluation.json`` of the demo run (the demo's
  ``segment.init: generalist``: the generalist, no fine-tuning, scored on every session; with
  ``init: pretrained`` and ``train_sessions`` the held-out sessions only).
* Neurofinder-left (512 x 256 px, 250 frames, 205 ROIs): rows 0-287 train, rows 288-351 choose
  the checkpoint (and stop training on a plateau), rows 352-511 are the test region; ROIs (true and
  predicted) count for the test region when their centroid lies in it. "pretrained" is the bundled
  generalist (resources/segmenter_pretrained.pt, simulated data only) with no annotation of this
  movie; "finetuned" starts from it, "scratch" from random weights (same data, same plateau rule:
  the config defaults iterations 3000, patience 400). corr_pnr: calflow.segment.corr_pnr with the
  config defaults. Suite2p 1.x ``detection_wrapper`` (sparsery, its defaults, diameter 12 px) runs on
  the same movie in a separate venv (threshold_scaling 1, 0.5, 0.25: the best is reported). CNMF
  (calflow, the config defaults) is seeded by the generalist, the fine-tuned model and corr_pnr,
  with and without the residual search (add_components), and its accepted components (footprints
  >= 0.3 of their maximum) are scored on the same region.
* Speed: a simulated 512 x 512 x 2000 movie; summary + keyframes + generalist inference (8-fold
  TTA) + CNMF in one child process on ``--speed-threads`` threads; frames/s and the child's peak RSS.
* ISBI 2012: slices 0-17 train, 18-19 choose the checkpoint and the instance post-processing,
  20-24 held out; foreground = cell interior (label 255); membrane IoU; adapted Rand error
  (skimage.metrics.adapted_rand_error, membrane label 0 ignored) of boundary-aware instances
  (calflow.segment.infer.instances_from_boundaries: interior markers flooded over the membrane
  probability).
* BBBC039 (15 images): 0-9 train, 10-11 checkpoint, 12-14 test; instances from fg + distance cue.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "out"


def s2p_worker(movie: str, out: str, threshold_scaling: float = 1.0) -> None:
    """Run inside the Suite2p venv: detection on the movie, ROIs saved as npz."""
    from suite2p_compat import stub_torchvision  # sibling module: benchmarks/ is on sys.path

    stub_torchvision()
    import tifffile
    import torch
    from suite2p.detection.detect import detection_wrapper
    from suite2p.parameters import default_settings

    torch.set_num_threads(1)
    mov = tifffile.imread(movie).astype(np.float32)
    settings = default_settings()["detection"]
    settings["threshold_scaling"] = float(threshold_scaling)
    t0 = time.perf_counter()
    _, stat, _ = detection_wrapper(mov, diameter=[12.0, 12.0], tau=1.0, fs=7.0, settings=settings,
                                   device=torch.device("cpu"))
    sec = time.perf_counter() - t0
    ypix = [np.asarray(s["ypix"]) for s in stat]
    xpix = [np.asarray(s["xpix"]) for s in stat]
    from importlib.metadata import version

    np.savez(out, n=len(stat), ypix=np.concatenate(ypix), xpix=np.concatenate(xpix),
             sizes=np.array([len(y) for y in ypix]), seconds=sec, version=version("suite2p"))


def masks_from_pix(ypix, xpix, sizes, shape):
    import scipy.sparse as sp

    rows = np.repeat(np.arange(len(sizes)), sizes)
    return sp.csr_matrix((np.ones(len(rows), bool), (rows, ypix * shape[1] + xpix)), shape=(len(sizes), shape[0] * shape[1]))


def train_and_predict(tr, va, params, tmp, name):
    from calflow.segment.infer import load_segmenter
    from calflow.segment.train import train

    res = train(tr, va, params, Path(tmp) / name, out_path=Path(tmp) / f"{name}.pt", resume=False)
    model, info = load_segmenter(Path(tmp) / f"{name}.pt")
    return res, model, info


def bench_simulated() -> dict:
    ev = ROOT / "results" / "models" / "segment_evaluation.json"
    if not ev.exists():
        return {"skipped": "run `snakemake --cores 2` first"}
    d = json.loads(ev.read_text())
    m = json.loads((ROOT / "results" / "models" / "segmenter_metrics.json").read_text())
    return {"heldout_mean_f1": d["heldout_mean_f1"], "training_mean_f1": d["training_mean_f1"], "sessions": d["sessions"],
            "train_seconds": m.get("seconds"), "train_sessions": m.get("train_sessions")}


def bench_inference(threads: int) -> dict:
    from calflow.io import MovieReader
    from calflow.keyframes import compute_keyframes
    from calflow.segment.infer import segment_session

    s = ROOT / "results" / "m2_POD0"
    model = ROOT / "results" / "models" / "segmenter.pt"
    if not (s / "motion.zarr").exists() or not model.exists():
        return {"skipped": "run `snakemake --cores 2` first"}
    n = MovieReader(s / "motion.zarr").shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        compute_keyframes(s / "motion.zarr", Path(tmp) / "kf.zarr", {"n_keyframes": 50})
        t1 = time.perf_counter()
        segment_session(s / "summary.zarr", Path(tmp) / "kf.zarr", model, Path(tmp) / "fp.zarr", device="cpu", tta=True)
        t2 = time.perf_counter()
        segment_session(s / "summary.zarr", Path(tmp) / "kf.zarr", model, Path(tmp) / "fp2.zarr", device="cpu", tta=False)
        t3 = time.perf_counter()
    return {"movie_frames": n, "frame_shape": [128, 128], "keyframes_s": t1 - t0, "segment_tta_s": t2 - t1,
            "segment_no_tta_s": t3 - t2, "frames_per_s_keyframes_plus_segment": n / (t2 - t0),
            "threads": threads, "note": "summary images are made by the summary stage and not counted"}


def _score_region(true, pred_masks, shape, region):
    from calflow.metrics import evaluate_instances, restrict

    return evaluate_instances(restrict(true, shape, region), restrict(pred_masks, shape, region), shape)


def _cnmf_masks(store, threshold: float = 0.3):
    """Accepted CNMF components as binary masks (>= threshold x each footprint's max), as the report scores them."""
    import scipy.sparse as sp

    from calflow.cnmf.store import read_cnmf

    c = read_cnmf(store)
    A = c["A"]
    amax = np.maximum(A.max(axis=1).toarray().ravel(), 1e-12)
    binA = sp.csr_matrix(sp.diags(1 / amax) @ A >= threshold)
    return binA[np.flatnonzero(np.asarray(c["accepted"], bool))], int(A.shape[0])


NF_METHODS = ("pretrained", "finetuned", "scratch", "corr_pnr", "suite2p")


def bench_neurofinder(s2p_python: str, generalist: Path, finetune: dict, cnmf_add: int,
                      methods: tuple[str, ...] = NF_METHODS) -> dict:
    """Neurofinder-left: the generalist (no annotation of this movie), fine-tuned from it, from scratch,
    corr_pnr seeds, Suite2p; then CNMF seeded by each, with and without the residual search."""
    import tifffile

    from calflow.cnmf.stage import run_cnmf
    from calflow.io import MovieWriter
    from calflow.keyframes import compute_keyframes
    from calflow.metrics import labels_to_masks, masks_to_labels, read_neurofinder_regions
    from calflow.segment.corr_pnr import seed_movie
    from calflow.segment.data import Sample, load_inputs
    from calflow.segment.infer import load_segmenter, segment_image, write_footprints
    from calflow.summary import compute_summary

    d = DATA / "neurofinder-left"
    if not d.exists():
        return {"skipped": f"{d} not found"}
    movie = tifffile.imread(d / "movie.tif")
    shape = movie.shape[1:]
    true = read_neurofinder_regions(d / "regions.json", shape)
    test = (slice(352, None), slice(None))
    out = {"shape": list(movie.shape), "split_rows": {"train": [0, 288], "checkpoint": [288, 352], "test": [352, 512]},
           "n_true_test": int(_score_region(true, true, shape, test)["iou"]["n_true"]), "finetune_params": finetune}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with MovieWriter(tmp / "m.zarr", movie.shape, movie.dtype, fps=7.0, chunk_frames=50) as w:
            w.write(movie)
        compute_summary(tmp / "m.zarr", tmp / "s.zarr")
        compute_keyframes(tmp / "m.zarr", tmp / "k.zarr", {"n_keyframes": 50})  # the workflow's default
        image = load_inputs(tmp / "s.zarr", tmp / "k.zarr")
        full = Sample.from_labels(image, masks_to_labels(true, shape))
        tr, va = [full.crop(slice(0, 288), slice(None))], [full.crop(slice(288, 352), slice(None))]
        labels = {}
        # 1. the generalist, no annotation of this movie
        t0 = time.perf_counter()
        model, info = load_segmenter(generalist)
        labels["pretrained"] = segment_image(model, info["arch"], image, info["meta"]["post"], tta=True)["labels"]
        out["pretrained"] = _score_region(true, labels_to_masks(labels["pretrained"]), shape, test)
        out["pretrained"].update({"seconds": time.perf_counter() - t0, "model": str(generalist),
                                  "post": info["meta"]["post"]})
        print(f"  nf pretrained F1 {out['pretrained']['iou']['f1']:.3f}", file=sys.stderr)
        # 2./3. fine-tuned from the generalist, and from scratch (same data, same plateau rule)
        for name, init in (("finetuned", generalist), ("scratch", None)):
            from calflow.segment.train import train

            if name not in methods:
                continue
            res = train(tr, va, finetune, tmp / name, out_path=tmp / f"{name}.pt", resume=False, init_weights=init)
            model, info = load_segmenter(tmp / f"{name}.pt")
            labels[name] = segment_image(model, info["arch"], image, info["meta"]["post"], tta=True)["labels"]
            out[name] = _score_region(true, labels_to_masks(labels[name]), shape, test)
            out[name].update({k: res[k] for k in ("seconds", "iterations", "best_iteration", "best_score",
                                                  "stopped_on_plateau")})
            print(f"  nf {name} F1 {out[name]['iou']['f1']:.3f} ({res['iterations']} it, {res['seconds']:.0f} s)",
                  file=sys.stderr)
        # 4. corr_pnr seeds (annotation-free, CaImAn-style), the config defaults
        t0 = time.perf_counter()  # always run: cheap, and the best peer's figure needs it
        cp = seed_movie(tmp / "m.zarr")
        labels["corr_pnr"] = cp["labels"]
        out["corr_pnr"] = _score_region(true, labels_to_masks(cp["labels"]), shape, test)
        out["corr_pnr"].update({"seconds": time.perf_counter() - t0, "params": cp["params"]})
        print(f"  nf corr_pnr F1 {out['corr_pnr']['iou']['f1']:.3f}", file=sys.stderr)
        # 5. Suite2p
        if "suite2p" not in methods:
            out["suite2p"] = {"skipped": "not asked (--nf-methods)"}
        elif s2p_python and Path(s2p_python).exists():
            # Suite2p's default threshold_scaling (1.0) finds few ROIs in 250 frames; 0.5 and 0.25
            # are tried too and the best F1 on the test region is reported (favouring Suite2p).
            out["suite2p_runs"] = {}
            for ts in (1.0, 0.5, 0.25):
                cmd = [s2p_python, str(Path(__file__).resolve()), "--s2p-worker", str(d / "movie.tif"),
                       str(tmp / "s2p.npz"), str(ts)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    out["suite2p_runs"][str(ts)] = {"error": proc.stderr[-2000:]}
                    continue
                z = np.load(tmp / "s2p.npz")
                ev = _score_region(true, masks_from_pix(z["ypix"], z["xpix"], z["sizes"], shape), shape, test)
                ev.update({"seconds": float(z["seconds"]), "version": str(z["version"]), "n_rois_full_fov": int(z["n"]),
                           "threshold_scaling": ts})
                out["suite2p_runs"][str(ts)] = ev
            ok = [v for v in out["suite2p_runs"].values() if "iou" in v]
            out["suite2p"] = max(ok, key=lambda v: v["iou"]["f1"]) if ok else {"error": "every Suite2p run failed"}
        else:
            out["suite2p"] = {"skipped": f"{s2p_python!r} not found"}
        # 6. CNMF seeded by each (accepted components scored), without and with the residual search
        out["cnmf"] = {}
        for name in [m for m in ("pretrained", "finetuned", "corr_pnr") if m in labels]:
            write_footprints(tmp / f"fp_{name}.zarr", labels[name], (labels[name] > 0).astype(np.float32))
            for add in (0, cnmf_add):
                key = f"{name}_add{add}"
                t0 = time.perf_counter()
                info = run_cnmf(tmp / "m.zarr", tmp / f"fp_{name}.zarr", tmp / f"cnmf_{key}.zarr",
                                summary_store=tmp / "s.zarr", fps=7.0,
                                params={"device": "cpu", "add_components": add})
                acc, k_all = _cnmf_masks(tmp / f"cnmf_{key}.zarr")
                ev = _score_region(true, acc, shape, test)
                ev.update({"seconds": time.perf_counter() - t0, "n_components": k_all, "n_accepted": int(acc.shape[0]),
                           "n_added": int(info.get("n_added", 0)) if isinstance(info, dict) else None})
                out["cnmf"][key] = ev
                print(f"  nf cnmf {key}: accepted F1 {ev['iou']['f1']:.3f} centroid {ev['centroid']['f1']:.3f}",
                      file=sys.stderr)
    peers = [out[k]["iou"]["f1"] for k in ("suite2p", "corr_pnr") if "iou" in out.get(k, {})]
    out["best_peer_f1"] = max(peers) if peers else None
    out["pretrained_over_best_peer"] = out["pretrained"]["iou"]["f1"] / max(out["best_peer_f1"], 1e-9) if peers else None
    return out


def speed_worker(movie: str, model: str, out: str, threads: int) -> None:
    """Child: summary + keyframes + generalist inference (8-fold TTA) + CNMF on ``movie``, timed; VmHWM."""
    from calflow.runner import set_threads

    set_threads(threads)
    from calflow.cnmf.stage import run_cnmf
    from calflow.keyframes import compute_keyframes
    from calflow.segment.infer import segment_session
    from calflow.summary import compute_summary

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from motion import peak_rss_self_mib

    tmp = Path(out).parent
    t = [time.perf_counter()]
    compute_summary(movie, tmp / "s.zarr")
    t.append(time.perf_counter())
    compute_keyframes(movie, tmp / "k.zarr", {"n_keyframes": 50})
    t.append(time.perf_counter())
    seg = segment_session(tmp / "s.zarr", tmp / "k.zarr", model, tmp / "fp.zarr", device="cpu", tta=True)
    t.append(time.perf_counter())
    info = run_cnmf(movie, tmp / "fp.zarr", tmp / "cnmf.zarr", summary_store=tmp / "s.zarr", fps=30.0,
                    params={"device": "cpu"})
    t.append(time.perf_counter())
    Path(out).write_text(json.dumps({
        "summary_s": t[1] - t[0], "keyframes_s": t[2] - t[1], "segment_s": t[3] - t[2], "cnmf_s": t[4] - t[3],
        "total_s": t[4] - t[0], "n_components": seg["n_components"], "n_accepted": info["n_accepted"],
        "vm_hwm_mib": peak_rss_self_mib()}))


def bench_speed(model: Path, threads: int, n_frames: int = 2000, size: int = 512) -> dict:
    """Generalist inference + CNMF on a simulated size x size x n_frames movie, in a child (peak RSS)."""
    from calflow.io import MovieReader, MovieWriter
    from calflow.simulate import SimParams, iter_movie, simulate

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from motion import run_child

    p = SimParams(n_frames=n_frames, height=size, width=size, n_cells=int(400 * (size / 512) ** 2), n_targets=0,
                  motion=False, fps=30.0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth = simulate(p, seed=7)
        with MovieWriter(tmp / "m.zarr", (n_frames, size, size), np.uint16, fps=30.0, chunk_frames=100) as w:
            for _, block in iter_movie(truth, block_frames=100, threads=threads):
                w.write(block)
        assert MovieReader(tmp / "m.zarr").shape == (n_frames, size, size)
        res = run_child([sys.executable, str(Path(__file__).resolve()), "--speed-worker", str(tmp / "m.zarr"),
                         str(model), str(tmp / "r.json"), str(threads)], tmp / "r.json")
    res.update({"movie": [n_frames, size, size], "threads": threads, "frames_per_s": n_frames / res["total_s"],
                "frames_per_s_segment_plus_cnmf": n_frames / (res["segment_s"] + res["cnmf_s"]),
                "note": "simulated movie, no motion correction timed; summary + keyframes + segment (TTA) + cnmf"})
    return res


def bench_isbi(iterations: int, kernel_sweep: list[list[int]]) -> dict:
    import tifffile

    from calflow.metrics import pixel_iou
    from calflow.segment.data import Sample, normalise
    from calflow.segment.infer import predict

    d = DATA / "isbi2012-em"
    if not d.exists():
        return {"skipped": f"{d} not found"}
    vol = tifffile.imread(d / "train-volume.tif")
    lab = tifffile.imread(d / "train-labels.tif") > 127  # True = interior
    samples = [Sample(normalise(vol[i])[None], lab[i].astype(np.float32)) for i in range(len(vol))]
    tr, va, te = samples[:18], samples[18:20], list(range(20, len(vol)))
    base = {"task": "semantic", "iterations": iterations, "patience": 0, "patch_size": 128, "batch_size": 4, "depth": 4,
            "base_channels": 16, "val_every": max(iterations // 8, 1), "device": "cpu", "lr": 2e-3}
    variants = {"unet": {"network": "unet"}, "dcn_default_k4-8-16-32": {"network": "dcn"}}
    for ks in kernel_sweep:
        variants["dcn_k" + "-".join(map(str, ks))] = {"network": "dcn", "deconv_kernels": ks}
    out = {"split": {"train": [0, 17], "checkpoint": [18, 19], "test": te}, "variants": {}}
    from scipy import ndimage
    from skimage.metrics import adapted_rand_error

    from calflow.segment.infer import instances_from_boundaries

    def are(i, prob, post):  # adapted Rand error against the slice's cells (membrane label 0 ignored)
        return float(adapted_rand_error(ndimage.label(lab[i])[0], instances_from_boundaries(prob, **post))[0])

    grid = [{"marker_threshold": t, "min_marker": m} for t in (0.5, 0.7, 0.8, 0.9, 0.95) for m in (10, 50)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, v in variants.items():
            res, model, info = train_and_predict(tr, va, {**base, **v}, tmp, name)
            probs = {i: predict(model, samples[i].image, depth=base["depth"], tta=True)[0] for i in range(18, len(vol))}
            fg, mem = [], []
            for i in te:
                p = probs[i] > 0.5
                fg.append(pixel_iou(lab[i], p))
                mem.append(pixel_iou(~lab[i], ~p))
            # boundary-aware instances: the marker threshold and size are chosen on the checkpoint slices
            post = min(grid, key=lambda g: np.mean([are(i, probs[i], g) for i in (18, 19)]))
            rand = [are(i, probs[i], post) for i in te]
            out["variants"][name] = {"foreground_iou": float(np.mean(fg)), "membrane_iou": float(np.mean(mem)),
                                     "adapted_rand_error": float(np.mean(rand)), "per_slice_adapted_rand_error": rand,
                                     "instance_post": post,
                                     "per_slice_foreground_iou": fg, "train_seconds": res["seconds"],
                                     "best_iteration": res["best_iteration"], "iterations": res["iterations"],
                                     "arch": res["arch"]}
            print(f"  isbi {name}: fg IoU {np.mean(fg):.3f} membrane IoU {np.mean(mem):.3f} "
                  f"adapted Rand error {np.mean(rand):.3f} ({post})", file=sys.stderr)
    return out


def bench_bbbc(iterations: int) -> dict:
    import skimage.io
    from scipy import ndimage

    from calflow.metrics import evaluate_instances
    from calflow.segment.data import Sample, normalise
    from calflow.segment.infer import segment_image

    d = DATA / "bbbc039-subset20"
    if not d.exists():
        return {"skipped": f"{d} not found"}
    names = sorted(p.stem for p in (d / "images").glob("*.tif"))
    samples = []
    for n in names:
        img = skimage.io.imread(d / "images" / f"{n}.tif").astype(np.float32)
        m = skimage.io.imread(d / "masks" / f"{n}.png")[..., 0]
        lab = np.zeros(m.shape, np.int32)
        for v in np.unique(m[m > 0]):
            cc, k = ndimage.label(m == v)
            lab[cc > 0] = cc[cc > 0] + lab.max()
        samples.append(Sample.from_labels(normalise(img)[None], lab, n))
    tr, va, te = samples[:10], samples[10:12], samples[12:]
    params = {"iterations": iterations, "patience": 0, "patch_size": 128, "batch_size": 4, "depth": 3,
              "val_every": max(iterations // 8, 1),
              "device": "cpu", "post": {"prob_threshold": 0.5, "cue_threshold": 0.5, "min_size": 30}}
    with tempfile.TemporaryDirectory() as tmp:
        res, model, info = train_and_predict(tr, va, params, tmp, "bbbc")
        scores = [evaluate_instances(s.labels, segment_image(model, info["arch"], s.image, info["meta"]["post"], tta=True)["labels"],
                                     s.labels.shape) for s in te]
    return {"split": {"train": names[:10], "checkpoint": names[10:12], "test": names[12:]},
            "f1": float(np.mean([s["iou"]["f1"] for s in scores])),
            "centroid_f1": float(np.mean([s["centroid"]["f1"] for s in scores])),
            "per_image": scores, "train_seconds": res["seconds"]}


def _sim_session(seed: int, n_frames: int = 300, trace_step: int = 3):
    """A simulated 128 x 128 session: inputs through the pipeline's summary + keyframes code, labels, the
    movie (float32), and every ``trace_step``-th frame (normalised) with the true calcium for the trace term."""
    from calflow.io import MovieWriter
    from calflow.keyframes import compute_keyframes
    from calflow.segment.data import Sample, load_inputs, normalise
    from calflow.simulate import SimParams, render_frames, simulate
    from calflow.summary import compute_summary

    truth = simulate(SimParams(n_frames=n_frames, height=128, width=128, n_cells=40, n_targets=0, motion=False,
                               fps=10.0), seed=seed)
    movie = render_frames(truth, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with MovieWriter(tmp / "m.zarr", movie.shape, movie.dtype, fps=10.0, chunk_frames=100) as w:
            w.write(movie)
        compute_summary(tmp / "m.zarr", tmp / "s.zarr")
        compute_keyframes(tmp / "m.zarr", tmp / "k.zarr", {"n_keyframes": 50})
        image = load_inputs(tmp / "s.zarr", tmp / "k.zarr")
    labels = truth.masks().astype(np.int32)
    s = Sample.from_labels(image, labels, f"sim{seed}")
    s.frames = normalise(movie[::trace_step].astype(np.float32))
    s.traces = np.asarray(truth.calcium[:, ::trace_step], np.float32)
    return s, movie.astype(np.float32), np.asarray(truth.calcium, np.float32)


def _trace_r(true_labels, pred_labels, weights, movie, calcium) -> list[float]:
    """Pearson r of each IoU-matched predicted cell's trace (its footprint weights x movie) with its true calcium."""
    import scipy.sparse as sp

    from calflow.metrics import match_iou

    ti = [k for k in np.unique(true_labels) if k > 0]
    pi = [k for k in np.unique(pred_labels) if k > 0]
    if not ti or not pi:
        return []
    tm = sp.csr_matrix(np.stack([(true_labels == k).ravel() for k in ti]))
    pm = sp.csr_matrix(np.stack([(pred_labels == k).ravel() for k in pi]))
    flat = movie.reshape(len(movie), -1)
    out = []
    for a, b in match_iou(tm, pm, shape=true_labels.shape)["pairs"]:
        w = np.where(pred_labels.ravel() == pi[b], weights.ravel(), 0.0)
        tr = flat @ w / max(w.sum(), 1e-9)
        out.append(float(np.corrcoef(tr, calcium[ti[a] - 1])[0, 1]))
    return out


DETR_VARIANTS = {"unet": {"network": "unet"}, "detr": {"network": "detr", "trace_weight": 0.0},
                 "detr_trace": {"network": "detr", "trace_weight": 0.5}}


def bench_detr(iterations: int, variants: tuple[str, ...] = tuple(DETR_VARIANTS), parts: tuple[str, ...] = ("sim", "nf"),
               ) -> dict:
    """U-Net vs detr (without / with the trace term), trained from scratch with the same settings:
    simulated sessions (train seeds 0-3, checkpoint seed 10, held-out seeds 20-22: F1 and median trace r
    against the true calcium) and neurofinder-left (the nf split: F1 on the test rows); inference frames/s."""
    from calflow.metrics import labels_to_masks, masks_to_labels, match_iou, read_neurofinder_regions
    from calflow.segment.data import Sample, load_inputs
    from calflow.segment.infer import load_segmenter, segment_image
    from calflow.segment.stage import keyframe_stack
    from calflow.segment.train import train

    base = {"iterations": iterations, "patience": 0, "val_every": max(iterations // 8, 1), "patch_size": 64,
            "batch_size": 4, "lr": 2e-3, "device": "cpu", "seed": 0, "queries": 32,
            "post": {"prob_threshold": 0.5, "cue_threshold": 0.5, "min_size": 10}}
    t0 = time.perf_counter()
    sims = {seed: _sim_session(seed) for seed in (0, 1, 2, 3, 10, 20, 21, 22)} if "sim" in parts else {}
    out: dict = {"params": base, "split": {"train_seeds": [0, 1, 2, 3], "checkpoint_seeds": [10],
                                           "heldout_seeds": [20, 21, 22]},
                 "simulate_seconds": time.perf_counter() - t0, "sim": {}, "nf": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tr, va = [sims[k][0] for k in (0, 1, 2, 3) if k in sims], [sims[k][0] for k in (10,) if k in sims]
        for name in variants if "sim" in parts else ():
            res = train(tr, va, {**base, **DETR_VARIANTS[name]}, tmp / name, out_path=tmp / f"{name}.pt", resume=False)
            key = f"{name}_{iterations}it"
            model, info = load_segmenter(tmp / f"{name}.pt")
            f1, rs, secs, frames = [], [], 0.0, 0
            for seed in (20, 21, 22):
                s, movie, calcium = sims[seed]
                t1 = time.perf_counter()
                seg = segment_image(model, info["arch"], s.image, info["meta"]["post"], tta=False)
                secs += time.perf_counter() - t1
                frames += len(movie)
                f1.append(match_iou(s.labels, seg["labels"])["f1"])
                rs += _trace_r(s.labels, seg["labels"], seg["probability"], movie, calcium)
            out["sim"][key] = {"heldout_f1": float(np.mean(f1)), "per_session_f1": f1,
                                "median_trace_r": float(np.median(rs)) if rs else None, "n_matched": len(rs),
                                "frames_per_s_inference_no_tta": frames / secs, "train_seconds": res["seconds"],
                                "best_iteration": res["best_iteration"], "post": info["meta"]["post"],
                                "arch": res["arch"]}
            print(f"  sim {key}: F1 {np.mean(f1):.3f} median r {out['sim'][key]['median_trace_r']} "
                  f"({res['seconds']:.0f} s)", file=sys.stderr)
        d = DATA / "neurofinder-left"
        if "nf" not in parts:
            return out
        if not d.exists():
            out["nf"] = {"skipped": f"{d} not found"}
            return out
        import tifffile

        from calflow.io import MovieWriter
        from calflow.keyframes import compute_keyframes
        from calflow.summary import compute_summary

        movie = tifffile.imread(d / "movie.tif")
        shape = movie.shape[1:]
        true = read_neurofinder_regions(d / "regions.json", shape)
        with MovieWriter(tmp / "m.zarr", movie.shape, movie.dtype, fps=7.0, chunk_frames=50) as w:
            w.write(movie)
        compute_summary(tmp / "m.zarr", tmp / "s.zarr")
        compute_keyframes(tmp / "m.zarr", tmp / "k.zarr", {"n_keyframes": 50})
        full = Sample.from_labels(load_inputs(tmp / "s.zarr", tmp / "k.zarr"), masks_to_labels(true, shape))
        full.frames = keyframe_stack(tmp / "k.zarr")  # real data: the annotations' mask-averaged keyframe traces
        tr, va = [full.crop(slice(0, 288), slice(None))], [full.crop(slice(288, 352), slice(None))]
        test = (slice(352, None), slice(None))
        for name in variants:
            res = train(tr, va, {**base, **DETR_VARIANTS[name]}, tmp / f"nf_{name}", out_path=tmp / f"nf_{name}.pt",
                        resume=False)
            model, info = load_segmenter(tmp / f"nf_{name}.pt")
            t1 = time.perf_counter()
            seg = segment_image(model, info["arch"], full.image, info["meta"]["post"], tta=False)
            sec = time.perf_counter() - t1
            ev = _score_region(true, labels_to_masks(seg["labels"]), shape, test)
            out["nf"][f"{name}_{iterations}it"] = {**ev, "f1": ev["iou"]["f1"], "train_seconds": res["seconds"],
                               "frames_per_s_inference_no_tta": len(movie) / sec, "post": info["meta"]["post"]}
            print(f"  nf {name}: test F1 {ev['iou']['f1']:.3f} ({res['seconds']:.0f} s)", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--s2p-python", default="/tmp/s2p-venv/bin/python")
    ap.add_argument("--only", default="sim,infer,nf,speed,isbi,bbbc")
    ap.add_argument("--generalist", default=str(ROOT / "resources" / "segmenter_pretrained.pt"))
    ap.add_argument("--nf-iterations", type=int, default=3000, help="most fine-tuning iterations (the config default)")
    ap.add_argument("--nf-patience", type=int, default=400, help="plateau patience (the config default)")
    ap.add_argument("--nf-lr", type=float, default=2e-3)
    ap.add_argument("--cnmf-add", type=int, default=50, help="cnmf.add_components for the residual-search runs")
    ap.add_argument("--nf-methods", default=",".join(NF_METHODS), help="neurofinder methods to run")
    ap.add_argument("--isbi-iterations", type=int, default=400)
    ap.add_argument("--bbbc-iterations", type=int, default=400)
    ap.add_argument("--kernel-sweep", default="2,4,8,16;6,12,24,48;8,16,32,64",
                    help="DCN deconvolution kernel sizes per scale, ';' between settings")
    ap.add_argument("--s2p-worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--speed-worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--speed-threads", type=int, default=2)
    ap.add_argument("--detr-iterations", type=int, default=400, help="iterations of every network in --only detr")
    ap.add_argument("--detr-variants", default=",".join(DETR_VARIANTS), help="networks of --only detr")
    ap.add_argument("--detr-parts", default="sim,nf", help="data sets of --only detr")
    args = ap.parse_args()
    if args.speed_worker:
        speed_worker(*args.speed_worker[:3], int(args.speed_worker[3]))
        return
    if args.s2p_worker:
        s2p_worker(args.s2p_worker[0], args.s2p_worker[1], *map(float, args.s2p_worker[2:]))
        return
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    only = set(args.only.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "segment.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    sweep = [[int(k) for k in s.split(",")] for s in args.kernel_sweep.split(";") if s]
    steps = {"sim": bench_simulated, "infer": lambda: bench_inference(args.threads),
             "nf": lambda: bench_neurofinder(args.s2p_python, Path(args.generalist), {
                 "iterations": args.nf_iterations, "patience": args.nf_patience, "lr": args.nf_lr, "val_every": 50,
                 "patch_size": 64, "batch_size": 8, "device": "cpu",
                 "post": {"prob_threshold": 0.5, "cue_threshold": 0.5, "min_size": 10}}, args.cnmf_add,
                 tuple(args.nf_methods.split(","))),
             "speed": lambda: bench_speed(Path(args.generalist), args.speed_threads),
             "isbi": lambda: bench_isbi(args.isbi_iterations, sweep), "bbbc": lambda: bench_bbbc(args.bbbc_iterations),
             "detr": lambda: bench_detr(args.detr_iterations, tuple(args.detr_variants.split(",")),
                                        tuple(args.detr_parts.split(",")))}
    for key, fn in steps.items():
        if key in only:
            t0 = time.perf_counter()
            new = fn()
            if key == "detr" and isinstance(results.get(key), dict):  # runs of other variants/lengths add up
                for part in ("sim", "nf"):
                    new[part] = {**results[key].get(part, {}), **new.get(part, {})}
            results[key] = new
            results[key]["benchmark_seconds"] = time.perf_counter() - t0
            results[key].setdefault("threads", args.threads)
            # merge into the file as it is now (another run may have written its parts meanwhile), atomically
            on_disk = json.loads(path.read_text()) if path.exists() else {}
            on_disk[key] = results[key]
            results = on_disk
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(results, indent=2, default=float))
            os.replace(tmp, path)
            print(f"{key} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print_table(results)


def print_table(r: dict) -> None:
    rows = []
    if "f1" in json.dumps(r.get("sim", {})):
        rows.append(("simulated held-out F1 (IoU>=0.5), demo sessions", f"{r['sim']['heldout_mean_f1']:.3f}", ">= 0.90"))
    nf = r.get("nf", {})
    labels = {"pretrained": "generalist, no annotation", "finetuned": "fine-tuned from the generalist",
              "scratch": "trained from scratch", "corr_pnr": "corr_pnr seeds (CaImAn-style)", "suite2p": "Suite2p"}
    for key, label in labels.items():
        if "iou" in nf.get(key, {}):
            rows.append((f"neurofinder-left test rows, {label}: F1 (IoU / centroid)",
                         f"{nf[key]['iou']['f1']:.3f} / {nf[key]['centroid']['f1']:.3f}", ""))
    for key, v in nf.get("cnmf", {}).items():
        rows.append((f"neurofinder-left test rows, CNMF accepted, seeds {key}: F1 (IoU / centroid)",
                     f"{v['iou']['f1']:.3f} / {v['centroid']['f1']:.3f}", ""))
    for name, v in r.get("isbi", {}).get("variants", {}).items():
        rows.append((f"ISBI held-out slices, {name}: foreground / membrane IoU",
                     f"{v['foreground_iou']:.3f} / {v['membrane_iou']:.3f}", ">= 0.90 (fg)"))
        if "adapted_rand_error" in v:
            rows.append((f"ISBI held-out slices, {name}: adapted Rand error (skimage)",
                         f"{v['adapted_rand_error']:.3f}", "<= 0.10"))
    if "f1" in r.get("bbbc", {}):
        rows.append(("BBBC039 test images F1 (IoU / centroid)", f"{r['bbbc']['f1']:.3f} / {r['bbbc']['centroid_f1']:.3f}", ""))
    if "frames_per_s" in r.get("speed", {}):
        v = r["speed"]
        rows.append((f"generalist inference + CNMF, {'x'.join(map(str, v['movie']))}, {v['threads']} threads: "
                     "frames/s, peak RSS MiB", f"{v['frames_per_s']:.0f}, {v['peak_rss_mib']:.0f}", ""))
    if "frames_per_s_keyframes_plus_segment" in r.get("infer", {}):
        rows.append(("inference 900x128x128 (keyframes + segment, TTA), frames/s",
                     f"{r['infer']['frames_per_s_keyframes_plus_segment']:.0f}", ""))
    for name, v in r.get("detr", {}).get("sim", {}).items():
        rows.append((f"simulated held-out seeds 20-22, {name}: F1 / median trace r / frames/s (no TTA)",
                     f"{v['heldout_f1']:.3f} / {v['median_trace_r'] or 0:.3f} / {v['frames_per_s_inference_no_tta']:.0f}", ""))
    for name, v in r.get("detr", {}).get("nf", {}).items():
        if isinstance(v, dict) and "f1" in v:
            rows.append((f"neurofinder-left test rows, {name} (same iterations): F1 (IoU / centroid)",
                         f"{v['f1']:.3f} / {v['centroid']['f1']:.3f}", ""))
    w = max(len(a) for a, _, _ in rows) if rows else 10
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:>15}  {c}")


if __name__ == "__main__":
    main()
