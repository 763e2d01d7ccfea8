"""Decoding calibration: spontaneous-PC removal with and without trial tails, false positives
without a signal (also with trial tails leaking everywhere), and the power of the two p-values.

    nice -n 19 python benchmarks/decode_calibration.py [--signal-seeds 5] [--seeds 200]
        [--permutations 99] [--power-seeds 100]

All on the simulator's true calcium (calflow.simulate; 30 Hz, calcium decay 0.6 s), decoded by
``calflow.decode.decode`` with every classifier (logistic regression refit-tested, the tree
ensembles fold-tested; small ensembles: 50 trees, 20 boosting iterations, 50 AdaBoost rounds).

* ``signal`` (per seed): 40 cells, 4 single targets, a 1,500-frame spontaneous block (50 s) and
  then ~92 trials (3,000 frames). Accuracy with no PCs removed, and with 4 spontaneous PCs
  removed that were taken from (a) the spontaneous block (an epoch: true spontaneous activity),
  (b) the gaps between trials with no guard (the old definition, on the session cut to start 1 s
  before its first trial: response tails count as spontaneous), (c) the same gaps behind the
  default 2 s guard. Acceptance: (a) changes logistic accuracy by <= 0.03 in every seed.
* ``null`` (``--seeds`` seeds per scenario): trial labels drawn at random from 4 classes,
  independent of the activity. ``no signal``: 20 cells without stimulation (1,500 frames), the
  trial times of a stimulated session. ``trial tails``: 40 cells whose 4 targets are stimulated
  on every trial (35-45 frames apart, less than 3 decay times: every window, baseline and gap
  holds the previous trials' tails), 4 PCs removed from the unguarded gaps, and again with
  the default guard. False-positive rate = share of seeds with p <= 0.05 (Wilson 95% interval).
* ``power`` (``--power-seeds``): a weak signal (targets driven at 2 Hz instead of 15 Hz, 20 cells,
  ~46 trials); share of seeds where logistic regression's refit p and fold p are <= 0.05.

Prints tables and writes benchmarks/out/decode_calibration.json. Nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from calflow.decode import CLASSIFIERS, Trials, decode, trials_from_truth, wilson_ci
from calflow.simulate import SimParams, simulate

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"
BASE = {"classifiers": list(CLASSIFIERS), "refit_test": ["logistic"], "n_estimators": 50, "max_iter": 20,
        "adaboost_estimators": 50}
LEAD = 1500


def signal(seeds: int) -> list[dict]:
    rows = []
    for seed in range(seeds):
        truth = simulate(SimParams(n_frames=LEAD + 3000, height=128, width=128, n_cells=40, n_targets=4, n_pairs=0,
                                   stim_start_frame=LEAD), seed=seed)
        tr = trials_from_truth(truth)
        off = LEAD - 30
        crop = Trials(tr.onset - off, tr.stop - off, tr.label)
        cases = {
            "none": (truth.calcium, Trials(tr.onset, tr.stop, tr.label, np.array([[0, LEAD]])), {"remove_spontaneous_pcs": 0}),
            "spontaneous block": (truth.calcium, Trials(tr.onset, tr.stop, tr.label, np.array([[0, LEAD]])),
                                  {"remove_spontaneous_pcs": 4}),
            "gaps, no guard": (truth.calcium[:, off:], crop, {"remove_spontaneous_pcs": 4, "spont_guard_s": 0.0}),
            "gaps, 2 s guard": (truth.calcium[:, off:], crop, {"remove_spontaneous_pcs": 4}),
        }
        for case, (x, trials, kw) in cases.items():
            r = decode(x, trials, truth.fps, {**BASE, **kw, "seed": seed})
            row = {"seed": seed, "case": case, "n_trials": r["n_trials"], "pcs_removed": r["pcs_removed"],
                   "spontaneous_frames": r["spontaneous_frames"], "dummy": r["classifiers"]["dummy"]["accuracy"],
                   "accuracy": {n: r["classifiers"][n]["accuracy"] for n in CLASSIFIERS},
                   "p": {n: r["classifiers"][n]["p_value"] for n in CLASSIFIERS}}
            rows.append(row)
            print(f"signal seed {seed} {case:<18} PCs {row['pcs_removed']} ({row['spontaneous_frames']} frames) "
                  + " ".join(f"{n[:8]} {a:.3f}" for n, a in row["accuracy"].items()), flush=True)
    return rows


def rate(pvals: list[float], alpha: float = 0.05) -> dict:
    k, n = int(sum(p <= alpha for p in pvals)), len(pvals)
    return {"count": k, "n": n, "rate": k / max(n, 1), "ci95": list(wilson_ci(k, n)),
            "mean_p": float(np.mean(pvals)) if pvals else None}


def null(seeds: int, permutations: int) -> dict:
    base = simulate(SimParams(n_frames=1500, height=96, width=96, n_cells=20, n_targets=4, n_pairs=0), seed=100)
    times = trials_from_truth(base)
    pvals: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        quiet = simulate(SimParams(n_frames=1500, height=96, width=96, n_cells=20, n_targets=0), seed=1000 + seed)
        tails = simulate(SimParams(n_frames=1500, height=128, width=128, n_cells=40, n_targets=4, n_pairs=0,
                                   trial_frames=5, iti_frames=30, iti_jitter_frames=10), seed=2000 + seed)
        tt = trials_from_truth(tails)
        cases = {
            "no signal": (quiet.calcium, Trials(times.onset, times.stop, rng.choice(list("abcd"), len(times))), {}),
            "trial tails, no guard": (tails.calcium, Trials(tt.onset, tt.stop, rng.choice(list("abcd"), len(tt))),
                                      {"remove_spontaneous_pcs": 4, "spont_guard_s": 0.0}),
        }
        cases["trial tails, 2 s guard"] = (cases["trial tails, no guard"][0], cases["trial tails, no guard"][1],
                                          {"remove_spontaneous_pcs": 4})
        for case, (x, trials, kw) in cases.items():
            r = decode(x, trials, 30.0, {**BASE, "n_permutations": permutations, "seed": seed, **kw})
            if r["status"] != "ok":
                continue
            for name in CLASSIFIERS:
                c = r["classifiers"][name]
                pvals.setdefault(case, {}).setdefault(f"{name} ({c['p_method']})", []).append(c["p_value"])
            pvals[case].setdefault("pcs_removed", []).append(r["pcs_removed"])
        if (seed + 1) % 20 == 0:
            print(f"null: {seed + 1} seeds", flush=True)
    out = {}
    for case, by in pvals.items():
        pcs = by.pop("pcs_removed")
        out[case] = {name: rate(p) for name, p in by.items()}
        out[case]["pcs_removed_mean"] = float(np.mean(pcs))
    return out


def power(seeds: int, permutations: int) -> dict:
    refit, folds = [], []
    for seed in range(seeds):
        truth = simulate(SimParams(n_frames=1500, height=96, width=96, n_cells=20, n_targets=4, n_pairs=0,
                                   stim_gain=2.0), seed=3000 + seed)
        r = decode(truth.calcium, trials_from_truth(truth), truth.fps,
                   {"classifiers": ["logistic"], "refit_test": ["logistic"], "n_permutations": permutations,
                    "seed": seed, "remove_spontaneous_pcs": 0})
        refit.append(r["classifiers"]["logistic"]["p_value"])
        folds.append(r["classifiers"]["logistic"]["fold_p_value"])
    return {"refit": rate(refit), "folds": rate(folds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signal-seeds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=200, help="seeds per null scenario (0 = skip)")
    ap.add_argument("--permutations", type=int, default=99, help="refit-test permutations of the null and power parts")
    ap.add_argument("--power-seeds", type=int, default=100, help="0 = skip")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with threadpool_limits(1):
        out = {"signal": signal(args.signal_seeds), "null": null(args.seeds, args.permutations) if args.seeds else {},
               "power": power(args.power_seeds, args.permutations) if args.power_seeds else {}}
    out["permutations"] = args.permutations
    out["seconds"] = time.perf_counter() - t0

    print(f"\n{'case':<20} " + " ".join(f"{n:>22}" for n in CLASSIFIERS) + "   (accuracy: mean over seeds, "
          "[min, max] change vs none)")
    ref = {(r["seed"], n): r["accuracy"][n] for r in out["signal"] if r["case"] == "none" for n in CLASSIFIERS}
    accept = []
    for case in dict.fromkeys(r["case"] for r in out["signal"]):
        rows = [r for r in out["signal"] if r["case"] == case]
        cells = []
        for n in CLASSIFIERS:
            d = [r["accuracy"][n] - ref[(r["seed"], n)] for r in rows]
            cells.append(f"{np.mean([r['accuracy'][n] for r in rows]):.3f} [{min(d):+.2f},{max(d):+.2f}]")
        print(f"{case:<20} " + " ".join(f"{c:>22}" for c in cells))
        if case == "spontaneous block":
            accept = [abs(r["accuracy"]["logistic"] - ref[(r["seed"], "logistic")]) for r in rows]
    if accept:
        out["acceptance"] = {"max_abs_logistic_change": max(accept), "passed": max(accept) <= 0.03}
        print(f"acceptance (4 PCs of true spontaneous activity change logistic accuracy by <= 0.03): "
              f"max |change| {max(accept):.3f} -> {'passed' if max(accept) <= 0.03 else 'FAILED'}")
    for case, by in out["null"].items():
        print(f"\nno signal, {case} (mean PCs removed {by['pcs_removed_mean']:.1f}): p <= 0.05 in")
        for name, r in by.items():
            if name != "pcs_removed_mean":
                print(f"  {name:<34} {r['count']:>3}/{r['n']} = {r['rate']:.3f} "
                      f"(95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}), mean p {r['mean_p']:.3f}")
    if out["power"]:
        print("\nweak signal, logistic regression: p <= 0.05 in")
        for name, r in out["power"].items():
            print(f"  {name:<6} test {r['count']:>3}/{r['n']} = {r['rate']:.2f} (95% CI "
                  f"{r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "decode_calibration.json").write_text(json.dumps(out, indent=2))
    print(f"\n{out['seconds']:.0f} s; benchmarks/out/decode_calibration.json")


if __name__ == "__main__":
    main()
