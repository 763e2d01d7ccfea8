"""Decoding benchmark: accuracy vs the dummy with a real signal, p-value calibration without one.

    python benchmarks/decode_calibration.py [--seeds 200] [--permutations 99] [--signal-seeds 3]
        [--signal-classifiers logistic,random_forest,hist_gradient_boosting]

* Signal: simulated photostimulation (calflow.simulate, 3000 frames at 30 fps, 40 cells, 4 single
  targets -> ~90 trials), decoded from the true calcium with the decode defaults (5 folds, 100
  permutations) with 0 and 4 spontaneous PCs removed; per seed, k and classifier: accuracy, dummy
  accuracy, p.
* No signal: the same kind of traces (the simulator's calcium of a session) with trial labels
  drawn at random (independent of the activity); logistic regression, 5 folds; the false-positive
  rate is the share of seeds with p <= 0.05 (and <= 0.01), with a Wilson 95% interval.

Prints a table and writes benchmarks/out/decode_calibration.json. Nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from calflow.decode import Trials, decode, trials_from_truth, wilson_ci
from calflow.simulate import SimParams, simulate

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200, help="no-signal seeds (0 = signal part only)")
    ap.add_argument("--permutations", type=int, default=99, help="permutations per no-signal seed")
    ap.add_argument("--signal-seeds", type=int, default=3)
    ap.add_argument("--signal-classifiers", default="logistic,random_forest,hist_gradient_boosting",
                    help="comma-separated classifiers of the signal part (the tree ensembles are the slow ones)")
    args = ap.parse_args()
    out: dict = {"signal": [], "null": {}}
    t0 = time.perf_counter()
    with threadpool_limits(1):
        sim = SimParams(n_frames=3000, height=128, width=128, n_cells=40, n_targets=4, n_pairs=0)
        for seed in range(args.signal_seeds):
            truth = simulate(sim, seed=seed)
            for k in (0, 4):  # spontaneous PCs removed: 0 (default) and 4 (a small population loses signal)
                r = decode(truth.calcium, trials_from_truth(truth), truth.fps,
                           {"remove_spontaneous_pcs": k, "n_estimators": 50, "max_iter": 30, "seed": seed,
                            "classifiers": args.signal_classifiers.split(",")})
                for name, c in r["classifiers"].items():
                    out["signal"].append({"seed": seed, "pcs_removed": k, "classifier": name, "n_trials": r["n_trials"],
                                          "accuracy": c["accuracy"], "ci95": c["ci95"], "p_value": c.get("p_value"),
                                          "dummy": r["classifiers"]["dummy"]["accuracy"]})
                    print(f"signal seed {seed} k={k} {name}: accuracy {c['accuracy']:.3f} p {c.get('p_value')}",
                          flush=True)
        base = simulate(SimParams(n_frames=1500, height=96, width=96, n_cells=20, n_targets=4, n_pairs=0), seed=100)
        trials = trials_from_truth(base)
        pvals = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            shuffled = Trials(trials.onset, trials.stop, rng.choice(np.unique(trials.label), size=len(trials)))
            truth = simulate(SimParams(n_frames=1500, height=96, width=96, n_cells=20, n_targets=0), seed=1000 + seed)
            r = decode(truth.calcium, shuffled, truth.fps, {"classifiers": ["logistic"],
                                                            "n_permutations": args.permutations, "seed": seed,
                                                            "remove_spontaneous_pcs": 2})
            if r["status"] == "ok":
                pvals.append(r["classifiers"]["logistic"]["p_value"])
            if (seed + 1) % 20 == 0:
                print(f"no signal: {seed + 1} seeds, p <= 0.05 in {sum(q <= 0.05 for q in pvals)}", flush=True)
    p = np.array(pvals)
    out["null"]["permutations"] = args.permutations
    for alpha in (0.05, 0.01) if len(p) else ():
        k = int((p <= alpha).sum())
        out["null"][str(alpha)] = {"false_positives": k, "n": len(p), "rate": k / len(p), "ci95": list(wilson_ci(k, len(p)))}
    out["null"]["mean_p"] = float(p.mean()) if len(p) else None
    out["seconds"] = time.perf_counter() - t0
    print(f"{'seed':>4} {'PCs':>3} {'classifier':<24} {'trials':>6} {'accuracy':>9} {'95% CI':>15} {'dummy':>6} {'p':>7}")
    for s in out["signal"]:
        pv = "-" if s["p_value"] is None else f"{s['p_value']:.4f}"
        print(f"{s['seed']:>4} {s['pcs_removed']:>3} {s['classifier']:<24} {s['n_trials']:>6} {s['accuracy']:>9.3f} "
              f"{s['ci95'][0]:>7.3f}-{s['ci95'][1]:<7.3f} {s['dummy']:>6.3f} {pv:>7}")
    for alpha in ("0.05", "0.01") if len(p) else ():
        n = out["null"][alpha]
        print(f"no signal: p <= {alpha}: {n['false_positives']}/{n['n']} = {n['rate']:.3f} "
              f"(95% CI {n['ci95'][0]:.3f}-{n['ci95'][1]:.3f}); mean p {out['null']['mean_p']:.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("decode_calibration.json" if len(p) else "decode_signal.json")).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
