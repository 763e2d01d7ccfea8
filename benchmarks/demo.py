"""The demo's time from a fresh clone, per rule, beside a reference speed of the machine (a figure, not a test).

Clones this checkout's HEAD into a new directory, runs ``snakemake --cores N`` there (the README's
demo command) and prints the wall time, the CPU time of every process (user + sys, the snakemake
process and all its children), the largest process's peak RSS and, from the jobs' own logs
(``calflow.runner``: "process CPU ... s"), the CPU-seconds and job count per rule. Before and after
the run it times a fixed reference workload (100 training iterations of the demo's 5-member
classifier ensemble on random input, one thread: the kind of work that is half of the demo's CPU),
so that runs on a machine whose speed drifts can be compared: a run is comparable to another one
when their reference times are. Run it on an otherwise idle machine:

    python benchmarks/demo.py            # -> table, benchmarks/out/demo.json

Needs calflow and its dependencies installed (``bash install.sh``); the clone is removed unless
``--keep``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CPU = re.compile(r"process CPU ([\d.]+) s(?: \(\+ ([\d.]+) s in child)?")


def reference_seconds(iterations: int = 100) -> float:
    """CPU-seconds of ``iterations`` forward/backward/AdamW steps of the demo's classifier ensemble
    (5 members, 11 x 32 x 32 input, batch 16, one thread) on fixed random data."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from calflow.classify.model import init_ensemble

    torch.set_num_threads(1)
    arch = {"n_out": 9, "in_channels": 11, "frame_hw": [32, 32], "depth": 2, "width": 8, "dropout": 0.5,
            "context": 5, "reduce": 4, "members": 5}
    model = init_ensemble(arch, 0, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, 11, 32, 32, generator=g)
    y = (torch.rand(16, 5, 9, generator=g) > 0.8).float()
    loss = torch.nn.BCEWithLogitsLoss()
    for _ in range(5):  # warm-up
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    t0 = time.process_time()
    for _ in range(iterations):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    return time.process_time() - t0


def rule_cpu(workdir: Path) -> dict[str, dict[str, float]]:
    """Per rule: jobs and CPU-seconds (the job process and its children) from results/logs/{rule}/*.log."""
    out: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"jobs": 0, "cpu_s": 0.0})
    for log in sorted((workdir / "results" / "logs").rglob("*.log")):
        found = _CPU.findall(log.read_text(errors="ignore"))
        if found:
            own, child = found[-1]
            rule = log.relative_to(workdir / "results" / "logs").parts[0]
            out[rule]["jobs"] += 1
            out[rule]["cpu_s"] += float(own) + float(child or 0)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="where to clone (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the clone and its results")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "demo.json")
    args = ap.parse_args(argv)
    ref_before = reference_seconds()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="calflow_demo_"))
    clone = work / "calflow"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(args.cores)], cwd=clone,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ref_after = reference_seconds()
    report = clone / "results" / "report" / "index.html"
    rules = rule_cpu(clone)
    res = {"commit": commit, "cores": args.cores, "returncode": proc.returncode, "wall_s": round(wall, 1),
           "cpu_s": round(cpu, 1), "largest_process_rss_mib": round(after.ru_maxrss / 1024),
           "jobs": int(sum(r["jobs"] for r in rules.values())), "report_exists": report.is_file(),
           "reference_cpu_s": {"before": round(ref_before, 2), "after": round(ref_after, 2)},
           "rules": {k: {"jobs": int(v["jobs"]), "cpu_s": round(v["cpu_s"], 1)} for k, v in rules.items()}}
    print(f"demo at {commit}: rc {proc.returncode}, wall {wall // 60:.0f} min {wall % 60:.0f} s, CPU {cpu:.0f} s "
          f"(every process), largest process {res['largest_process_rss_mib']} MiB, {res['jobs']} jobs logged; "
          f"reference workload {ref_before:.2f} s before, {ref_after:.2f} s after")
    print(f"{'rule':30s} {'jobs':>5s} {'CPU s':>8s}")
    for name, r in res["rules"].items():
        print(f"{name:30s} {r['jobs']:5d} {r['cpu_s']:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work if args.workdir is None else clone, ignore_errors=True)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
