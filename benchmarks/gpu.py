"""Every stage's time on the GPU beside the CPU: the first GPU run is one command (a figure, not a test).

Runs the workflow on a small copy of the demo (the demo's config, the sessions of ``--animals``,
default two animals = four sessions) once per device, with every stage's ``device`` key
(motion, segment, cnmf, classify, gradcam, virtual_stain) set to that device, and prints each rule's wall
time per job from the jobs' own logs (``calflow.runner``: "rule ... finished in ... s"), CPU
beside CUDA. Without a CUDA device it says so and runs the CPU side only (``--devices cpu`` is the
default there), so the script itself is exercised on any machine:

    python benchmarks/gpu.py                      # CUDA when present: cpu and cuda; else cpu only
    python benchmarks/gpu.py --devices cuda       # the GPU side only

Writes benchmarks/out/gpu.json. The rules run with ``--cores`` (default 2); each job as the
workflow runs it (its ``threads``), so the figures are what a user's run gets, start-up included.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEVICE_SECTIONS = ("motion", "segment", "cnmf", "classify", "gradcam", "virtual_stain")
_FINISHED = re.compile(r"INFO: rule (\S+) finished in ([\d.]+) s")


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def write_workdir(workdir: Path, device: str, animals: list[str]) -> None:
    """The demo's config with every stage on ``device`` and the sheet cut to ``animals``."""
    (workdir / "config").mkdir(parents=True)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for section in DEVICE_SECTIONS:
        cfg[section]["device"] = device
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with open(ROOT / "config" / "sessions.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    keep = [r for r in rows if r["animal"] in animals]
    if not keep:
        raise SystemExit(f"no session of animals {animals} in config/sessions.tsv")
    with open(workdir / "config" / "sessions.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(keep)
    shutil.copy(ROOT / "config" / "virtual_stain.tsv", workdir / "config" / "virtual_stain.tsv")


def rule_seconds(workdir: Path) -> dict[str, list[float]]:
    """rule -> wall seconds of each of its jobs (``results/logs/{rule}/*.log``)."""
    out: dict[str, list[float]] = collections.defaultdict(list)
    for log in sorted((workdir / "results" / "logs").rglob("*.log")):
        for rule, seconds in _FINISHED.findall(log.read_text(errors="ignore")):
            out[rule].append(float(seconds))
    return dict(out)


def run_device(device: str, animals: list[str], cores: int, keep: Path | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"calflow_gpu_{device}_")) if keep is None else keep / device
    write_workdir(work, device, animals)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work),
                           "--cores", str(cores)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rules = rule_seconds(work)
    if keep is None:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
    return {"returncode": proc.returncode, "wall_s": round(wall, 1),
            "rules": {r: {"jobs": len(v), "seconds_per_job": round(sum(v) / len(v), 2)} for r, v in rules.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default=None, help="comma-separated: cpu,cuda (default: both with CUDA, else cpu)")
    ap.add_argument("--animals", default="m1,m2")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="keep each device's run under this directory")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu.json")
    args = ap.parse_args(argv)
    has_cuda = cuda_available()
    devices = args.devices.split(",") if args.devices else (["cpu", "cuda"] if has_cuda else ["cpu"])
    if "cuda" in devices and not has_cuda:
        print("skipped cuda: no CUDA device (torch.cuda.is_available() is False); run on a GPU node")
        devices = [d for d in devices if d != "cuda"]
    elif not has_cuda:
        print("no CUDA device here (torch.cuda.is_available() is False): the CPU side only; "
              "on a GPU node the same command times every stage on CUDA too")
    res = {"cuda_available": has_cuda, "animals": args.animals.split(","), "cores": args.cores, "devices": {}}
    for device in devices:
        res["devices"][device] = run_device(device, args.animals.split(","), args.cores, args.keep)
    rules = sorted({r for d in res["devices"].values() for r in d["rules"]})
    print(f"{'rule':30s}" + "".join(f" {d + ' s/job':>12s}" for d in devices))
    for rule in rules:
        cells = [res["devices"][d]["rules"].get(rule, {}).get("seconds_per_job") for d in devices]
        print(f"{rule:30s}" + "".join(f" {c:12.2f}" if c is not None else f" {'-':>12s}" for c in cells))
    print("whole run (wall s)" + " " * 12 + "".join(f" {res['devices'][d]['wall_s']:12.1f}" for d in devices))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    return max((d["returncode"] for d in res["devices"].values()), default=0)


if __name__ == "__main__":
    raise SystemExit(main())
