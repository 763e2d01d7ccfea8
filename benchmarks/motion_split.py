"""Split motion correction (``motion.split_frames``): measured job times on a scaled 512 x 512 movie,
and the wall time they give for a 40,000 x 512 x 512 session with K = 1, 4 and 16 chunk jobs.

Measured (each job in its own Python process, as Snakemake runs it; wall, CPU and peak RSS of each):

* the one-job path (``correct_motion``) on a simulated ``--frames`` x 512 x 512 uint16 movie (rigid
  drift + jitter of a scene of Gaussian cells, Poisson noise), stored like ingest stores it (100-frame
  chunks);
* the split path on the same movie: the template job, ``--chunks`` chunk jobs (one after another: this
  machine has 2 cores) and the gather; its motion.zarr is compared with the one-job path's, array by
  array;
* a bare job start (``import torch`` and calflow's motion stage), decoding raw.zarr once and checking the
  CRC-32C of its chunk files once.

Scaled to N = ``--target-frames`` (default 40,000) frames, from these measurements only:

* per-frame registration time ``c`` = the chunk jobs' seconds inside the function / frames;
* template job = its measured seconds - decoding the chunks its sample touched + decoding the chunks
  the same sample touches in N frames (``_read_sample`` decodes every chunk it takes a frame from);
* gather = its measured seconds - checking n frames' chunk checksums + checking N frames' (it reads
  every chunk file once), the rest (linking chunks, small arrays) taken as fixed;
* K = 1 is the one-job path: job start + template + c * N. K > 1: job start + template, then K chunk
  jobs side by side, each job start + c * ceil(N / K) (on nodes as fast as this machine's one job),
  then job start + gather; ``--queue-s`` per job stage is added for the cluster's queueing and
  Snakemake's polling (3 stages split, 1 without).

Usage::

    python benchmarks/motion_split.py [--frames 800] [--chunks 4] [--target-frames 40000] [--queue-s 30]

Prints a table and writes benchmarks/out/motion_split.json. Heavy: about 5 minutes on 2 cores at
800 frames. Nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
H = W = 512
CHUNK = 100  # ingest.chunk_frames default
PARAMS = {"device": "cpu"}  # the defaults otherwise: max_shift 15, 64-px patches (15 x 15 grid), batch capped at 12


# ---------------------------------------------------------------------------------------------
# workers (each run in a child process, like a Snakemake job)
# ---------------------------------------------------------------------------------------------


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    from calflow.motion import stage

    imported = time.perf_counter() - t0
    t1 = time.perf_counter()
    d = Path(args.dir)
    if args.worker == "start":
        out = {}
    elif args.worker == "decode":  # decoding every chunk (the template's sample) / checking every checksum (gather)
        from calflow.io import MovieReader
        from calflow.motion.split import _verify_chunks

        r = MovieReader(d / "raw.zarr")
        t = time.perf_counter()
        out = {"frames": sum(b.shape[0] for _, b in r.iter_blocks())}
        out["decode_s"] = time.perf_counter() - t
        t = time.perf_counter()
        _verify_chunks(r)
        out["checksum_s"] = time.perf_counter() - t
    elif args.worker == "one":
        out = stage.correct_motion(d / "raw.zarr", d / "one.zarr", params=PARAMS, progress=False)
    elif args.worker == "template":
        out = {"plan": stage.motion_template(d / "raw.zarr", d / "template.zarr", params=PARAMS,
                                             split_frames=args.split).__dict__}
    elif args.worker == "chunk":
        out = stage.motion_chunk(d / "raw.zarr", d / "template.zarr", d / f"part{args.index}.zarr", args.index,
                                 params=PARAMS, progress=False)
    else:
        from calflow.motion.split import read_plan

        n = read_plan(d / "template.zarr").n_chunks
        out = stage.motion_gather(d / "raw.zarr", d / "template.zarr", [d / f"part{k}.zarr" for k in range(n)],
                                  d / "split.zarr", params=PARAMS)
    return {"import_s": imported, "inner_s": time.perf_counter() - t1, "result": out}


def run_job(name: str, tmp: Path, *extra: str) -> dict:
    """One job in a child process: wall (from the parent), CPU, peak RSS, the child's own timings."""
    result = tmp / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name.split(":")[0], "--dir", str(tmp),
           "--result", str(result), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"benchmark job failed: {' '.join(cmd)}")
    out = json.loads(result.read_text())
    out.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime)
    print(f"  {name:<10} wall {wall:7.1f} s  inner {out['inner_s']:7.1f} s  CPU {out['cpu_s']:7.1f} s  "
          f"peak RSS {out['vm_hwm_mib']:6.0f} MiB", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# the scaled movie and the model
# ---------------------------------------------------------------------------------------------


def simulate(store: Path, n: int, seed: int = 0) -> None:
    """n x 512 x 512 uint16: a scene of Gaussian cells on a smooth background, shifted per frame
    (slow drift + jitter, sub-pixel, by Fourier phase), Poisson noise; written in 100-frame chunks."""
    from scipy import ndimage

    from calflow.io import MovieWriter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    scene = ndimage.gaussian_filter(rng.standard_normal((H, W)), 12) * 40 + 300
    for cy, cx in rng.uniform(0, [H, W], (400, 2)):
        r = rng.uniform(3, 5)
        scene += rng.uniform(100, 400) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    spec = np.fft.rfft2(scene)
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.rfftfreq(W)[None, :]
    drift = np.cumsum(rng.normal(0, 0.05, (n, 2)), axis=0)
    shifts = np.clip(drift + rng.normal(0, 1.0, (n, 2)), -8, 8)
    with MovieWriter(store, (n, H, W), np.uint16, fps=30.0, chunk_frames=CHUNK, attrs={"source": "simulated"}) as w:
        for a in range(0, n, 50):
            block = []
            for dy, dx in shifts[a : a + 50]:
                img = np.fft.irfft2(spec * np.exp(-2j * np.pi * (fy * dy + fx * dx)), s=(H, W))
                block.append(rng.poisson(np.clip(img, 0, None)))
            w.write(np.asarray(block, dtype=np.uint16))


def chunks_touched(n_frames: int, template_frames: int, chunk: int) -> int:
    """Zarr chunks the template's sample reads (calflow.motion.template._read_sample's frame choice)."""
    idx = np.unique(np.linspace(0, n_frames, min(template_frames, n_frames) + 1, dtype=np.int64)[:-1])
    return len(np.unique(idx // chunk))


def same_motion(a: Path, b: Path) -> bool:
    """Every array of the two motion.zarr equal (the movies compared chunk by chunk)."""
    import zarr

    from calflow.io import MovieReader

    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names = sorted(k for k in ga.keys() if k != "movie")
    if names != sorted(k for k in gb.keys() if k != "movie"):
        return False
    if not all(np.array_equal(np.asarray(ga[k]), np.asarray(gb[k])) for k in names):
        return False
    ra, rb = MovieReader(a), MovieReader(b)
    return ra.shape == rb.shape and all(np.array_equal(x, rb[s : s + len(x)]) for s, x in ra.iter_blocks())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=800, help="frames of the scaled movie (512 x 512)")
    ap.add_argument("--chunks", type=int, default=4, help="chunk jobs of the measured split run")
    ap.add_argument("--target-frames", type=int, default=40000, help="frames of the session estimated")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16], help="chunk jobs in the estimate")
    ap.add_argument("--queue-s", type=float, default=30.0,
                    help="s per job stage for queueing and Snakemake's polling (0: none)")
    ap.add_argument("--tmp", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "motion_split.json")
    ap.add_argument("--recompute", type=Path, default=None,
                    help="recompute the estimate from this JSON's measurements (runs nothing)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--split", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = worker(args)
        res["vm_hwm_mib"] = _vm_hwm_mib()
        args.result.write_text(json.dumps(res, default=str))
        return

    if args.recompute:  # the model again from a saved run's measurements (no jobs run)
        measured = json.loads(args.recompute.read_text())["measured"]
    else:
        measured = measure(args.frames, args.chunks, args.tmp)
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_end": os.getloadavg()},
           "measured": measured}
    if args.recompute:
        out["machine"] = json.loads(args.recompute.read_text())["machine"]
    out["estimate"] = {"frames": args.target_frames, "queue_s_per_stage": args.queue_s,
                       **{basis: estimate(measured, basis, args.target_frames, args.ks, args.queue_s)
                          for basis in ("wall", "cpu")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    report(out)
    print(f"\nwrote {args.out}")


def measure(n: int, chunks: int, tmp_root: Path | None) -> dict:
    """Simulate the scaled movie and run every job on it (see the module doc)."""
    split = math.ceil(n / chunks / CHUNK) * CHUNK
    with tempfile.TemporaryDirectory(prefix="calflow-split-", dir=tmp_root) as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        simulate(tmp / "raw.zarr", n)
        print(f"simulated {n} x {H} x {W} in {time.perf_counter() - t0:.0f} s; jobs:", flush=True)
        jobs = {"start": run_job("start", tmp), "decode": run_job("decode", tmp), "one": run_job("one", tmp),
                "template": run_job("template", tmp, "--split", str(split))}
        plan = jobs["template"]["result"]["plan"]
        for k in range(plan["n_chunks"]):
            jobs[f"chunk{k}"] = run_job(f"chunk:{k}", tmp, "--index", str(k))
        jobs["gather"] = run_job("gather", tmp)
        identical = same_motion(tmp / "one.zarr", tmp / "split.zarr")
    keep = ("wall_s", "inner_s", "import_s", "cpu_s", "vm_hwm_mib")
    return {"frames": n, "frame_shape": [H, W], "chunk_frames": CHUNK, "split_frames": split,
            "n_chunks": plan["n_chunks"], "params": PARAMS, "split_equals_one_job": identical,
            "decode_s": jobs["decode"]["result"]["decode_s"], "checksum_s": jobs["decode"]["result"]["checksum_s"],
            "jobs": {k: {x: v[x] for x in keep} for k, v in jobs.items()}}


def estimate(m: dict, basis: str, n_target: int, ks: list[int], queue_s: float) -> dict:
    """The model of the module doc on one basis: ``wall`` (each job's seconds inside its function, as
    measured on this shared machine) or ``cpu`` (each job's CPU seconds less a bare job start's: its
    torch thread plus its reading/compressing thread, what one job costs on an otherwise idle node)."""
    n, jobs = m["frames"], m["jobs"]
    chunk_jobs = [jobs[f"chunk{k}"] for k in range(m["n_chunks"])]
    start = jobs["start"]["wall_s"]  # a job's interpreter + imports

    def busy(j: dict) -> float:
        return j["inner_s"] if basis == "wall" else j["cpu_s"] - jobs["start"]["cpu_s"]

    decode, check = m["decode_s"] / n, m["checksum_s"] / n
    c = sum(busy(j) for j in chunk_jobs) / n
    tf = 200  # motion.template_frames default
    tpl_fixed = busy(jobs["template"]) - decode * CHUNK * chunks_touched(n, tf, CHUNK)
    template = tpl_fixed + decode * CHUNK * chunks_touched(n_target, tf, CHUNK)
    gather_fixed = max(0.0, busy(jobs["gather"]) - check * n)
    gather = gather_fixed + check * n_target
    rows = []
    for k in ks:
        if k == 1:  # the one-job path
            rows.append({"k": 1, "template": None, "chunk": None, "gather": None,
                         "wall_s": start + template + c * n_target + queue_s,
                         "job_seconds": start + template + c * n_target})
            continue
        frames_per_job = math.ceil(n_target / k / CHUNK) * CHUNK
        stages = {"template": start + template, "chunk": start + c * frames_per_job, "gather": start + gather}
        rows.append({"k": k, **stages, "wall_s": sum(stages.values()) + 3 * queue_s,
                     "job_seconds": stages["template"] + k * start + c * n_target + stages["gather"]})
    for r in rows:
        r["speedup"] = rows[0]["wall_s"] / r["wall_s"]
    return {"model": {"job_start_s": start, "register_s_per_frame": c, "decode_s_per_frame": decode,
                      "checksum_s_per_frame": check, "template_fixed_s": tpl_fixed, "gather_fixed_s": gather_fixed,
                      "one_job_model_at_measured_frames_s": tpl_fixed + decode * CHUNK * chunks_touched(n, tf, CHUNK)
                      + c * n, "one_job_measured_s": busy(jobs["one"])},
            "rows": rows}


def report(out: dict) -> None:
    m = out["measured"]
    n = m["frames"]
    print(f"\nmeasured on {n} x {H} x {W} ({m['n_chunks']} chunk jobs of {m['split_frames']} frames; load average at "
          f"the end {out['machine']['load_avg_end'][0]:.1f}); split motion.zarr "
          f"{'bit-identical to' if m['split_equals_one_job'] else 'DIFFERS from'} the one-job run")
    print(f"{'job':<10} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13}")
    for name, j in m["jobs"].items():
        print(f"{name:<10} {j['wall_s']:8.1f} {j['cpu_s']:8.1f} {j['vm_hwm_mib']:13.0f}")
    est = out["estimate"]
    for basis in ("wall", "cpu"):
        md, rows = est[basis]["model"], est[basis]["rows"]
        print(f"\n[{basis} basis] job start {md['job_start_s']:.1f} s, registration {1e3 * md['register_s_per_frame']:.1f} "
              f"ms/frame, decoding {1e3 * md['decode_s_per_frame']:.2f} ms/frame, checksums "
              f"{1e3 * md['checksum_s_per_frame']:.2f} ms/frame, template fixed {md['template_fixed_s']:.1f} s, gather "
              f"fixed {md['gather_fixed_s']:.1f} s; one job at {n} frames: model "
              f"{md['one_job_model_at_measured_frames_s']:.1f} s, measured {md['one_job_measured_s']:.1f} s")
        print(f"estimate for {est['frames']} x {H} x {W} (+{est['queue_s_per_stage']:.0f} s queueing per job stage):")
        print(f"{'K':>3} {'template s':>11} {'chunk job s':>12} {'gather s':>9} {'wall':>9} {'job-hours':>10} "
              f"{'speed-up':>9}")
        for r in rows:
            cols = [f"{r[s]:.0f}" if r[s] is not None else "-" for s in ("template", "chunk", "gather")]
            print(f"{r['k']:>3} {cols[0]:>11} {cols[1]:>12} {cols[2]:>9} {_hm(r['wall_s']):>9} "
                  f"{r['job_seconds'] / 3600:10.2f} {r['speedup']:8.1f}x")


def _hm(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


if __name__ == "__main__":
    main()
