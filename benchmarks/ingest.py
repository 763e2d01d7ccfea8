"""Ingest benchmark: frames/s and peak RSS of TIFF -> raw.zarr, for a short and a long movie.

    python benchmarks/ingest.py                 # 400 and 4,000 frames of 512x512 uint16
    python benchmarks/ingest.py --frames 400 4000 16000 --size 512

The movies are simulated (calflow.simulate, motion on, realistic noise) once and cached under
benchmarks/out/cache/. Each ingest runs in its own subprocess so its peak RSS (ru_maxrss) is
its own (VmHWM of the child; ru_maxrss would carry the parent's size over the fork).
Prints a table and writes benchmarks/out/ingest.json. Peak RSS must not grow with the
number of frames (target: under 500 MB for 4,000 frames).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"

CHILD = r"""
import json, sys, time
from calflow.ingest import ingest
t0 = time.perf_counter()
info = ingest(sys.argv[1], sys.argv[2], fps=30.0)
dt = time.perf_counter() - t0
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "frames": info["frames"], "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def make_movie(frames: int, size: int) -> Path:
    from calflow.simulate import SimParams, write_session

    out = OUT / "cache" / f"sim_{frames}x{size}x{size}"
    if not (out / "movie.tif").exists():
        n_cells = max(10, int(40 * (size / 128) ** 2 * 0.8))
        params = SimParams(n_frames=frames, height=size, width=size, n_cells=n_cells)
        t0 = time.perf_counter()
        write_session(out, params, seed=1)
        print(f"simulated {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out / "movie.tif"


def run_one(movie: Path) -> dict:
    store = OUT / "cache" / f"{movie.parent.name}.raw.zarr"
    shutil.rmtree(store, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(movie), str(store)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["source_mb"] = movie.stat().st_size / 1e6
    res["store_mb"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e6
    shutil.rmtree(store, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[400, 4000])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2, help="runs per movie; the fastest is kept")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.frames:
        movie = make_movie(n, args.size)
        runs = [run_one(movie) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["seconds"])
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        best["frames_per_s"] = best["frames"] / best["seconds"]
        best["shape"] = [n, args.size, args.size]
        rows.append(best)
    print(f"\ningest TIFF -> raw.zarr ({args.size}x{args.size} uint16), {platform.node()}, "
          f"{len(__import__('os').sched_getaffinity(0))} cores")
    print(f"{'frames':>8} {'source MB':>10} {'zarr MB':>9} {'seconds':>8} {'frames/s':>9} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['frames']:>8} {r['source_mb']:>10.0f} {r['store_mb']:>9.0f} {r['seconds']:>8.1f} "
              f"{r['frames_per_s']:>9.0f} {r['peak_rss_mb']:>12.0f}")
    (OUT / "ingest.json").write_text(json.dumps({"benchmark": "ingest", "rows": rows}, indent=2))
    print(f"wrote {OUT / 'ingest.json'}")


if __name__ == "__main__":
    main()
