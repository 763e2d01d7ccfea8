"""Motion-correction benchmark: calflow vs Suite2p registration, frames/s and peak RSS.

Runs every case in its own subprocess and reads the child's peak RSS from ``os.wait4``
(ru_maxrss), so the numbers are per run and include imports. Cases, on
../shared/data/optinist-mouse2p/movie.tiff (2000 x 128 x 128 uint16):

* calflow rigid / piecewise on a raw.zarr ingested with MovieWriter (timed: template + registration
  + reading raw.zarr + writing motion.zarr, i.e. the whole ``correct_motion`` call);
* Suite2p 1.x ``registration_wrapper`` (rigid only, and nonrigid) on Suite2p's own int16 binary
  files (timed: reference image + registration + writing the registered binary), run with the
  Python of a separate venv that has suite2p (see docs/motion.md);
* calflow rigid / piecewise on the movie tiled to 10x the length (20000 frames) for RSS flatness.

Usage::

    python benchmarks/motion.py [--s2p-python /tmp/s2p-venv/bin/python] [--long-factor 10] [--repeat 3]

Prints a side-by-side table and writes benchmarks/out/motion.json. Heavy: several minutes on
2 cores. Nothing here is asserted by tests; the figures are measured, never hard-coded.
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
DEFAULT_MOVIE = ROOT / ".." / "shared" / "data" / "optinist-mouse2p" / "movie.tiff"
PATCH = 64  # calflow patch_size and Suite2p block_size (same 3 x 3 grid on 128 x 128 frames)
MAX_DEV = 5  # calflow max_deviation and Suite2p maxregshiftNR
THREADS = (1, 2)  # torch threads; each tool is compared at its faster setting


# ---------------------------------------------------------------------------------------------
# workers (run in a child process)
# ---------------------------------------------------------------------------------------------


def worker_calflow(args: argparse.Namespace) -> dict:
    from calflow.motion import correct_motion

    params = {"piecewise": bool(args.piecewise), "patch_size": PATCH, "overlap": PATCH // 2,
              "max_deviation": MAX_DEV, "device": "cpu", "num_threads": args.threads}
    t0, c0 = time.perf_counter(), time.process_time()
    stats = correct_motion(args.input, args.output, params=params, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_timed_s": cpu, "n_frames": stats["n_frames"],
            "crispness_after": stats["crispness_after"]}


def worker_suite2p(args: argparse.Namespace) -> dict:
    from suite2p_compat import stub_torchvision  # sibling module: benchmarks/ is on sys.path

    stub_torchvision()
    import logging

    import torch
    from suite2p.io import BinaryFile
    from suite2p.parameters import default_settings
    from suite2p.registration.register import registration_wrapper

    logging.disable(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_t, h, w = args.shape
    settings = default_settings()["registration"]
    settings.update({"nonrigid": bool(args.piecewise), "block_size": (PATCH, PATCH), "maxregshiftNR": MAX_DEV})
    t0, c0 = time.perf_counter(), time.process_time()
    with BinaryFile(Ly=h, Lx=w, filename=args.input, n_frames=n_t, write=False) as f_raw, \
            BinaryFile(Ly=h, Lx=w, filename=args.output, n_frames=n_t, write=True) as f_reg:
        out = registration_wrapper(f_reg, f_raw=f_raw, settings=settings, device=torch.device("cpu"))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(Path(args.output).with_suffix(".mean.npy"), np.asarray(out["meanImg"], dtype=np.float32))
    from importlib.metadata import version

    return {"seconds": seconds, "cpu_timed_s": cpu, "n_frames": n_t, "suite2p_version": version("suite2p"),
            "torch_version": torch.__version__}


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------


def peak_rss_self_mib() -> float:
    """VmHWM of this process's address space (MiB).

    ru_maxrss of a child is not used: on Linux it starts from the parent's RSS at fork time, so
    it would charge the orchestrator's memory to every child.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(cmd: list[str], result: Path) -> dict:
    """Run ``cmd`` as a child; its JSON result plus its peak RSS (MiB) and CPU seconds."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"benchmark child failed: {' '.join(cmd)}")
    out = json.loads(result.read_text())
    out["peak_rss_mib"] = out.pop("vm_hwm_mib")
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    return out


def ingest(movie: np.ndarray, store: Path, repeat: int = 1) -> None:
    from calflow.io import MovieWriter

    n_t = movie.shape[0]
    with MovieWriter(store, (n_t * repeat,) + movie.shape[1:], movie.dtype, fps=30.0, chunk_frames=100) as w:
        for _ in range(repeat):
            for a in range(0, n_t, 500):
                w.write(movie[a : a + 500])


def crisp(img: np.ndarray, margin: int = 8) -> float:
    from calflow.motion import crispness

    return crispness(img, margin)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--movie", type=Path, default=DEFAULT_MOVIE)
    ap.add_argument("--s2p-python", default="/tmp/s2p-venv/bin/python",
                    help="python of a venv with suite2p installed ('' to skip Suite2p)")
    ap.add_argument("--long-factor", type=int, default=10, help="tile the movie this many times for RSS flatness")
    ap.add_argument("--repeat", type=int, default=3, help="runs per 2000-frame case; the fastest is kept")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "motion.json")
    ap.add_argument("--worker", choices=["calflow", "suite2p"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--piecewise", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--shape", type=int, nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        fn = worker_calflow if args.worker == "calflow" else worker_suite2p
        res = fn(args)
        res["vm_hwm_mib"] = peak_rss_self_mib()
        args.result.write_text(json.dumps(res))
        return

    import tifffile
    import torch
    import zarr

    if not args.movie.exists():
        sys.exit(f"{args.movie}: movie not found (the benchmark needs ../shared/data)")
    movie = tifffile.imread(args.movie)
    n_t, h, w = movie.shape
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="calflow-bench-") as tmpdir:
        tmp = Path(tmpdir)
        raw = tmp / "raw.zarr"
        ingest(movie, raw)
        raw_mean = movie.astype(np.float64).mean(axis=0)
        me = [sys.executable, str(Path(__file__).resolve())]

        import shutil

        auto_threads = max(1, len(os.sched_getaffinity(0)) - 1)  # calflow's num_threads: 0 on this machine
        cases: dict[str, dict] = {}  # name -> {"cmd", "result", "output", "tool", "mode", "frames"}

        def add_cases(tool: str, store: Path, out_suffix: str) -> None:
            for piecewise in (False, True):
                for threads in THREADS:
                    mode = "piecewise" if piecewise else "rigid"
                    name = f"{tool}_{mode}_t{threads}"
                    cases[name] = {"tool": tool, "mode": mode, "frames": n_t, "output": tmp / f"{name}{out_suffix}",
                                   "result": tmp / f"{name}.json", "store": store, "piecewise": piecewise,
                                   "threads": threads}

        add_cases("calflow", raw, ".zarr")
        if args.s2p_python and Path(args.s2p_python).exists():
            s2p_in = tmp / "data_raw.bin"
            # what Suite2p's own TIFF conversion does: uint16 -> int16 by halving
            s2p_movie = (movie // 2).astype(np.int16) if movie.dtype == np.uint16 else movie.astype(np.int16)
            s2p_movie.tofile(s2p_in)
            del s2p_movie
            add_cases("suite2p", s2p_in, ".bin")
        else:
            print(f"Suite2p skipped: {args.s2p_python!r} not found", file=sys.stderr)
        if args.long_factor > 1:
            long_raw = tmp / "raw_long.zarr"
            ingest(movie, long_raw, repeat=args.long_factor)
            for piecewise in (False, True):
                mode = "piecewise" if piecewise else "rigid"
                name = f"calflow_{mode}_long"
                cases[name] = {"tool": "calflow", "mode": mode, "frames": n_t * args.long_factor,
                               "output": tmp / f"{name}.zarr", "result": tmp / f"{name}.json",
                               "store": long_raw, "piecewise": piecewise, "threads": auto_threads}

        def run_case(c: dict) -> dict:
            if c["tool"] == "calflow":
                cmd = me + ["--worker", "calflow"]
            else:
                cmd = [args.s2p_python, str(Path(__file__).resolve()), "--worker", "suite2p",
                       "--shape", str(n_t), str(h), str(w)]
            cmd += ["--input", str(c["store"]), "--output", str(c["output"]), "--result", str(c["result"]),
                    "--piecewise", str(int(c["piecewise"])), "--threads", str(c["threads"])]
            r = run_child(cmd, c["result"])
            if c["tool"] == "calflow":
                mean_img = np.asarray(zarr.open_group(c["output"], mode="r")["mean_after"])
                shutil.rmtree(c["output"], ignore_errors=True)
            else:
                mean_img = np.load(Path(c["output"]).with_suffix(".mean.npy"))
                if movie.dtype == np.uint16:
                    mean_img = mean_img * 2.0  # undo the halving, so crispness compares
                c["tool_label"] = f"suite2p {r.get('suite2p_version', '')}".strip()
                Path(c["output"]).unlink(missing_ok=True)
            r["crispness"] = crisp(mean_img)
            return r

        # runs interleaved across tools (the machine may be shared), fastest of N kept per case;
        # the 10x-long cases run once
        runs: dict[str, list[dict]] = {k: [] for k in cases}
        for _ in range(max(1, args.repeat)):
            for name, c in cases.items():
                if runs[name] and c["frames"] != n_t:
                    continue
                runs[name].append(run_case(c))
        for name, c in cases.items():
            rs = runs[name]
            best = min(rs, key=lambda r: r["seconds"])
            rows.append({"tool": c.get("tool_label", c["tool"]), "mode": c["mode"], "frames": c["frames"],
                         "threads": c["threads"] or "auto",
                         "frames_per_s": c["frames"] / best["seconds"], "seconds": best["seconds"],
                         "median_frames_per_s": c["frames"] / float(np.median([r["seconds"] for r in rs])),
                         # CPU seconds of the timed call (all threads): less sensitive to other load
                         "frames_per_cpu_s": c["frames"] / min(r["cpu_timed_s"] for r in rs),
                         "peak_rss_mib": max(r["peak_rss_mib"] for r in rs), "cpu_s": best["cpu_s"],
                         "runs_seconds": [round(r["seconds"], 3) for r in rs],
                         "crispness_mean_img": best["crispness"] if c["frames"] == n_t else None})

    def pick(tool: str, mode: str, frames: int) -> dict | None:
        """The tool's fastest thread setting for this case."""
        found = [r for r in rows if r["tool"].startswith(tool) and r["mode"] == mode and r["frames"] == frames]
        return max(found, key=lambda r: r["frames_per_s"]) if found else None

    comparison = {}
    for mode in ("rigid", "piecewise"):
        c, s = pick("calflow", mode, n_t), pick("suite2p", mode, n_t)
        cl = pick("calflow", mode, n_t * args.long_factor)
        same = [r for r in rows if r["tool"] == "calflow" and r["mode"] == mode and r["frames"] == n_t
                and cl is not None and r["threads"] == cl["threads"]]
        comparison[mode] = {
            "speedup_vs_suite2p": c["frames_per_s"] / s["frames_per_s"] if c and s else None,
            "cpu_efficiency_vs_suite2p": (
                max(r["frames_per_cpu_s"] for r in rows if r["tool"] == c["tool"] and r["mode"] == mode
                    and r["frames"] == n_t)
                / max(r["frames_per_cpu_s"] for r in rows if r["tool"] == s["tool"] and r["mode"] == mode
                      and r["frames"] == n_t)) if c and s else None,
            "rss_ratio_vs_suite2p": c["peak_rss_mib"] / s["peak_rss_mib"] if c and s else None,
            "rss_growth_10x_movie_mib": cl["peak_rss_mib"] - same[0]["peak_rss_mib"] if same else None,
        }
    report = {
        "movie": str(args.movie.resolve()), "shape": [n_t, h, w], "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "patch_size": PATCH, "max_deviation": MAX_DEV,
        "raw_crispness_mean_img": crisp(raw_mean), "rows": rows, "comparison": comparison,
        "targets": "rigid and piecewise >= 2x Suite2p frames/s; peak RSS below Suite2p and flat at 10x length",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"\nmovie {args.movie.name} {n_t}x{h}x{w}; raw mean-image crispness {report['raw_crispness_mean_img']:.0f}")
    head = (f"{'tool':<16}{'mode':<11}{'thr':>5}{'frames':>7}{'frames/s':>10}{'median f/s':>12}{'f/CPU-s':>9}"
            f"{'peak RSS MiB':>14}{'crispness':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        cr = f"{r['crispness_mean_img']:.0f}" if r["crispness_mean_img"] is not None else "-"
        print(f"{r['tool']:<16}{r['mode']:<11}{r['threads']!s:>5}{r['frames']:>7}{r['frames_per_s']:>10.1f}"
              f"{r['median_frames_per_s']:>12.1f}{r['frames_per_cpu_s']:>9.1f}{r['peak_rss_mib']:>14.1f}{cr:>11}")
    for mode, c in comparison.items():
        parts = [f"{k}={v:.2f}" for k, v in c.items() if v is not None]
        print(f"{mode}: " + ", ".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
