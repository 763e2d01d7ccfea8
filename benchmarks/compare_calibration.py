"""Calibration of the animal-level condition comparison on simulated animals (figures, not tests).

Every simulated animal is recorded twice, condition A (w_gain 1) and B (w_gain ``gain``), each
session with its own nuisance (calflow.simulate.draw_nuisance at scale 1: expression, photons per
unit, neuropil, FOV re-placement, bleaching, stimulation artefact, off-target excitation). The
design and every analysis setting are frozen: the demo's ``demo.sim`` / ``trials_per_pattern``
from config/config.yaml (8 single-target + 2 paired patterns, 10 trials each) and the defaults
of ``compare`` and ``stim_maps``. Maps are the model-free stimulus-triggered averages
(calflow.stim_maps, the same math on the rendered movie; no motion, so that motion correction is
not what is measured).

Per animal it stores the effect d (statistic of B minus A) and the within-animal trial-level
"session difference" p-value. Then:

* false-positive rate: ``--null-experiments`` independent null experiments (gain 1) of
  ``--null-animals`` animals each, the exact sign-flip test at alpha 0.05; the rate with its 95%
  Clopper-Pearson CI, beside the trial-level diagnostic's rate on the same animals;
* power at each ``--gains`` for ``--animals`` animals: ``--power-draws`` experiments drawn without
  replacement within an experiment from a pool of ``--pool`` simulated animals per gain (draws
  share animals, so this estimates power by resampling the pool);
* the per-animal effect's SD and mean at every gain.

Seeds: anatomy seeds ``100000 + 10000 * k + i`` for gain index k (null = 0) and animal i, never
used while choosing the demo design (which used 1000-1005). Writes benchmarks/out/
compare_calibration.json and a power figure; prints a table.

    python benchmarks/compare_calibration.py                                  # full: ~80 min on one core
    python benchmarks/compare_calibration.py --null-experiments 20 --pool 24  # quick look

More null experiments on fresh seeds, then one table over all of them (rejections add; the
effect mean and SD pool):

    python benchmarks/compare_calibration.py --null-start 200 --null-experiments 200 --gains \
        --diagnostic-permutations 0 --out benchmarks/out/compare_calibration_null2.json
    python benchmarks/compare_calibration.py --merge benchmarks/out/compare_calibration_null*.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from calflow import simulate as sim  # noqa: E402
from calflow.compare import SETS, CompareParams, Source, Stratum, analyse_source, sign_flip_test  # noqa: E402
from calflow.io import block_average  # noqa: E402
from calflow.stim_maps import StimMapsParams, trial_weights  # noqa: E402
from calflow.stimulation import find_trials  # noqa: E402

OUT = ROOT / "benchmarks" / "out"


def frozen_design() -> sim.SimParams:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["demo"]
    return sim.study_params(**{**cfg["sim"], "trials_per_pattern": cfg.get("trials_per_pattern", 10), "motion": False})


def session_stratum(p: sim.SimParams, seed: int, aseed: int, nuisance_seed: int, sp: StimMapsParams) -> Stratum:
    q = dataclasses.replace(p, **sim.draw_nuisance(nuisance_seed, 1.0, base=p))
    truth = sim.simulate(q, seed, anatomy_seed=aseed)
    movie = sim.render_frames(truth, threads=1).astype(np.float64)
    stim = truth.stim
    labels = np.concatenate([stim, ~stim.any(axis=1, keepdims=True)], axis=1).astype(np.float32)
    tr = find_trials(labels, 1)
    w = trial_weights(tr.start, tr.stop, len(movie), sp.baseline_frames, sp.tail_frames)
    x = block_average(movie, sp.downsample, np.float64)
    maps = (w @ x.reshape(len(x), -1)).reshape(-1, *x.shape[1:])
    ids = [str(j + 1) for j in range(stim.shape[1])]
    return Stratum(maps, ["+".join(ids[j] for j in pat) for pat in tr.pattern], np.zeros(len(tr.pattern), np.int64),
                   [f"seed{seed}"])


def animal_effect(p: sim.SimParams, gain: float, aseed: int, cp: CompareParams, sp: StimMapsParams) -> dict:
    strata = {("m", "A"): session_stratum(p, 2 * aseed + 1, aseed, 3 * aseed + 1, sp),
              ("m", "B"): session_stratum(dataclasses.replace(p, w_gain=gain), 2 * aseed + 2, aseed, 3 * aseed + 2, sp)}
    r = analyse_source(Source("stim_maps", strata, "signed", "sta", 1), "A", "B", cp)
    a = r["animals"][0]
    return {"anatomy_seed": aseed, "effect": a["effect"], "effect_by_set": a["effect_by_set"],
            "session_difference_p": a.get("session_difference_p")}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    lo = stats.beta.ppf((1 - level) / 2, k, n - k + 1) if k else 0.0
    hi = stats.beta.ppf((1 + level) / 2, k + 1, n - k) if k < n else 1.0
    return [float(lo), float(hi)]


def null_summary(d0: np.ndarray, trial_p: np.ndarray, *, first_seed: int | list[int]) -> dict:
    """False-positive rate of the sign-flip test over null experiments ``d0`` (experiments x
    animals, per-animal effects), with its Clopper-Pearson CI; keeps ``d0`` for merging."""
    n_exp, n_an = d0.shape
    pv = np.array([sign_flip_test(row)["p"] for row in d0]) if n_exp else np.zeros(0)
    rej = int(np.sum(pv < 0.05))
    return {"experiments": int(n_exp), "animals_per_experiment": int(n_an),
            "rejections": rej, "false_positive_rate": rej / max(n_exp, 1),
            "ci95": clopper_pearson(rej, max(n_exp, 1)),
            # the test's size for continuous symmetric effects: sign patterns come in +- pairs
            "exact_level": 2 * int(0.05 * 2**n_an / 2) / 2**n_an,
            "trial_level_false_positive_rate": float(np.mean(trial_p < 0.05)) if len(trial_p) else None,
            "trial_level_sessions": int(len(trial_p)), "trial_level_p": [float(x) for x in trial_p],
            "effect_sd": float(d0.std(ddof=1)) if d0.size > 1 else None,
            "effect_mean": float(d0.mean()) if d0.size else None,
            "first_anatomy_seed": first_seed, "effects": d0.tolist()}


def merge_null(files: list[Path], out_path: Path) -> int:
    """One null table over the experiments of several runs on disjoint seeds. Rejections and
    experiments add (the experiments are independent); the effect mean and SD pool by counts, so a
    run made before per-experiment effects were kept still merges."""
    runs = [json.loads(Path(f).read_text())["null"] for f in files]
    n_an = {r["animals_per_experiment"] for r in runs}
    if len(n_an) != 1:
        raise SystemExit(f"{', '.join(map(str, files))}: different animals per experiment {sorted(n_an)}")
    n_exp = sum(r["experiments"] for r in runs)
    rej = sum(r["rejections"] for r in runs)
    m = [r["experiments"] * r["animals_per_experiment"] for r in runs]
    mean = sum(k * r["effect_mean"] for k, r in zip(m, runs, strict=True)) / sum(m)
    ss = sum((k - 1) * r["effect_sd"] ** 2 + k * (r["effect_mean"] - mean) ** 2 for k, r in zip(m, runs, strict=True))
    tl = [(r["trial_level_false_positive_rate"], r["trial_level_sessions"]) for r in runs
          if r.get("trial_level_false_positive_rate") is not None]
    n0 = {"experiments": n_exp, "animals_per_experiment": n_an.pop(), "rejections": rej,
          "false_positive_rate": rej / n_exp, "ci95": clopper_pearson(rej, n_exp),
          "exact_level": runs[0]["exact_level"], "effect_mean": mean, "effect_sd": math.sqrt(ss / (sum(m) - 1)),
          "trial_level_false_positive_rate": (sum(a * b for a, b in tl) / sum(b for _, b in tl)) if tl else None,
          "trial_level_sessions": sum(b for _, b in tl),
          "first_anatomy_seed": [r.get("first_anatomy_seed", 100000) for r in runs]}
    out = {"merged_from": [str(f) for f in files], "null": n0}
    out_path = out_path if out_path != OUT / "compare_calibration.json" else OUT / "compare_calibration_null_merged.json"
    out_path.write_text(json.dumps(out, indent=2))
    print(f"null: {rej}/{n_exp} experiments of {n0['animals_per_experiment']} animals rejected at 0.05 -> rate "
          f"{n0['false_positive_rate']:.3f}, 95% CI {n0['ci95'][0]:.3f}-{n0['ci95'][1]:.3f} (exact size "
          f"{n0['exact_level']:.3f}); per-animal effect {mean:+.4f} (SD {n0['effect_sd']:.4f}); wrote {out_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--null-experiments", type=int, default=200)
    ap.add_argument("--null-animals", type=int, default=8)
    ap.add_argument("--null-start", type=int, default=0,
                    help="index of the first null experiment (its animals' seeds follow those of the ones before)")
    ap.add_argument("--diagnostic-permutations", type=int, default=200,
                    help="trial-level permutations of the within-animal diagnostic (0 = off, faster)")
    ap.add_argument("--merge", type=Path, nargs="*", default=None,
                    help="combine the null experiments of these JSON files (disjoint seeds) into one table")
    ap.add_argument("--gains", type=float, nargs="*", default=[1.5, 1.8])
    ap.add_argument("--animals", type=int, nargs="*", default=[4, 6, 8, 12])
    ap.add_argument("--pool", type=int, default=80, help="simulated animals per gain for the power estimate")
    ap.add_argument("--power-draws", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT / "compare_calibration.json")
    args = ap.parse_args(argv)
    if args.merge:
        return merge_null(args.merge, args.out)
    logging.disable(logging.WARNING)
    p = frozen_design()
    cp = CompareParams(n_bootstrap=0, diagnostic_permutations=args.diagnostic_permutations)
    sp = StimMapsParams()
    t0 = time.perf_counter()
    out: dict = {"design": p.to_dict(), "compare": dataclasses.asdict(cp), "stim_maps": dataclasses.asdict(sp),
                 "maps": "stimulus-triggered average (calflow.stim_maps math), no motion", "nuisance_scale": 1.0}
    # --- null: independent experiments (--null-experiments 0 skips them, --gains with no value the power)
    first = 100000 + args.null_start * args.null_animals
    null = [animal_effect(p, 1.0, first + i, cp, sp) for i in range(args.null_experiments * args.null_animals)]
    d0 = np.array([x["effect"] for x in null]).reshape(args.null_experiments, args.null_animals)
    trial_p = np.array([x["session_difference_p"] for x in null if x["session_difference_p"] is not None])
    out["null"] = null_summary(d0, trial_p, first_seed=first)
    # --- power: a pool of animals per gain
    rng = np.random.default_rng(7)
    out["power"] = {}
    for gi, gain in enumerate(args.gains, 1):
        pool = [animal_effect(p, gain, 100000 + 10000 * gi + i, cp, sp) for i in range(args.pool)]
        d = np.array([x["effect"] for x in pool])
        row = {"pool": args.pool, "effect_mean": float(d.mean()), "effect_sd": float(d.std(ddof=1)),
               "fraction_positive": float(np.mean(d > 0)),
               "by_set": {s: float(np.mean([x["effect_by_set"][s] for x in pool])) for s in SETS}, "power": {}}
        for n in args.animals:
            ps = [sign_flip_test(d[rng.choice(len(d), n, replace=False)])["p"] for _ in range(args.power_draws)]
            row["power"][str(n)] = float(np.mean(np.array(ps) < 0.05))
        out["power"][str(gain)] = row
    out["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    n0 = out["null"]
    if args.null_experiments:
        print(f"null: {n0['rejections']}/{n0['experiments']} experiments of {n0['animals_per_experiment']} animals "
              f"rejected at 0.05 -> rate {n0['false_positive_rate']:.3f}, 95% CI {n0['ci95'][0]:.3f}-"
              f"{n0['ci95'][1]:.3f} (trial-level diagnostic on the same sessions: "
              f"{n0['trial_level_false_positive_rate']})")
    print(f"{'gain':>5} {'mean d':>8} {'sd d':>7} " + " ".join(f"{'n=' + str(n):>6}" for n in args.animals))
    for g, row in out["power"].items():
        print(f"{g:>5} {row['effect_mean']:8.4f} {row['effect_sd']:7.4f} "
              + " ".join(f"{row['power'][str(n)]:6.2f}" for n in args.animals))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        for g, row in out["power"].items():
            ax.plot(args.animals, [row["power"][str(n)] for n in args.animals], "o-", label=f"W x {g}")
        ax.axhline(0.05, c="grey", lw=0.8, ls="--")
        ax.set_xlabel("animals")
        ax.set_ylabel("power (sign-flip test, alpha 0.05)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    print(f"wrote {args.out} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
