"""Seed-to-seed spread of the per-animal Grad-CAM effect on the demo (a figure, not a test).

Retrains the 5-member classifier ensembles of some demo animals with other training seeds (the
demo's own motion-corrected stores, config/config.yaml frozen: the ``classify`` and ``gradcam``
sections), computes their Grad-CAM maps and each animal's effect (statistic of POD3 minus POD0,
calflow.compare with its defaults), and prints, per animal, the effect for every seed and its SD
beside the demo's own seed (config ``seed``, 0). Run it after the demo (``snakemake --cores 2``):

    python benchmarks/compare_seed_spread.py --animals m1,m3,m4,m6 --seeds 1,2

Models and maps go to ``--work`` (reused when present); the table to
benchmarks/out/compare_seed_spread.json. One animal and seed: ~2 min on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from calflow.classify import train_group  # noqa: E402
from calflow.compare import CompareParams, analyse_source, load_source  # noqa: E402
from calflow.config import classify_model_params  # noqa: E402
from calflow.gradcam import session_gradcam  # noqa: E402


def animal_effect(stores: list[Path]) -> float:
    r = analyse_source(load_source("gradcam", stores), "POD0", "POD3",
                       CompareParams(n_bootstrap=0, diagnostic_permutations=0))
    return float(r["animals"][0]["effect"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("."), help="the demo's working directory (holds results/)")
    ap.add_argument("--animals", default="m1,m3,m4,m6")
    ap.add_argument("--seeds", default="1,2", help="training seeds besides the demo's own (0)")
    ap.add_argument("--work", type=Path, default=Path("results/seed_spread"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "compare_seed_spread.json")
    args = ap.parse_args(argv)
    logging.disable(logging.INFO)
    torch.set_num_threads(1)  # more threads than free cores make OpenMP barriers wait (docs/motion.md)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cls, base_seed = classify_model_params(cfg["classify"]), int(cfg.get("seed", 0))
    res = args.workdir / "results"
    rows = {}
    for an in args.animals.split(","):
        entries = [{"session": f"{an}_{c}", "condition": c, "motion": str(res / f"{an}_{c}/motion.zarr"),
                    "stim_log": str(res / f"demo/{an}_{c}/stim_log.csv"),
                    "targets": str(res / f"demo/{an}_{c}/targets.csv")} for c in ("POD0", "POD3")]
        effects = {base_seed: animal_effect([res / f"{an}_{c}/gradcam.zarr" for c in ("POD0", "POD3")])}
        for seed in (int(s) for s in args.seeds.split(",")):
            od = args.work / f"{an}_s{seed}"
            if not (od / "model.pt").exists():
                train_group(entries, entries[0]["targets"], cls, od, seed=seed, group=an)
            stores = []
            for e in entries:
                st = od / f"{e['session']}_gradcam.zarr"
                if not st.exists():
                    session_gradcam(e, od / "model.pt", cfg["gradcam"], st)
                stores.append(st)
            effects[base_seed + seed] = animal_effect(stores)
        v = np.array(list(effects.values()))
        rows[an] = {"effects": {str(k): x for k, x in effects.items()}, "mean": float(v.mean()),
                    "sd": float(v.std(ddof=1))}
        print(f"{an}: " + ", ".join(f"seed {k} {x:+.4f}" for k, x in effects.items())
              + f"  SD {rows[an]['sd']:.4f}", flush=True)
    sds = np.array([r["sd"] for r in rows.values()])
    demo = json.loads((res / "compare" / "POD0_vs_POD3.json").read_text())
    out = {"animals": rows, "pooled_sd": float(np.sqrt(np.mean(sds**2))), "demo_effect": demo["effect"],
           "members": cls.get("members"), "seeds": [base_seed] + [base_seed + int(s) for s in args.seeds.split(",")]}
    out["pooled_sd_over_demo_effect"] = out["pooled_sd"] / abs(out["demo_effect"])
    out["sd_over_demo_effect"] = {an: r["sd"] / abs(out["demo_effect"]) for an, r in rows.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"pooled seed-to-seed SD of the per-animal effect {out['pooled_sd']:.4f} = "
          f"{out['pooled_sd_over_demo_effect']:.2f} x the demo's effect {out['demo_effect']:+.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
