"""The ``motion`` stage: :func:`correct_motion` reads raw.zarr block by block (a reader thread
decodes the next block, a writer thread compresses the previous one while torch registers the
current one; memory independent of the movie's length), builds the template, registers and warps
every frame and writes motion.zarr atomically through :mod:`calflow.motion.store`."""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calflow.errors import CalflowInputError
from calflow.io import MovieReader, atomic_output
from calflow.motion.params import MotionParams
from calflow.motion.quality import _corr_with, crispness
from calflow.motion.register import _EPS, Registration, effective_batch, window_warning
from calflow.motion.store import MotionImages, MotionShifts, movie_writer, write_attrs, write_motion
from calflow.motion.template import _read_sample, build_template


def _prefetch(blocks, depth: int = 2):
    """Iterate ``blocks`` in a background thread, ``depth`` items ahead (zarr decoding releases
    the GIL, so reading overlaps registration). Exceptions are re-raised in the caller."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def run() -> None:
        try:
            for item in blocks:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put(err)

    thread = threading.Thread(target=run, name="calflow-motion-read", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _cast_out(x: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = x.round().clamp_(float(info.min), float(info.max))
    return x.cpu().numpy().astype(dtype, copy=False)


def correct_motion(
    raw_store: str | Path,
    out_store: str | Path,
    *,
    params: MotionParams | Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Motion-correct the movie in ``raw_store`` (zarr, (time, y, x)) into ``out_store``.

    Streams ``batch_size`` frames at a time (memory independent of the movie length) and writes
    ``out_store`` atomically. Stored (dims in brackets; shifts in px, see SHIFT_CONVENTION):
    ``movie`` (time, y, x) corrected; ``rigid_shifts`` (time, axis=dy,dx);
    ``patch_shifts`` (time, patch_y, patch_x, axis); ``patch_centers_y`` (patch_y,),
    ``patch_centers_x`` (patch_x,) px; ``template`` (y, x); ``corr_with_template`` (time,)
    after correction and ``corr_with_template_before`` (time,); ``mean_before`` / ``mean_after``
    (y, x). Attrs: raw attrs (fps, source, ...) + ``crispness_before`` / ``crispness_after``,
    ``motion_params``, ``shift_convention``.

    Returns summary statistics (frames, seconds, frames_per_s, crispness, mean correlations,
    largest shift, device).
    """
    t_start = time.perf_counter()
    p = MotionParams.from_config(params)
    raw_store, out_store = Path(raw_store), Path(out_store)
    reader = MovieReader(raw_store)
    n_t, h, w = reader.shape
    if min(h, w) < 16:
        raise CalflowInputError(f"frames are {h} x {w} px, too small to register", file=raw_store,
                                fix="motion correction needs frames of at least 16 x 16 px")
    window_warning(p.max_shift, h, w, raw_store)
    device = p.torch_device()
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(p.num_threads or _auto_threads())
    try:
        return _correct_motion(reader, raw_store, out_store, p, device, progress, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _auto_threads() -> int:
    """CPU threads for torch: the cores this process may use, minus one for the reading and
    compressing threads that overlap with it. On small shared machines, more torch threads than
    free cores make OpenMP barriers wait for descheduled threads (measured 5-10x slower)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _correct_motion(reader: MovieReader, raw_store: Path, out_store: Path, p: MotionParams,
                    device: torch.device, progress: bool, t_start: float) -> dict[str, Any]:
    n_t, h, w = reader.shape
    torch.manual_seed(p.seed)
    out_dtype = np.dtype(np.float32) if p.output_dtype == "float32" else np.dtype(reader.dtype)

    with torch.inference_mode():
        _, sample = _read_sample(reader, p.template_frames)
        template = build_template(sample, p, device)
        del sample
        reg = Registration(template, p, device)
        grid = reg.grid
        margin = min(reg.max_shift + (reg.max_dev if grid is not None else 0), min(h, w) // 4)
        tc = template[margin : h - margin, margin : w - margin].reshape(-1)
        tz = (tc - tc.mean()) / ((tc - tc.mean()).norm() + _EPS)

        n_py, n_px = (grid.n_y, grid.n_x) if grid is not None else (1, 1)
        rigid_all = np.zeros((n_t, 2), np.float32)
        patch_all = np.zeros((n_t, n_py, n_px, 2), np.float32)
        corr_before = np.zeros(n_t, np.float32)
        corr_after = np.zeros(n_t, np.float32)
        sum_before = torch.zeros((h, w), dtype=torch.float64, device=device)
        sum_after = torch.zeros((h, w), dtype=torch.float64, device=device)

        batch = effective_batch(p, h, w)
        blocks = _prefetch(reader.iter_blocks(batch))
        if progress:
            from tqdm import tqdm

            blocks = tqdm(blocks, total=math.ceil(n_t / batch), desc="motion", unit="batch")
        with atomic_output(out_store) as tmp:
            writer = movie_writer(tmp, (n_t, h, w), out_dtype, fps=reader.fps,
                                  chunk_frames=reader.chunk_frames, raw_attrs=reader.attrs, raw_store=raw_store)
            # compression + writing of batch k overlaps the registration of batch k+1
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calflow-motion-write")
            pending: Future | None = None
            try:
                for a, block in blocks:
                    x = torch.from_numpy(np.asarray(block, dtype=np.float32)).to(device)
                    rigid, patch, _, corrected = reg.register(x)
                    b = a + x.shape[0]
                    rigid_all[a:b] = rigid.cpu().numpy()
                    patch_all[a:b] = (patch if patch is not None else rigid[:, None, None, :]).cpu().numpy()
                    corr_before[a:b] = _corr_with(x, tz, margin).cpu().numpy()
                    corr_after[a:b] = _corr_with(corrected, tz, margin).cpu().numpy()
                    sum_before += x.sum(dim=0, dtype=torch.float64)
                    sum_after += corrected.sum(dim=0, dtype=torch.float64)
                    out_block = _cast_out(corrected, out_dtype)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(writer.write, out_block)
                if pending is not None:
                    pending.result()
            finally:
                pool.shutdown(wait=True)
            writer.close()

            mean_before = (sum_before / n_t).to(torch.float32).cpu().numpy()
            mean_after = (sum_after / n_t).to(torch.float32).cpu().numpy()
            crisp_margin = int(math.ceil(np.abs(patch_all).max())) if n_t else 0
            crisp_margin = min(crisp_margin, min(h, w) // 4)
            crisp_before = crispness(mean_before, crisp_margin)
            crisp_after = crispness(mean_after, crisp_margin)
            cy = grid.centres_y if grid is not None else np.array([(h - 1) / 2])
            cx = grid.centres_x if grid is not None else np.array([(w - 1) / 2])
            shifts = MotionShifts(rigid_shifts=rigid_all, patch_shifts=patch_all,
                                  patch_centers_y=cy.astype(np.float32), patch_centers_x=cx.astype(np.float32),
                                  corr_with_template=corr_after, corr_with_template_before=corr_before)
            images = MotionImages(template=template.cpu().numpy(), mean_before=mean_before,
                                  mean_after=mean_after)
            write_motion(tmp, shifts, images)
            seconds = time.perf_counter() - t_start
            stats = {
                "n_frames": n_t,
                "frame_shape": [h, w],
                "device": str(device),
                "piecewise": bool(grid is not None),
                "batch_frames": batch,
                "patch_grid": [n_py, n_px],
                "seconds": round(seconds, 3),
                "frames_per_s": round(n_t / seconds, 1) if seconds > 0 else None,
                "crispness_before": crisp_before,
                "crispness_after": crisp_after,
                "crispness_margin_px": crisp_margin,
                "corr_with_template_before_mean": float(corr_before.mean()) if n_t else float("nan"),
                "corr_with_template_after_mean": float(corr_after.mean()) if n_t else float("nan"),
                "max_abs_rigid_shift_px": float(np.abs(rigid_all).max()) if n_t else 0.0,
                "max_abs_patch_shift_px": float(np.abs(patch_all).max()) if n_t else 0.0,
            }
            write_attrs(tmp, {**stats, "motion_params": p.to_dict()})
    return stats
