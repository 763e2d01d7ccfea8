"""CNMF benchmark: calflow's seeded CNMF on a real movie and a 10x longer simulated one, Suite2p's
extraction on the same movie, and CaImAn's published figures for comparison.

Every case runs in its own child process; peak RSS is the child's VmHWM (the helper of
benchmarks/motion.py), wall time is measured inside the child around the timed call. Cases:

* ``calflow_cnmf``: ``run_cnmf`` on ../shared/data/optinist-mouse2p (2000 x 128 x 128), motion-
  corrected by calflow first (rigid + piecewise, untimed preparation), seeded by a *local-correlation*
  seed (peaks of the summary's local-correlation image, each a disc of radius 5 px cut at half the
  peak's correlation; not the segmenter, which is trained on the simulated demo only). Timed: the
  whole stage call (reading motion.zarr, HALS fit, OASIS, evaluation, writing cnmf.zarr); the fit
  alone ("refit") is reported too. 2 torch threads.
* ``calflow_end_to_end``: ingest of the TIFF + motion correction + summary images + seeds + CNMF,
  one child, 2 threads (what CaImAn's "end to end" figure covers: motion correction, initialisation
  and CNMF).
* ``calflow_sim_1x`` / ``calflow_sim_10x``: a simulated 128 x 128 movie of 2000 and of 20000 frames
  (40 cells, no motion, seeded with the true masks): peak RSS must not grow with the length.
* ``suite2p``: Suite2p 1.x detection (sparsery) + extraction (cell and neuropil traces) + OASIS
  deconvolution on calflow's registered movie, in the Suite2p venv (torchvision stub as in
  benchmarks/motion.py), 2 torch threads; extraction alone is timed too.

CaImAn cannot be installed here (conda only); its figures for this movie are quoted from the
issue: 113 frames/s for the CNMF refit, 65 frames/s end to end, 1.04 GB peak, on 2 cores.

Usage::

    python benchmarks/cnmf.py [--s2p-python /tmp/s2p-venv/bin/python] [--long-factor 10] [--repeat 3]

Prints a table and writes benchmarks/out/cnmf.json. Nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from motion import peak_rss_self_mib, run_child  # noqa: E402 - sibling benchmark's helpers

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MOVIE = ROOT / ".." / "shared" / "data" / "optinist-mouse2p" / "movie.tiff"
CAIMAN = {"refit_fps": 113.0, "end_to_end_fps": 65.0, "peak_rss_mib": 1.04e9 / 2**20}
THREADS = 2
SEED_RADIUS = 5


# ---------------------------------------------------------------------------------------------
# helpers and workers (children)
# ---------------------------------------------------------------------------------------------


def local_corr_seeds(summary_store: Path, out_store: Path, radius: int = SEED_RADIUS) -> int:
    """footprints.zarr from peaks of the local-correlation image (see module doc); returns K."""
    import zarr
    from scipy import ndimage
    from skimage.feature import peak_local_max

    from calflow.io import open_group, write_array

    lc = np.asarray(open_group(summary_store)["local_corr"][:], np.float64)
    smooth = ndimage.gaussian_filter(lc, 1.0)
    thr = np.percentile(smooth, 75) + 0.5 * (smooth.max() - np.percentile(smooth, 75)) * 0.3
    peaks = peak_local_max(smooth, min_distance=radius, threshold_abs=thr, exclude_border=2)
    h, w = lc.shape
    yy, xx = np.mgrid[0:h, 0:w]
    rows = []
    for y, x in peaks:
        disc = ((yy - y) ** 2 + (xx - x) ** 2 <= radius**2) & (smooth >= 0.5 * smooth[y, x])
        rows.append(disc.ravel())
    import scipy.sparse as sp

    fp = sp.csr_matrix(np.array(rows, np.float32).reshape(len(rows), h * w))
    g = zarr.open_group(out_store, mode="w", zarr_format=3)
    g.attrs.update({"format": "csr", "shape": [fp.shape[0], h * w], "frame_shape": [h, w],
                    "n_components": int(fp.shape[0]), "seeds": "local-correlation peaks"})
    write_array(out_store, "data", fp.data, ("nnz",))
    write_array(out_store, "indices", fp.indices.astype(np.int64), ("nnz",))
    write_array(out_store, "indptr", fp.indptr.astype(np.int64), ("component_ptr",))
    return int(fp.shape[0])


def _threads(n: int) -> None:
    from calflow.runner import set_threads

    set_threads(n)


def worker_cnmf(args: argparse.Namespace) -> dict:
    _threads(args.threads)
    from calflow.cnmf.stage import run_cnmf

    t0 = time.perf_counter()
    info = run_cnmf(args.input, args.seeds, args.output, summary_store=args.summary or None, fps=30.0,
                    params={"device": "cpu"})
    return {"seconds": time.perf_counter() - t0, "fit_s": info["fit_s"], "deconv_s": info["deconv_s"],
            "n_frames": info["frames"],
            "n_components": info["n_components"], "n_accepted": info["n_accepted"], "n_seeds": info["n_seeds"]}


def worker_end_to_end(args: argparse.Namespace) -> dict:
    _threads(args.threads)
    from calflow.cnmf.stage import run_cnmf
    from calflow.ingest import ingest
    from calflow.motion import correct_motion
    from calflow.summary import compute_summary

    tmp = Path(args.output).parent
    t0 = time.perf_counter()
    ingest(args.input, tmp / "e2e_raw.zarr", fps=30.0)
    correct_motion(tmp / "e2e_raw.zarr", tmp / "e2e_motion.zarr", params={"device": "cpu", "num_threads": args.threads},
                   progress=False)
    compute_summary(tmp / "e2e_motion.zarr", tmp / "e2e_summary.zarr")
    local_corr_seeds(tmp / "e2e_summary.zarr", tmp / "e2e_seeds.zarr")
    info = run_cnmf(tmp / "e2e_motion.zarr", tmp / "e2e_seeds.zarr", args.output,
                    summary_store=tmp / "e2e_summary.zarr", fps=30.0, params={"device": "cpu"})
    return {"seconds": time.perf_counter() - t0, "n_frames": info["frames"], "n_components": info["n_components"]}


def worker_suite2p(args: argparse.Namespace) -> dict:
    from suite2p_compat import stub_torchvision  # sibling module: benchmarks/ is on sys.path

    stub_torchvision()
    import logging

    import torch
    from suite2p.detection.detect import detection_wrapper
    from suite2p.extraction.dcnv import oasis
    from suite2p.extraction.extract import extraction_wrapper
    from suite2p.parameters import default_settings

    logging.disable(logging.INFO)
    torch.set_num_threads(args.threads)
    mov = np.load(args.input, mmap_mode="r")
    settings = default_settings()
    dev = torch.device("cpu")
    t0 = time.perf_counter()
    _, stat, _ = detection_wrapper(np.asarray(mov, np.float32), diameter=[12.0, 12.0], tau=1.0, fs=30.0,
                                   settings=settings["detection"], device=dev)
    t1 = time.perf_counter()
    out = extraction_wrapper(stat, np.asarray(mov, np.float32), settings=settings["extraction"], device=dev)
    F, Fneu = out[0], out[1]
    t2 = time.perf_counter()
    spks = oasis(F - 0.7 * Fneu, batch_size=500, tau=1.0, fs=30.0)
    t3 = time.perf_counter()
    from importlib.metadata import version

    return {"seconds": t3 - t0, "detection_s": t1 - t0, "extraction_s": t2 - t1, "deconvolution_s": t3 - t2,
            "n_frames": int(mov.shape[0]), "n_components": int(len(stat)), "spikes_shape": list(spks.shape),
            "suite2p_version": version("suite2p")}


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--movie", type=Path, default=DEFAULT_MOVIE)
    ap.add_argument("--s2p-python", default="/tmp/s2p-venv/bin/python",
                    help="python of a venv with suite2p installed ('' to skip Suite2p)")
    ap.add_argument("--long-factor", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the real-movie CNMF case; the fastest is kept")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cnmf.json")
    ap.add_argument("--worker", choices=["cnmf", "end_to_end", "suite2p"], help=argparse.SUPPRESS)
    for a in ("--input", "--output", "--seeds", "--summary"):
        ap.add_argument(a, default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=THREADS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = {"cnmf": worker_cnmf, "end_to_end": worker_end_to_end, "suite2p": worker_suite2p}[args.worker](args)
        res["vm_hwm_mib"] = peak_rss_self_mib()
        args.result.write_text(json.dumps(res))
        return

    import tifffile

    from calflow.io import MovieReader, MovieWriter
    from calflow.motion import correct_motion
    from calflow.simulate import SimParams, iter_movie, simulate
    from calflow.summary import compute_summary

    if not args.movie.exists():
        sys.exit(f"{args.movie}: movie not found (the benchmark needs ../shared/data)")
    me = [sys.executable, str(Path(__file__).resolve())]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="calflow-bench-cnmf-") as tmpdir:
        tmp = Path(tmpdir)
        # preparation (untimed): ingest, motion-correct, summary, local-correlation seeds
        movie = tifffile.imread(args.movie)
        with MovieWriter(tmp / "raw.zarr", movie.shape, movie.dtype, fps=30.0) as w:
            w.write(movie)
        correct_motion(tmp / "raw.zarr", tmp / "motion.zarr", params={"device": "cpu"}, progress=False)
        compute_summary(tmp / "motion.zarr", tmp / "summary.zarr")
        n_seeds = local_corr_seeds(tmp / "summary.zarr", tmp / "seeds.zarr")

        def child(name: str, worker: str, repeat: int = 1, **kw: str) -> None:
            cmd = [*me, "--worker", worker, "--result", str(tmp / f"{name}.json"), "--threads", str(THREADS)]
            for k, v in kw.items():
                cmd += [f"--{k}", str(v)]
            runs = [run_child(cmd, tmp / f"{name}.json") for _ in range(repeat)]
            rows[name] = min(runs, key=lambda r: r["seconds"])  # fastest run: least disturbed by other jobs
            rows[name]["runs"] = len(runs)
            print(name, json.dumps(rows[name]), flush=True)

        child("calflow_cnmf", "cnmf", repeat=args.repeat, input=tmp / "motion.zarr", seeds=tmp / "seeds.zarr",
              summary=tmp / "summary.zarr", output=tmp / "cnmf.zarr")
        child("calflow_end_to_end", "end_to_end", input=args.movie, output=tmp / "e2e_cnmf.zarr")
        # simulated movies of 1x and long_factor x the length: RSS must stay flat
        n1 = movie.shape[0]
        for factor in (1, args.long_factor):
            p = SimParams(n_frames=n1 * factor, height=128, width=128, n_cells=40, motion=False)
            truth = simulate(p, seed=11)
            store = tmp / f"sim{factor}.zarr"
            with MovieWriter(store, truth.shape, np.uint16, fps=30.0) as w:
                for _, block in iter_movie(truth, block_frames=500):
                    w.write(block)
            labels = truth.masks()
            masks = np.stack([(labels == k + 1).ravel() for k in range(truth.n_cells)]).astype(np.float32)
            import scipy.sparse as sp
            import zarr

            from calflow.io import write_array

            fp = sp.csr_matrix(masks)
            seeds = tmp / f"sim{factor}_seeds.zarr"
            g = zarr.open_group(seeds, mode="w", zarr_format=3)
            g.attrs.update({"format": "csr", "shape": list(fp.shape), "frame_shape": [128, 128],
                            "n_components": fp.shape[0]})
            write_array(seeds, "data", fp.data, ("nnz",))
            write_array(seeds, "indices", fp.indices.astype(np.int64), ("nnz",))
            write_array(seeds, "indptr", fp.indptr.astype(np.int64), ("component_ptr",))
            child(f"calflow_sim_{factor}x", "cnmf", input=store, seeds=seeds, output=tmp / f"sim{factor}_cnmf.zarr")
            del truth
        if args.s2p_python and Path(args.s2p_python).exists():
            reg = tmp / "registered.npy"
            np.save(reg, MovieReader(tmp / "motion.zarr")[:].astype(np.float32))
            cmd = [args.s2p_python, str(Path(__file__).resolve()), "--worker", "suite2p", "--input", str(reg),
                   "--result", str(tmp / "suite2p.json"), "--threads", str(THREADS)]
            try:
                rows["suite2p"] = run_child(cmd, tmp / "suite2p.json")
                print("suite2p", json.dumps(rows["suite2p"]), flush=True)
            except RuntimeError as err:  # keep calflow's figures when the Suite2p venv misbehaves
                print(f"Suite2p failed: {err}", file=sys.stderr)
        else:
            print(f"Suite2p skipped: {args.s2p_python!r} not found", file=sys.stderr)

    for r in rows.values():
        r["fps"] = r["n_frames"] / r["seconds"]
        r["frames_per_cpu_s"] = r["n_frames"] / r["cpu_s"]  # less sensitive to other jobs on the machine
    c = rows["calflow_cnmf"]
    c["refit_s"] = c["fit_s"] + c["deconv_s"]  # what CaImAn's refit covers: the CNMF updates and OASIS
    c["refit_fps"] = c["n_frames"] / c["refit_s"]
    result = {"movie": str(args.movie), "threads": THREADS, "load_average": os.getloadavg(),
              "seeds": f"local-correlation peaks ({n_seeds})",
              "cases": rows, "caiman_published": CAIMAN,
              "speedup_vs_caiman": {"refit": c["refit_fps"] / CAIMAN["refit_fps"],
                                    "stage": c["fps"] / CAIMAN["refit_fps"],
                                    "end_to_end": rows["calflow_end_to_end"]["fps"] / CAIMAN["end_to_end_fps"]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{'case':<22}{'frames':>8}{'wall s':>9}{'frames/s':>10}{'frames/CPU-s':>14}{'peak RSS MiB':>14}"
          f"{'components':>12}")
    for name, r in rows.items():
        print(f"{name:<22}{r['n_frames']:>8}{r['seconds']:>9.2f}{r['fps']:>10.0f}{r['frames_per_cpu_s']:>14.0f}"
              f"{r['peak_rss_mib']:>14.0f}{r.get('n_components', ''):>12}")
    print(f"{'calflow refit':<22}{c['n_frames']:>8}{c['refit_s']:>9.2f}{c['refit_fps']:>10.0f}  (HALS fit + OASIS)")
    print(f"{'CaImAn (published)':<22}{'2000':>8}{'':>9}{'113 refit / 65 e2e':>28}  {CAIMAN['peak_rss_mib']:.0f} MiB")
    print("speed-up vs CaImAn:", {k: round(v, 1) for k, v in result["speedup_vs_caiman"].items()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
