"""Cross-session tracking benchmark (docs/tracking.md): matching F1 on simulated animals, the per-day
trace r of the tracked cells after seeded re-extraction, and registration error on a real movie.

1. Simulated animals (calflow.simulate): ``--sessions`` sessions of one animal share the anatomy
   (``anatomy_seed``) and differ by a FOV re-placement (draw_nuisance at ``--nuisance`` scale: shift and
   rotation), a smooth warp of the cell layout (``warp_px``), cell turnover (``turnover``: cells absent on
   a day) and a per-cell brightness change (``brightness_change_cv``). Each session's mean image is
   rendered from its noisy movie; its detections are the footprints of the cells present that day (an
   oracle segmentation, so the figure isolates registration and matching). F1 is over cross-session
   pairs of detections: predicted same cell (same union cell) vs truly the same cell. The settings
   (TrackingParams defaults) were frozen on animals 1-3; the table reports ``--seeds`` (default
   101-110), never looked at before.
2. Traces: the union footprints warped into every session seed calflow's CNMF (no merging, no added
   components) on the session's movie (written to a temporary motion-corrected-movie store);
   r = Pearson correlation of each tracked cell's C with its true calcium, per day, over the cells
   present that day.
3. Real movie: ../shared/data/optinist-mouse2p/movie.tiff (2000 x 128 x 128, real mouse 2p). Each half
   is rigidly motion-corrected (phase correlation to the first half's mean, whole-pixel shifts) and
   averaged; the second half's mean is then warped by a known transform (rotation, scale, shift and
   a smooth spline warp) and registered back to the first half's mean. Error = distance in px between
   where the estimate and the known transform put each reference pixel, over the pixels 12 px or
   more inside the frame (median and 95th percentile), for rigid, affine and piecewise.

Usage::

    python benchmarks/tracking.py [--seeds 101-110] [--sessions 3] [--trace-animals 5] [--movie PATH]

Prints tables and writes benchmarks/out/tracking.json. About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from scipy.interpolate import CubicSpline

from calflow.simulate import SimParams, draw_nuisance, fov_footprints, iter_movie, simulate
from calflow.tracking.match import warp_footprints
from calflow.tracking.params import TrackingParams
from calflow.tracking.register import map_points, register
from calflow.tracking.stage import track_footprints

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MOVIE = ROOT / ".." / "shared" / "data" / "optinist-mouse2p" / "movie.tiff"
TUNED_ON = [1, 2, 3]
SIM = dict(n_frames=600, height=128, width=128, n_cells=60, radius_min=3.5, radius_max=4.5, n_targets=0,
           motion=False, turnover=0.15, warp_px=1.0, brightness_change_cv=0.3)


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def simulate_animal(animal_seed: int, n_sessions: int, nuisance: float):
    """Sessions of one animal: (truth, mean image (Y, X), detections CSR (K_s, Y*X), true ids (K_s,))."""
    base = SimParams(**SIM)
    out = []
    for s in range(n_sessions):
        seed = 1000 * animal_seed + s
        nz = draw_nuisance(seed, nuisance, base=base)
        keep = ("expression_scale", "photons_per_unit", "neuropil_level", "fov_offset", "fov_rotation_deg")
        p = dataclasses.replace(base, **{k: nz[k] for k in keep})
        truth = simulate(p, seed, anatomy_seed=animal_seed)
        img = np.zeros((p.height, p.width))
        for _, block in iter_movie(truth, block_frames=200):
            img += block.astype(np.float64).sum(0)
        img /= p.n_frames
        ids = np.flatnonzero(truth.present)
        A = sp.csr_matrix(fov_footprints(truth)[ids].reshape(len(ids), -1))
        out.append((truth, img, A, ids))
    return out


def pair_f1(members: np.ndarray, ids: list[np.ndarray]) -> dict:
    """Precision, recall, F1 over cross-session pairs of detections (same union cell vs same true cell)."""
    tp = fp = fn = 0
    S = members.shape[1]
    for a in range(S):
        for b in range(a + 1, S):
            pred = {(int(ids[a][i]), int(ids[b][j])) for i, j in members[:, [a, b]] if i >= 0 and j >= 0}
            true = {(int(c), int(c)) for c in set(ids[a]) & set(ids[b])}
            tp += len(pred & true)
            fp += len(pred - true)
            fn += len(true - pred)
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": prec, "recall": rec,
            "f1": 2 * tp / max(2 * tp + fp + fn, 1)}


def union_identity(members: np.ndarray, ids: list[np.ndarray]) -> np.ndarray:
    """(U,) the true cell of each union cell (majority of its members' ids), -1 if mixed."""
    out = np.full(len(members), -1)
    for u, row in enumerate(members):
        found = [int(ids[s][k]) for s, k in enumerate(row) if k >= 0]
        vals, counts = np.unique(found, return_counts=True)
        if len(vals) and counts.max() > len(found) / 2:
            out[u] = vals[np.argmax(counts)]
    return out


def trace_r(sessions, res, workdir: Path) -> list[list[float]]:
    """Per session, r of each tracked cell present that day (true identity known, some calcium that
    day) with its calcium (0 for a trace that the fit set to zero)."""
    from calflow.cnmf.stage import CNMFParams, run_cnmf
    from calflow.cnmf.store import read_cnmf
    from calflow.io import MovieWriter
    from calflow.tracking.store import write_seeds

    u = res["union"]
    ident = union_identity(u.members, [s[3] for s in sessions])
    out = []
    for s, (truth, _, _, _) in enumerate(sessions):
        p = truth.params
        movie = workdir / f"s{s}_motion.zarr"
        with MovieWriter(movie, (p.n_frames, p.height, p.width), np.uint16, fps=p.fps, chunk_frames=200,
                         attrs={"source": "simulated"}) as w:
            for _, block in iter_movie(truth, block_frames=200):
                w.write(block)
        seeds = warp_footprints(u.footprints, (p.height, p.width), res["registrations"][s].to_reference)
        write_seeds(workdir / f"s{s}_seeds.zarr", seeds, (p.height, p.width))
        cp = dataclasses.replace(CNMFParams(), merge_threshold=1.0, add_components=0, device="cpu")
        run_cnmf(movie, workdir / f"s{s}_seeds.zarr", workdir / f"s{s}_cnmf.zarr", params=cp, fps=p.fps, seed=0)
        c = read_cnmf(workdir / f"s{s}_cnmf.zarr")
        rs = []
        for i, seed_row in enumerate(c["attrs"]["seed_index"]):
            cell = ident[seed_row]
            if cell >= 0 and truth.present[cell] and np.std(truth.calcium[cell]) > 0:  # r needs a transient
                flat = np.std(c["C"][i]) == 0  # a trace the fit zeroed counts as r = 0
                rs.append(0.0 if flat else float(np.corrcoef(c["C"][i], truth.calcium[cell])[0, 1]))
        out.append(rs)
    return out


def bench_simulated(seeds: list[int], n_sessions: int, nuisance: float, trace_animals: int) -> list[dict]:
    rows = []
    for n, a in enumerate(seeds):
        traces = n < trace_animals
        t0 = time.perf_counter()
        sessions = simulate_animal(a, n_sessions, nuisance)
        t1 = time.perf_counter()
        res = track_footprints([s[1] for s in sessions], [s[2] for s in sessions], TrackingParams(), seed=0)
        t2 = time.perf_counter()
        row = {"animal_seed": a, **pair_f1(res["union"].members, [s[3] for s in sessions]),
               "threshold": res["threshold"].value, "threshold_method": res["threshold"].method,
               "transforms": [r.kind for r in res["registrations"]], "n_union": int(len(res["union"].members)),
               "n_true_cells_seen": int(len(set().union(*[set(s[3]) for s in sessions]))),
               "simulate_s": round(t1 - t0, 2), "track_s": round(t2 - t1, 2)}
        if traces:
            with tempfile.TemporaryDirectory() as tmp:
                rs = trace_r(sessions, res, Path(tmp))
            row["trace_r_median_per_day"] = [float(np.median(r)) if r else None for r in rs]
            row["trace_r_n_per_day"] = [len(r) for r in rs]
        rows.append(row)
        print(f"animal {a:4d}: F1 {row['f1']:.3f} (P {row['precision']:.3f} R {row['recall']:.3f}), threshold "
              f"{row['threshold']:.3f} ({row['threshold_method']}), union {row['n_union']} / "
              f"{row['n_true_cells_seen']} true" + (f", trace r per day {[None if v is None else round(v, 3) for v in row['trace_r_median_per_day']]}"
                                                   if traces else ""), flush=True)
    return rows


def _known_warp(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """H (2, Y, X): the synthetic session shows at q the reference content at H(q): rotation 2 deg,
    scale 1.02, shift (3.2, -2.1) px and a smooth spline warp (std 1 px on a 3x3 grid)."""
    Y, X = shape
    c = np.array([(Y - 1) / 2, (X - 1) / 2])
    a = np.deg2rad(2.0)
    R = 1.02 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    q = np.mgrid[0:Y, 0:X].astype(np.float64).reshape(2, -1).T
    ref = (q - c - np.array([3.2, -2.1])) @ np.linalg.inv(R).T + c
    ctrl = np.random.default_rng(seed).standard_normal((3, 3, 2))
    by = CubicSpline(np.linspace(0, Y - 1, 3), np.eye(3), bc_type="natural")(q[:, 0])
    bx = CubicSpline(np.linspace(0, X - 1, 3), np.eye(3), bc_type="natural")(q[:, 1])
    ref += np.einsum("ni,nj,ijc->nc", by, bx, ctrl)
    return ref.T.reshape(2, Y, X)


def half_means(movie: Path, block: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Means of the two halves of a TIFF movie, each frame rigidly aligned (whole px) to the first
    half's mean; streamed ``block`` frames at a time."""
    import tifffile
    from skimage.registration import phase_cross_correlation

    with tifffile.TiffFile(movie) as tif:
        n = len(tif.pages)
        first = np.mean([tif.pages[i].asarray().astype(np.float64) for i in range(min(200, n // 2))], axis=0)
        sums = [np.zeros_like(first), np.zeros_like(first)]
        for a in range(0, n, block):
            frames = tif.asarray(key=range(a, min(n, a + block))).astype(np.float64)
            for i, f in enumerate(frames):
                shift = phase_cross_correlation(first, f, normalization=None)[0]
                sums[(a + i) >= n // 2] += ndimage.shift(f, shift, order=0, mode="nearest")
    return sums[0] / (n // 2), sums[1] / (n - n // 2)


def bench_real(movie: Path) -> dict:
    ref, second = half_means(movie)
    H = _known_warp(ref.shape)
    session = ndimage.map_coordinates(second, H, order=3, mode="nearest")
    Y, X = ref.shape
    q = np.mgrid[0:Y, 0:X].astype(np.float64)
    inner = ((q[0] >= 12) & (q[0] <= Y - 13) & (q[1] >= 12) & (q[1] <= X - 13)).ravel()
    pts = q.reshape(2, -1).T[inner]
    out = {"movie": "optinist-mouse2p (2000 x 128 x 128)", "frame_shape": [Y, X],
           "known_warp": "rotation 2 deg, scale 1.02, shift (3.2, -2.1) px, 3x3 spline warp std 1 px"}
    # no registration: the session pixel p is taken for reference pixel p
    err0 = np.linalg.norm(map_points(H, pts) - pts, axis=1)
    out["none"] = {"median_px": float(np.median(err0)), "p95_px": float(np.percentile(err0, 95))}
    for kind in ("rigid", "affine", "piecewise"):
        reg = register(ref, session, TrackingParams(transform=kind))
        est = map_points(reg.to_session, pts)  # where the estimate puts reference pixel p in the session
        err = np.linalg.norm(map_points(H, est) - pts, axis=1)  # back through the known warp
        out[kind] = {"median_px": float(np.median(err)), "p95_px": float(np.percentile(err, 95)), "fitted": reg.kind}
    return out


def bench_demo(results: Path, max_px: float = 3.0) -> dict:
    """The demo's own tracking (rule track on the pipeline's CNMF components) against the simulated
    identities: every component is given the true cell whose centre (``fov_centers``) is nearest its
    centroid within ``max_px``; pair F1 as above over the animal's sessions."""
    from calflow.cnmf.store import read_cnmf
    from calflow.tracking.store import read_tracking

    out = {}
    for store in sorted(results.glob("tracking/*/tracking.zarr")):
        t = read_tracking(store)
        ids = []
        for k, s in enumerate(t.sessions):
            truth = np.load(results / "demo" / s / "ground_truth.npz")
            cents = read_cnmf(results / s / "cnmf.zarr")["centroids"]
            d = np.linalg.norm(cents[:, None, :] - truth["fov_centers"][None], axis=-1)
            near = np.argmin(d, axis=1)
            ids.append(np.where(d[np.arange(len(d)), near] <= max_px, near, -1 - np.arange(len(d)) - 100000 * k))
        # members hold cnmf component indices; ids[k] maps a component to its true cell (no true cell: a
        # negative id of its own, which matches nothing)
        out[t.animal] = {**pair_f1(t.members, ids), "threshold": t.threshold, "n_union": t.n_cells}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="101-110", help="animal seeds to evaluate (tuned on 1-3)")
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--nuisance", type=float, default=2.0, help="draw_nuisance scale of the FOV re-placement")
    ap.add_argument("--trace-animals", type=int, default=5,
                    help="re-extract the traces of the first N animals (CNMF of every session: the slow part)")
    ap.add_argument("--movie", type=Path, default=DEFAULT_MOVIE)
    ap.add_argument("--demo", type=Path, default=None, help="a finished demo's results/ directory to score")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "tracking.json")
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds)
    rows = bench_simulated(seeds, args.sessions, args.nuisance, args.trace_animals)
    f1 = np.array([r["f1"] for r in rows])
    summary = {"seeds": seeds, "tuned_on": TUNED_ON, "sessions": args.sessions, "nuisance": args.nuisance,
               "sim": SIM, "f1_mean": float(f1.mean()), "f1_min": float(f1.min()),
               "tp": int(sum(r["tp"] for r in rows)), "fp": int(sum(r["fp"] for r in rows)),
               "fn": int(sum(r["fn"] for r in rows))}
    if args.trace_animals > 0:
        rs = [v for r in rows for v in r.get("trace_r_median_per_day", []) if v is not None]
        summary["trace_r_animals"] = seeds[: args.trace_animals]
        summary["trace_r_median_of_day_medians"] = float(np.median(rs))
        summary["trace_r_min_day_median"] = float(np.min(rs))
    print(f"\nsimulated: {len(rows)} animals x {args.sessions} sessions (seeds {args.seeds}; tuned on 1-3)")
    print(f"  pair F1 mean {summary['f1_mean']:.3f}, min {summary['f1_min']:.3f} "
          f"(TP {summary['tp']}, FP {summary['fp']}, FN {summary['fn']})")
    if args.trace_animals > 0:
        print(f"  tracked cells' trace r with true calcium: median of per-day medians "
              f"{summary['trace_r_median_of_day_medians']:.3f}, worst day {summary['trace_r_min_day_median']:.3f}")
    real = None
    if args.movie.exists():
        real = bench_real(args.movie)
        print(f"\nreal movie, second half warped by a known transform ({real['known_warp']}):")
        print(f"  {'method':10s} {'median px':>10s} {'p95 px':>8s}")
        for kind in ("none", "rigid", "affine", "piecewise"):
            print(f"  {kind:10s} {real[kind]['median_px']:10.2f} {real[kind]['p95_px']:8.2f}")
    else:
        print(f"\n{args.movie} not found: real-movie registration skipped")
    demo = None
    if args.demo is not None:
        demo = bench_demo(args.demo)
        f1s = [v["f1"] for v in demo.values()]
        print(f"\ndemo ({len(demo)} animals, pipeline footprints): pair F1 per animal "
              + ", ".join(f"{k} {v['f1']:.3f}" for k, v in demo.items()) + f"; mean {np.mean(f1s):.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"simulated": summary, "animals": rows, "real": real, "demo": demo}, indent=1)
                        + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
