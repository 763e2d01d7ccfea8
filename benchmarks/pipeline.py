"""Whole pipeline, calflow beside Suite2p, in one run: the same TIFF in, cell traces out.

Each tool runs as it would for a lab's new session without annotations, in its own child process
(peak RSS = that child's VmHWM), with the same thread count, fastest of ``--repeat`` runs:

* ``calflow``: ingest (TIFF -> raw.zarr) -> motion correction (rigid + piecewise, the shipped
  config's ``motion`` section) -> summary images -> keyframes -> segmentation with the bundled
  generalist (the default of a sheet without masks; 8-fold TTA) -> CNMF (HALS, OASIS AR(2),
  evaluation): every stage's library call in sequence, what the workflow's jobs run, minus
  Snakemake's per-job start-up.
* ``suite2p``: ``suite2p.run_s2p`` with its default settings except ``fs`` (30 Hz), ``tau`` (1 s),
  ``diameter`` (12 px), the CPU device and non-rigid blocks of calflow's patch size (64 px, shift
  bound 5 px): TIFF -> binary, registration (rigid + non-rigid),
  registration metrics, detection (sparsery), extraction (cell + neuropil), OASIS
  deconvolution, classification. Suite2p runs in its own venv (``--s2p-python``; see
  docs/motion.md for the install line), with the torchvision stand-in of suite2p_compat.py.

Per stage: wall seconds and CPU seconds of the process (all threads). For Suite2p the stages are its
own ``plane_times`` (TIFF conversion = total - the plane's runtime). Default movie:
../shared/data/optinist-mouse2p (2000 x 128 x 128, real two-photon).

    python benchmarks/pipeline.py [--threads 2] [--repeat 3] [--s2p-python /tmp/s2p-venv/bin/python]

Prints a table and writes benchmarks/out/pipeline.json. A figure, not a test: the machine is shared,
so the load average before and after is recorded beside the times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from motion import peak_rss_self_mib, run_child  # noqa: E402 - sibling benchmark's helpers

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MOVIE = ROOT / ".." / "shared" / "data" / "optinist-mouse2p" / "movie.tiff"
FPS, TAU_S, DIAMETER_PX = 30.0, 1.0, 12.0
PATCH_PX, MAX_DEV_PX = 64, 5  # config/config.yaml motion.patch_size, max_deviation


def _thread_env(n: int) -> None:
    """Cap every threading library of this child at ``n`` (before numpy/torch/numba load)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def worker_calflow(args: argparse.Namespace) -> dict:
    """The calflow stages in sequence; per stage (wall s, CPU s)."""
    _thread_env(args.threads)
    import yaml

    from calflow.runner import set_threads

    set_threads(args.threads)
    from calflow.cnmf.stage import run_cnmf
    from calflow.ingest import ingest
    from calflow.keyframes.stage import compute_keyframes
    from calflow.motion import correct_motion
    from calflow.segment.infer import segment_session
    from calflow.segment.stage import bundled_segmenter
    from calflow.summary import compute_summary

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    motion = {k: v for k, v in cfg["motion"].items() if k != "split_frames"}
    motion.update(device="cpu", num_threads=args.threads)
    tmp = Path(args.workdir)
    stages: dict[str, dict] = {}
    out: dict = {}

    def stage(name: str, call):
        w0, c0 = time.perf_counter(), time.process_time()
        res = call()
        stages[name] = {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}
        return res

    w0, c0 = time.perf_counter(), time.process_time()
    stage("ingest", lambda: ingest(args.movie, tmp / "raw.zarr", fps=FPS))
    stage("motion", lambda: correct_motion(tmp / "raw.zarr", tmp / "motion.zarr", params=motion, progress=False))
    stage("summary", lambda: compute_summary(tmp / "motion.zarr", tmp / "summary.zarr"))
    stage("keyframes", lambda: compute_keyframes(tmp / "motion.zarr", tmp / "keyframes.zarr", cfg["keyframes"]))
    seg = stage("segment", lambda: segment_session(tmp / "summary.zarr", tmp / "keyframes.zarr", bundled_segmenter(),
                                                   tmp / "footprints.zarr", device="cpu", tta=True))
    info = stage("cnmf", lambda: run_cnmf(tmp / "motion.zarr", tmp / "footprints.zarr", tmp / "cnmf.zarr",
                                          summary_store=tmp / "summary.zarr", fps=FPS,
                                          params={**cfg["cnmf"], "device": "cpu"}))
    out.update(seconds=time.perf_counter() - w0, cpu_timed_s=time.process_time() - c0, stages=stages,
               n_frames=int(info["frames"]), n_segmented=int(seg["n_components"]),
               n_components=int(info["n_components"]), n_accepted=int(info["n_accepted"]),
               cnmf_fit_s=info["fit_s"], cnmf_deconv_s=info["deconv_s"])
    return out


