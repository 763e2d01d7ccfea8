"""Classifier memory benchmark: peak RSS of ``train_classifier`` and ``gradcam`` against the movie's length.

The rules of the house (DESIGN.md) say peak memory must not grow with the movie's length. Cases,
each in its own child process (``--worker``), on simulated sessions of the demo's frame size
(128 x 128, 40 cells, 8 targets, no motion; ``calflow.simulate.write_session`` streams the TIFF,
``calflow.ingest.ingest`` streams it into a motion.zarr, so no movie is ever held in RAM here):

* ``train_{N}``: ``calflow.classify.train_group`` on one session of N frames (the classify
  defaults with ``iterations: 50``, 1 torch thread, CPU): loading/normalising the movie, both folds'
  training and the held-out predictions of every frame;
* ``gradcam_{N}``: ``calflow.gradcam.session_gradcam`` on the same session with that model;
* ``train_demo``: the timing case, not a memory case: ``train_group`` with the default settings
  (400 iterations per fold, 1 thread) on a demo-sized animal (two sessions of 900 x 128 x 128,
  conditions w_gain 1.0 / 1.8), reporting the two folds' training seconds.

N = 2,000 and 20,000 by default (``--frames``). Peak RSS is the child's VmHWM (``benchmarks/motion.py``
``peak_rss_self_mib``; ``ru_maxrss`` of the child is recorded too, but on Linux it can start from the
parent's RSS at fork/exec). Seconds are wall time of the timed call inside the child.

Usage::

    nice -n 19 python benchmarks/classify_memory.py [--data /tmp/calflow-bench-classify] [--frames 2000 20000]

``--data`` keeps the simulated sessions between runs (e.g. to measure another checkout with
``PYTHONPATH=/path/to/old/src``). Prints a table (case, frames, peak RSS MiB, seconds) and writes
benchmarks/out/classify_memory.json (``--out``). Nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from motion import peak_rss_self_mib, run_child  # noqa: E402 - sibling benchmark's helpers

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 50
SECTION = {"iterations": ITERATIONS, "checkpoint_every": ITERATIONS, "device": "cpu", "num_threads": 1}


def sim_params(n_frames: int):
    from calflow.simulate import SimParams

    return SimParams(n_frames=n_frames, height=128, width=128, n_cells=40, n_targets=8, motion=False)


def make_session(data: Path, name: str, condition: str, n_frames: int, seed: int, w_gain: float = 1.0) -> dict:
    """Simulate (streamed TIFF) and ingest (streamed) one session; reuse it when already there."""
    from calflow.ingest import ingest
    from calflow.simulate import write_session

    sim_dir, store = data / "sim" / name, data / name / "motion.zarr"
    if not (sim_dir / "stim_log.csv").is_file():
        write_session(sim_dir, dataclasses.replace(sim_params(n_frames), w_gain=w_gain), seed=seed, anatomy_seed=7,
                      block_frames=200, threads=1)
    if not store.is_dir():
        ingest(sim_dir / "movie.tif", store, fps=30.0)
    return {"session": name, "condition": condition, "motion": str(store), "stim_log": str(sim_dir / "stim_log.csv"),
            "targets": str(sim_dir / "targets.csv")}


# ---------------------------------------------------------------------------------------------
# workers (children)
# ---------------------------------------------------------------------------------------------


def worker_train(args: argparse.Namespace) -> dict:
    import torch

    from calflow.classify import train_group

    torch.set_num_threads(1)
    entries = json.loads(args.entries)
    section = json.loads(args.section)
    t0 = time.perf_counter()
    m = train_group(entries, entries[0]["targets"], section, args.output, group="bench")
    return {"seconds": time.perf_counter() - t0, "train_seconds": [r["seconds"] for r in m["training"]],
            "accuracy": {s: v["test"]["accuracy"] for s, v in m["sessions"].items()}}


def worker_gradcam(args: argparse.Namespace) -> dict:
    import torch

    from calflow.gradcam import session_gradcam

    torch.set_num_threads(1)
    entry = json.loads(args.entries)[0]
    t0 = time.perf_counter()
    info = session_gradcam(entry, Path(args.output) / "model.pt", {}, Path(args.output) / f"{entry['session']}.zarr")
    return {"seconds": time.perf_counter() - t0, "trials": info["trials"]}


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="*", default=[2000, 20000], help="memory cases (none: timing only)")
    ap.add_argument("--data", type=Path, default=None, help="keep the simulated sessions here (default: a temp dir)")
    ap.add_argument("--no-timing", action="store_true", help="skip the train_demo timing case")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "classify_memory.json")
    ap.add_argument("--worker", choices=["train", "gradcam"], help=argparse.SUPPRESS)
    ap.add_argument("--entries", default="", help=argparse.SUPPRESS)
    ap.add_argument("--section", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--output", default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = {"train": worker_train, "gradcam": worker_gradcam}[args.worker](args)
        res["vm_hwm_mib"] = peak_rss_self_mib()
        res["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        args.result.write_text(json.dumps(res))
        return

    import calflow

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    me = [sys.executable, str(Path(__file__).resolve())]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="calflow-bench-classify-") as tmpdir:
        data = args.data or Path(tmpdir) / "data"
        work = Path(tmpdir)

        def child(name: str, worker: str, n_frames: int, entries: list[dict], section: dict, output: Path) -> None:
            cmd = [*me, "--worker", worker, "--result", str(work / f"{name}.json"), "--entries", json.dumps(entries),
                   "--section", json.dumps(section), "--output", str(output)]
            rows[name] = {"frames": n_frames, **run_child(cmd, work / f"{name}.json")}
            print(name, json.dumps(rows[name]), flush=True)

        for n in args.frames:
            entries = [make_session(data, f"s{n}_A", "A", n, seed=1)]
            child(f"train_{n}", "train", n, entries, SECTION, work / f"model{n}")
            child(f"gradcam_{n}", "gradcam", n, entries, {}, work / f"model{n}")
        if not args.no_timing:
            demo = [make_session(data, "demo_A", "A", 900, seed=11, w_gain=1.0),
                    make_session(data, "demo_B", "B", 900, seed=12, w_gain=1.8)]
            child("train_demo", "train", 900, demo, {"device": "cpu", "num_threads": 1}, work / "model_demo")

    result = {"calflow": calflow.__file__, "load_average": os.getloadavg(), "iterations": ITERATIONS,
              "frame_shape": [128, 128], "cases": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\ncalflow from {calflow.__file__}")
    print(f"{'case':<16}{'frames':>8}{'peak RSS MiB':>14}{'seconds':>10}{'train s (folds)':>20}")
    for name, r in rows.items():
        folds = " + ".join(f"{s:.1f}" for s in r.get("train_seconds", []))
        print(f"{name:<16}{r['frames']:>8}{r['peak_rss_mib']:>14.0f}{r['seconds']:>10.1f}{folds:>20}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
