"""Validation of classify -> gradcam -> compare on simulated animals (no motion, so the stages are
measured, not motion correction).

For every seed: one animal (cells, targets, W from ``anatomy_seed``) recorded in two conditions,
A (w_gain 1) and B (w_gain ``--gain``: strengthened W) for the effect seeds, A and A' (both
w_gain 1) for the null seeds. The classifier is trained on both sessions (calflow's per-animal
model), Grad-CAM maps + ZNCC per session, then the trial-level permutation test. Reported per
seed: held-out accuracy per condition, Spearman between the single-target ZNCC and the true
similarity (ZNCC of the targets' expected response maps, each cell weighted by its expected
calcium response: calflow.gradcam.true_response_maps; also with every cell alike, and the ZNCC of
the targets' W rows), Spearman of the movie's evoked maps (no network) against the truth, the
contrast D and its p-value. ``--keep DIR`` saves each session's gradcam.zarr, ground truth and
evoked maps for later analysis.

Simulated designs (``--design``): ``criteria`` (default; 18,000 frames of 96 x 96, 32 cells, 8 single
targets, connection_prob 0.4, W in 0.1-0.3: targets share driven cells, strengthening W changes
their similarity, ~70 trials per pattern and session), ``strong_w`` (the first design: 3000 frames,
24 cells, 6 targets, connection_prob 0.25, W in 0.2-0.8: x1.8 barely changes the similarity) and
``demo`` (the demo's 900 x 128 x 128, 40 cells, 8 targets + 8 pairs, connection_prob 0.1: most target
pairs share no driven cell, so the true similarity is mostly 0 by construction). ``--truth-only``
prints each design's true effect (mean off-diagonal ZNCC of the expected response maps at w_gain 1
and ``--gain``) without training anything.

    python benchmarks/gradcam_validation.py --effect-seeds 5 --null-seeds 20 --permutations 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy.stats import spearmanr

from calflow.classify import load_fold_models, train_group
from calflow.compare import compare_conditions
from calflow.gradcam import (
    expected_response_maps,
    offdiag,
    session_gradcam,
    true_response_maps,
    zncc,
    zncc_matrix,
)
from calflow.io import MovieWriter, open_group
from calflow.simulate import SimParams, write_session

OUT = Path(__file__).resolve().parent / "out"
DEMO = SimParams(n_frames=900, height=128, width=128, n_cells=40, n_targets=8)
# Designed for the criteria: connectivity exists to be recovered and strengthening it changes the
# functional similarity. connection_prob 0.4 over 32 cells: each of the 8 targets drives ~13 cells
# and two targets share ~5; weak weights (0.1-0.3): a target's own response dominates its map at
# w_gain 1, so w_gain 1.8 makes shared driven cells visibly more important (the mean off-diagonal
# ZNCC of the expected response maps rises by ~0.1). 18,000 frames (10 min at 30 Hz), 8 single
# targets, no pairs: ~70 trials per pattern and session. The demo's sparse W (0.1 over 40 cells)
# gives most target pairs no shared driven cell, so its "true similarity" is mostly 0 by construction.
CRITERIA = SimParams(n_frames=18000, height=96, width=96, n_cells=32, n_targets=8, n_pairs=0,
                     connection_prob=0.4, w_min=0.1, w_max=0.3)
# The first design (W up to 0.8): the driven cells already dominate the maps at w_gain 1, so x1.8
# raises the true similarity by only ~0.02 (docs/classify.md).
STRONG_W = SimParams(n_frames=3000, height=96, width=96, n_cells=24, n_targets=6, n_pairs=0,
                     connection_prob=0.25)
DESIGNS = {"demo": DEMO, "criteria": CRITERIA, "strong_w": STRONG_W}


def make_session(tmp: Path, name: str, condition: str, w_gain: float, seed: int, anatomy_seed: int,
                 sim: SimParams) -> dict:
    files = write_session(tmp / "demo" / name, dataclasses.replace(sim, w_gain=w_gain, motion=False), seed=seed,
                          anatomy_seed=anatomy_seed, threads=1)
    movie = tifffile.imread(files["movie"])
    store = tmp / name / "motion.zarr"
    with MovieWriter(store, movie.shape, movie.dtype, fps=sim.fps, chunk_frames=100) as w:
        w.write(movie)
    return {"session": name, "condition": condition, "motion": str(store), "stim_log": str(files["stim_log"]),
            "targets": str(files["targets"]), "truth": str(files["ground_truth"]), "movie_tif": str(files["movie"])}


def truth_similarity(store: Path, truth: Path, context: int, evoked: np.ndarray) -> dict[str, float]:
    """Spearman of the single-target ZNCC against the true similarity (ZNCC of the expected
    response maps, with each cell's calcium response; and with every cell alike), against the
    W-row similarity, and of the input-level evoked maps (no network) against the truth;
    ``map_vs_truth``: the mean over targets of the ZNCC of a target's signed map with its expected
    response map (positive: the map is high where the response is; negative: inverted)."""
    g = open_group(store)
    names = list(g.attrs["patterns"])
    single = [i for i, n in enumerate(names) if "+" not in n]
    z = offdiag(np.asarray(g["zncc"][:])[np.ix_(single, single)])
    gt = np.load(truth)
    cells = [int(gt["target_cells"][int(names[i])]) for i in single]
    layer = g.attrs["layer_shape"]
    truth_maps = true_response_maps(gt, cells, layer, context)
    truth_z = offdiag(zncc_matrix(truth_maps))
    maps = np.asarray(g["pattern_maps"][:])[single]
    unit_z = offdiag(zncc_matrix(true_response_maps(gt, cells, layer, context, kinetics=False)))
    evoked_z = offdiag(zncc_matrix(evoked[[int(names[i]) for i in single]]))
    return {"spearman_response_maps": float(spearmanr(z, truth_z).statistic),
            "spearman_unit_response_maps": float(spearmanr(z, unit_z).statistic),
            "spearman_w_rows": float(spearmanr(z, offdiag(zncc_matrix(gt["W"][cells]))).statistic),
            "spearman_evoked": float(spearmanr(evoked_z, truth_z).statistic),
            "map_vs_truth": float(np.mean([zncc(m, t) for m, t in zip(maps, truth_maps, strict=True)]))}


def evoked_maps(movie_tif: Path, truth: Path, layer_shape: list[int], context: int) -> np.ndarray:
    """Input-level evoked map of each single target (P, ly, lx): mean over its trials of the movie
    block-averaged to the layer's resolution over the trial's input windows minus the 10 frames
    before the trial. What the data shows without a network (a diagnostic, not a calflow output)."""
    gt = np.load(truth)
    movie = tifffile.memmap(movie_tif, mode="r")  # paged in trial by trial
    ly, lx = layer_shape
    f = movie.shape[1] // ly
    out = np.zeros((len(gt["target_cells"]), ly, lx))
    count = np.zeros(len(out))
    pats = gt["patterns"]
    for a, b, k in zip(gt["trial_start"], gt["trial_stop"], gt["trial_pattern"], strict=True):
        members = [int(j) for j in np.atleast_1d(pats[k]) if int(j) >= 0]
        if len(members) != 1 or a < 10:
            continue
        m = movie[max(0, a - context): b + context].astype(np.float64).mean(0) - movie[a - 10: a].astype(np.float64).mean(0)
        out[members[0]] += m[: ly * f, : lx * f].reshape(ly, f, lx, f).mean((1, 3))
        count[members[0]] += 1
    return out / np.maximum(count, 1)[:, None, None]


def run_seed(seed: int, gain_b: float, section: dict, sim: SimParams, n_perm: int,
             gradcam: dict | None = None, keep: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        entries = [make_session(tmp, f"a{seed}_A", "A", 1.0, 1000 + seed, 5000 + seed, sim),
                   make_session(tmp, f"a{seed}_B", "B", gain_b, 2000 + seed, 5000 + seed, sim)]
        t1 = time.perf_counter()
        m = train_group(entries, entries[0]["targets"], section, tmp / "classifier", group=f"a{seed}")
        t2 = time.perf_counter()
        stores, sims = [], []
        context = int(load_fold_models(tmp / "classifier" / "model.pt")[1]["arch"]["context"])
        for e in entries:
            st = tmp / e["session"] / "gradcam.zarr"
            session_gradcam(e, tmp / "classifier" / "model.pt", gradcam or {}, st)
            stores.append(st)
            layer = list(open_group(st).attrs["layer_shape"])
            evoked = evoked_maps(Path(e["movie_tif"]), Path(e["truth"]), layer, context)
            sims.append(truth_similarity(st, Path(e["truth"]), context, evoked))
            if keep is not None:
                dst = keep / e["session"]
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(st, dst / "gradcam.zarr")
                shutil.copy(e["truth"], dst / "ground_truth.npz")
                np.save(dst / "evoked.npy", evoked)
        res = compare_conditions(stores, "A", "B", {"n_permutations": n_perm, "n_bootstrap": 200, "seed": seed},
                                 [tmp / "classifier" / "metrics.json"])
        res.pop("_matrices")
        return {"seed": seed, "gain_b": gain_b,
                "accuracy": {c: m["conditions"][c]["test_accuracy"] for c in ("A", "B")},
                "train_accuracy": {c: m["conditions"][c]["train_accuracy"] for c in ("A", "B")},
                **{k: [s[k] for s in sims] for k in sims[0]},
                "zncc_mean": {c: res["conditions"][c]["zncc_mean_offdiag"] for c in ("A", "B")},
                "difference": res["difference_mean_offdiag"], "p": res["p_permutation"],
                "seconds": {"simulate": t1 - t0, "train": t2 - t1, "gradcam_compare": time.perf_counter() - t2}}


def truth_effect(gain: float, seeds: int = 5, context: int = 3) -> int:
    """Mean off-diagonal ZNCC of the expected response maps at w_gain 1 and ``gain``, per design."""
    from calflow.simulate import evoked_calcium, simulate

    print(f"{'design':10s} {'w_gain 1':>9s} {'w_gain ' + str(gain):>11s} {'effect':>8s}")
    for name, sim in DESIGNS.items():
        z = []
        for s in range(seeds):
            t = simulate(dataclasses.replace(sim, n_frames=200, motion=False), seed=s, anatomy_seed=5000 + s)
            cells = list(t.target_cells)
            shape = (sim.height // 4, sim.width // 4)  # the Grad-CAM layer (downsample 2, depth 2)
            resp = evoked_calcium(t.g, t.spike_weight, sim.fps, sim.trial_frames, t.delay_frames, context)
            z.append([float(np.mean(offdiag(zncc_matrix(expected_response_maps(t.W, cells, t.footprints, g, shape,
                                                                               resp)))))
                      for g in (1.0, gain)])
        z = np.array(z)
        print(f"{name:10s} {z[:, 0].mean():9.3f} {z[:, 1].mean():11.3f} {np.mean(z[:, 1] - z[:, 0]):+8.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--null-seeds", type=int, default=10)
    ap.add_argument("--effect-seeds", type=int, default=3)
    ap.add_argument("--null-start", type=int, default=100, help="first null seed")
    ap.add_argument("--effect-start", type=int, default=0, help="first effect seed")
    ap.add_argument("--gain", type=float, default=1.8)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--design", choices=sorted(DESIGNS), default="criteria",
                    help="simulated animal: the demo's or one designed for the criteria")
    ap.add_argument("--layer", help="gradcam.layer (default: the config default)")
    ap.add_argument("--score", choices=["vs_none", "logit"], help="gradcam.score (default: the config default)")
    ap.add_argument("--method", choices=["gradcam", "hirescam"], help="gradcam.method (default: the config default)")
    ap.add_argument("--set", nargs="*", default=[], help="classify keys, e.g. mask=targets iterations=400")
    ap.add_argument("--sim", nargs="*", default=[], help="SimParams overrides of the design, e.g. connection_prob=0.4")
    ap.add_argument("--keep", type=Path, help="copy each session's gradcam.zarr + ground truth + evoked maps here")
    ap.add_argument("--truth-only", action="store_true", help="only the designs' true effect (no training)")
    ap.add_argument("--out", type=Path, default=OUT / "gradcam_validation.json", help="the JSON written")
    args = ap.parse_args(argv)
    if args.truth_only:
        return truth_effect(args.gain)
    torch.set_num_threads(1)
    section: dict = {"device": "cpu"}
    for kv in args.set:
        k, v = kv.split("=", 1)
        section[k] = json.loads(v) if v[:1].isdigit() or v[:1] in "-[" else v
    sim = dataclasses.replace(DESIGNS[args.design], **{k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.sim)})
    gradcam = {k: v for k, v in (("layer", args.layer), ("score", args.score), ("method", args.method)) if v is not None}
    rows = []
    for kind, seeds, gain in (("effect", range(args.effect_start, args.effect_start + args.effect_seeds), args.gain),
                              ("null", range(args.null_start, args.null_start + args.null_seeds), 1.0)):
        for s in seeds:
            r = run_seed(s, gain, section, sim, args.permutations, gradcam, args.keep)
            r["kind"] = kind
            rows.append(r)
            print(f"{kind:6s} seed {s:3d}  acc A {r['accuracy']['A']:.3f} B {r['accuracy']['B']:.3f}  "
                  f"Spearman(truth) {r['spearman_response_maps'][0]:+.2f} {r['spearman_response_maps'][1]:+.2f}  "
                  f"(unit cells {np.mean(r['spearman_unit_response_maps']):+.2f}, W rows "
                  f"{np.mean(r['spearman_w_rows']):+.2f}, evoked {np.mean(r['spearman_evoked']):+.2f}, map vs truth {np.mean(r['map_vs_truth']):+.2f})  D {r['difference']:+.4f}  p {r['p']:.4f}  "
                  f"train {r['seconds']['train']:.0f} s", flush=True)
    eff = [r for r in rows if r["kind"] == "effect"]
    nul = [r for r in rows if r["kind"] == "null"]
    summary = {
        "classify": section, "gain": args.gain, "design": args.design, "sim": args.sim, "gradcam": gradcam,

        "effect_detected_p_lt_0.01": f"{sum(r['p'] < 0.01 for r in eff)}/{len(eff)}",
        "null_p_gt_0.05": f"{sum(r['p'] > 0.05 for r in nul)}/{len(nul)}",
        "mean_accuracy": float(np.mean([v for r in rows for v in r["accuracy"].values()])),
        "min_accuracy": float(np.min([v for r in rows for v in r["accuracy"].values()])),
        **{f"mean_{k}": float(np.nanmean([v for r in rows for v in r[k]]))
           for k in ("spearman_response_maps", "spearman_unit_response_maps", "spearman_w_rows", "spearman_evoked",
                     "map_vs_truth")},
        "min_spearman_response_maps": float(np.nanmin([v for r in rows for v in r["spearman_response_maps"]])),
        "sessions_spearman_ge_0.7": f"{sum(v >= 0.7 for r in rows for v in r['spearman_response_maps'])}/{2 * len(rows)}",
    }
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