def worker_suite2p(args: argparse.Namespace) -> dict:
    """suite2p.run_s2p on the TIFF; per stage from its plane_times (wall s only)."""
    _thread_env(args.threads)
    from suite2p_compat import stub_torchvision  # sibling module: benchmarks/ is on sys.path

    stub_torchvision()
    import logging

    import numpy as np
    import torch
    from suite2p import run_s2p
    from suite2p.parameters import default_settings

    logging.disable(logging.INFO)
    torch.set_num_threads(args.threads)
    data = Path(args.workdir) / "tiffs"
    data.mkdir()
    os.symlink(Path(args.movie).resolve(), data / "movie.tif")
    settings = default_settings()
    settings.update(torch_device="cpu", fs=FPS, tau=TAU_S, diameter=[DIAMETER_PX, DIAMETER_PX])
    # its default 128-px blocks make a 1 x 1 grid on 128-px frames (and fail): calflow's patch grid
    settings["registration"].update(block_size=(PATCH_PX, PATCH_PX), maxregshiftNR=MAX_DEV_PX)
    db = {"data_path": [str(data)], "save_path0": str(Path(args.workdir)), "fast_disk": str(Path(args.workdir))}
    w0, c0 = time.perf_counter(), time.process_time()
    run_s2p(db=db, settings=settings)
    seconds, cpu = time.perf_counter() - w0, time.process_time() - c0
    plane = Path(args.workdir) / "suite2p" / "plane0"
    ops = np.load(plane / "ops.npy", allow_pickle=True).item()
    times = {k: float(v) for k, v in ops["plane_times"].items()}
    stages = {"tiff_to_binary": {"wall_s": seconds - times.get("total_plane_runtime", seconds)}}
    for key in ("registration", "registration_metrics", "detection", "extraction", "deconvolution", "classification"):
        if key in times:
            stages[key] = {"wall_s": times[key]}
    iscell = np.load(plane / "iscell.npy")
    from importlib.metadata import version

    return {"seconds": seconds, "cpu_timed_s": cpu, "stages": stages, "n_frames": int(ops["nframes"]),
            "n_components": int(iscell.shape[0]), "n_accepted": int(iscell[:, 0].sum()),
            "suite2p_version": version("suite2p")}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--movie", type=Path, default=DEFAULT_MOVIE)
    ap.add_argument("--s2p-python", default="/tmp/s2p-venv/bin/python",
                    help="python of a venv with suite2p installed ('' to skip Suite2p)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool, alternating; the fastest is kept")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "pipeline.json")
    ap.add_argument("--worker", choices=["calflow", "suite2p"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = {"calflow": worker_calflow, "suite2p": worker_suite2p}[args.worker](args)
        res["vm_hwm_mib"] = peak_rss_self_mib()
        args.result.write_text(json.dumps(res))
        return
    if not args.movie.is_file():
        sys.exit(f"{args.movie}: no such movie (fix: pass --movie, a TIFF of shape (T, Y, X))")
    tools = {"calflow": sys.executable}
    if args.s2p_python:
        if not Path(args.s2p_python).is_file():
            sys.exit(f"{args.s2p_python}: no such python (fix: create the Suite2p venv, docs/motion.md, or pass "
                     "--s2p-python '')")
        tools["suite2p"] = args.s2p_python
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    load_before = _load()
    for _ in range(args.repeat):
        for tool, python in tools.items():
            with tempfile.TemporaryDirectory(prefix=f"calflow-bench-pipeline-{tool}-") as wd:
                result = Path(wd) / "result.json"
                cmd = [python, str(Path(__file__).resolve()), "--worker", tool, "--workdir", wd,
                       "--result", str(result), "--threads", str(args.threads), "--movie", str(args.movie.resolve())]
                res = run_child(cmd, result)
                runs[tool].append(res)
                print(tool, f"{res['seconds']:.2f} s", json.dumps(res["stages"]), flush=True)
                shutil.rmtree(wd, ignore_errors=True)
    best = {t: min(r, key=lambda x: x["seconds"]) for t, r in runs.items()}
    for t, r in best.items():
        r["fps"] = r["n_frames"] / r["seconds"]
        r["all_seconds"] = [round(x["seconds"], 2) for x in runs[t]]
    report = {"movie": str(args.movie), "threads": args.threads, "repeat": args.repeat,
              "load_before": load_before, "load_after": _load(), "tools": best}
    if "suite2p" in best:
        c, s = best["calflow"], best["suite2p"]
        report["ratios"] = {"fps_calflow_over_suite2p": c["fps"] / s["fps"],
                            "peak_rss_calflow_over_suite2p": c["peak_rss_mib"] / s["peak_rss_mib"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))

    print(f"\n{args.movie.name}, {args.threads} threads, fastest of {args.repeat}; load {load_before} -> {_load()}")
    print(f"{'tool':8s} {'stage':22s} {'wall s':>8s} {'CPU s':>8s}")
    for t, r in best.items():
        for name, st in r["stages"].items():
            cpu = f"{st['cpu_s']:8.2f}" if "cpu_s" in st else f"{'':>8s}"
            print(f"{t:8s} {name:22s} {st['wall_s']:8.2f} {cpu}")
        print(f"{t:8s} {'TOTAL':22s} {r['seconds']:8.2f} {r['cpu_s']:8.2f}   {r['fps']:.0f} frames/s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, {r['n_accepted']} of {r['n_components']} accepted")
    if "ratios" in report:
        q = report["ratios"]
        print(f"calflow / Suite2p: frames/s {q['fps_calflow_over_suite2p']:.2f}x, "
              f"peak RSS {q['peak_rss_calflow_over_suite2p']:.2f}x (targets >= 2x, <= 0.7x)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
