"""The ``motion`` stage: :func:`correct_motion` reads raw.zarr block by block (a reader thread
decodes the next block, a writer thread compresses the previous one while torch registers the
current one; memory independent of the movie's length), builds the template, registers and warps
every frame and writes motion.zarr atomically through :mod:`calflow.motion.store`.

With ``motion.split_frames`` > 0 the same steps run as separate jobs (docs/motion.md "Long sessions"):
:func:`motion_template` (the template and the plan), :func:`motion_chunk` (one time chunk, registered in
batches from its first frame, to a part store) and :func:`motion_gather` (checks the parts, takes their
encoded chunks as they are and finishes motion.zarr exactly as :func:`correct_motion` does). The three
share :func:`_template`, :func:`_register_range` and :func:`_finish` with the one-job path."""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calflow.errors import CalflowInputError
from calflow.io import MovieReader, MovieWriter, atomic_output
from calflow.motion.params import MotionParams
from calflow.motion.patches import PatchGrid
from calflow.motion.quality import _corr_with, crispness
from calflow.motion.register import _EPS, Registration, effective_batch, window_warning
from calflow.motion.split import (
    PART_FRAME_ARRAYS,
    PART_SUM_ARRAYS,
    SplitPlan,
    check_parts,
    plan_split,
    read_template_store,
    rerun_fix,
    write_part_arrays,
    write_template_store,
)
from calflow.motion.store import MotionImages, MotionShifts, movie_writer, write_attrs, write_motion
from calflow.motion.template import _read_sample, build_template
from calflow.params import invalid


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
    reader = _open_raw(raw_store)
    n_t, h, w = reader.shape
    window_warning(p.max_shift, h, w, raw_store)
    device = p.torch_device()
    with _threads(p, device):
        return _correct_motion(reader, raw_store, out_store, p, device, progress, t_start)


def _auto_threads() -> int:
    """CPU threads for torch: the cores this process may use, minus one for the reading and
    compressing threads that overlap with it. On small shared machines, more torch threads than
    free cores make OpenMP barriers wait for descheduled threads (measured 5-10x slower)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass
class _Context:
    """What every batch is registered with: the template (h, w) on the device, its
    :class:`Registration`, the crop ``margin`` px and the z-normalised template crop ``tz``."""

    template: torch.Tensor
    reg: Registration
    margin: int
    tz: torch.Tensor

    @property
    def grid_shape(self) -> tuple[int, int]:
        g = self.reg.grid
        return (g.n_y, g.n_x) if g is not None else (1, 1)


def _context(template: torch.Tensor, p: MotionParams, device: torch.device) -> _Context:
    h, w = template.shape
    reg = Registration(template, p, device)
    margin = min(reg.max_shift + (reg.max_dev if reg.grid is not None else 0), min(h, w) // 4)
    tc = template[margin : h - margin, margin : w - margin].reshape(-1)
    tz = (tc - tc.mean()) / ((tc - tc.mean()).norm() + _EPS)
    return _Context(template, reg, margin, tz)


@dataclass
class _Frames:
    """Per-frame results of frames ``start:start + n`` (float32) and the float64 sums (h, w) of their raw
    and corrected frames."""

    rigid_shifts: np.ndarray
    patch_shifts: np.ndarray
    corr_with_template: np.ndarray
    corr_with_template_before: np.ndarray
    sum_before: np.ndarray
    sum_after: np.ndarray


def _register_range(reader: MovieReader, ctx: _Context, p: MotionParams, device: torch.device, writer: MovieWriter,
                    start: int, stop: int, progress: bool) -> _Frames:
    """Register and warp frames ``start:stop`` batch by batch (batches start at ``start``) and write the
    corrected frames to ``writer``, compression overlapping the next batch's registration."""
    n, (h, w) = stop - start, reader.shape[1:]
    out_dtype = writer.dtype
    n_py, n_px = ctx.grid_shape
    rigid_all = np.zeros((n, 2), np.float32)
    patch_all = np.zeros((n, n_py, n_px, 2), np.float32)
    corr_before = np.zeros(n, np.float32)
    corr_after = np.zeros(n, np.float32)
    sum_before = torch.zeros((h, w), dtype=torch.float64, device=device)
    sum_after = torch.zeros((h, w), dtype=torch.float64, device=device)
    batch = effective_batch(p, h, w)
    blocks = _prefetch(reader.iter_blocks(batch, start, stop))
    if progress:
        from tqdm import tqdm

        blocks = tqdm(blocks, total=math.ceil(n / batch), desc="motion", unit="batch")
    # compression + writing of batch k overlaps the registration of batch k+1
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calflow-motion-write")
    pending: Future | None = None
    try:
        for a0, block in blocks:
            x = torch.from_numpy(np.asarray(block, dtype=np.float32)).to(device)
            rigid, patch, _, corrected = ctx.reg.register(x)
            a = a0 - start
            b = a + x.shape[0]
            rigid_all[a:b] = rigid.cpu().numpy()
            patch_all[a:b] = (patch if patch is not None else rigid[:, None, None, :]).cpu().numpy()
            corr_before[a:b] = _corr_with(x, ctx.tz, ctx.margin).cpu().numpy()
            corr_after[a:b] = _corr_with(corrected, ctx.tz, ctx.margin).cpu().numpy()
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
    return _Frames(rigid_all, patch_all, corr_after, corr_before, sum_before.cpu().numpy(), sum_after.cpu().numpy())


def _finish(tmp: Path, template: np.ndarray, grid, frames: _Frames, n_t: int, p: MotionParams, device: str,
            batch: int, t_start: float, seconds_before: float = 0.0) -> dict[str, Any]:
    """Write the shifts, images and attrs of motion.zarr (its movie is written and closed) from the whole
    movie's per-frame results and sums; return the run statistics. ``seconds`` counts from
    ``t_start``, plus ``seconds_before`` (the template and chunk jobs of a split run)."""
    h, w = template.shape
    patch_all, rigid_all = frames.patch_shifts, frames.rigid_shifts
    corr_before, corr_after = frames.corr_with_template_before, frames.corr_with_template
    mean_before = (frames.sum_before / n_t).astype(np.float32)
    mean_after = (frames.sum_after / n_t).astype(np.float32)
    crisp_margin = int(math.ceil(np.abs(patch_all).max())) if n_t else 0
    crisp_margin = min(crisp_margin, min(h, w) // 4)
    crisp_before = crispness(mean_before, crisp_margin)
    crisp_after = crispness(mean_after, crisp_margin)
    cy = grid.centres_y if grid is not None else np.array([(h - 1) / 2])
    cx = grid.centres_x if grid is not None else np.array([(w - 1) / 2])
    shifts = MotionShifts(rigid_shifts=rigid_all, patch_shifts=patch_all,
                          patch_centers_y=cy.astype(np.float32), patch_centers_x=cx.astype(np.float32),
                          corr_with_template=corr_after, corr_with_template_before=corr_before)
    images = MotionImages(template=template, mean_before=mean_before, mean_after=mean_after)
    write_motion(tmp, shifts, images)
    seconds = time.perf_counter() - t_start + seconds_before
    stats = {
        "n_frames": n_t,
        "frame_shape": [h, w],
        "device": device,
        "piecewise": bool(grid is not None),
        "batch_frames": batch,
        "patch_grid": list(patch_all.shape[1:3]),
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


def _template(reader: MovieReader, p: MotionParams, device: torch.device) -> torch.Tensor:
    torch.manual_seed(p.seed)
    _, sample = _read_sample(reader, p.template_frames)
    return build_template(sample, p, device)


def _out_dtype(reader: MovieReader, p: MotionParams) -> np.dtype:
    return np.dtype(np.float32) if p.output_dtype == "float32" else np.dtype(reader.dtype)


def _correct_motion(reader: MovieReader, raw_store: Path, out_store: Path, p: MotionParams,
                    device: torch.device, progress: bool, t_start: float) -> dict[str, Any]:
    n_t, h, w = reader.shape
    with torch.inference_mode():
        ctx = _context(_template(reader, p, device), p, device)
        with atomic_output(out_store) as tmp:
            writer = movie_writer(tmp, (n_t, h, w), _out_dtype(reader, p), fps=reader.fps,
                                  chunk_frames=reader.chunk_frames, raw_attrs=reader.attrs, raw_store=raw_store)
            frames = _register_range(reader, ctx, p, device, writer, 0, n_t, progress)
            writer.close()
            return _finish(tmp, ctx.template.cpu().numpy(), ctx.reg.grid, frames, n_t, p, str(device),
                           effective_batch(p, h, w), t_start)


# ---------------------------------------------------------------------------------------------------------
# scatter-gather (motion.split_frames > 0): template job -> chunk jobs -> gather (docs/motion.md)
# ---------------------------------------------------------------------------------------------------------


def _open_raw(raw_store: Path) -> MovieReader:
    """raw.zarr's reader; frames under 16 px are one CalflowInputError."""
    reader = MovieReader(raw_store)
    h, w = reader.shape[1:]
    if min(h, w) < 16:
        raise CalflowInputError(f"frames are {h} x {w} px, too small to register", file=raw_store,
                                fix="motion correction needs frames of at least 16 x 16 px")
    return reader


class _threads:
    """torch CPU threads as :func:`correct_motion` sets them, restored on exit."""

    def __init__(self, p: MotionParams, device: torch.device):
        self.p, self.device = p, device

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(self.p.num_threads or _auto_threads())

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def motion_template(raw_store: str | Path, template_store: str | Path, *,
                    params: MotionParams | Mapping[str, Any] | None = None,
                    split_frames: int | None = None) -> SplitPlan:
    """The template job of a split run: build the template exactly as :func:`correct_motion` does and
    write it with the plan (``split_frames``, default ``params.split_frames``, rounded up to whole raw.zarr
    chunks) to ``template_store`` (:func:`calflow.motion.split.write_template_store`). Returns the plan."""
    t_start = time.perf_counter()
    p = MotionParams.from_config(params)
    split = int(split_frames if split_frames is not None else p.split_frames)
    if split < 1:
        raise invalid("motion", "split_frames", split, "the template job of a split run needs it > 0",
                      "set motion.split_frames to the frames per chunk job (0 runs one motion job)")
    raw_store = Path(raw_store)
    reader = _open_raw(raw_store)
    n_t, h, w = reader.shape
    window_warning(p.max_shift, h, w, raw_store)
    plan = plan_split(n_t, reader.chunk_frames, split)
    device = p.torch_device()
    with _threads(p, device), torch.inference_mode():
        template = _template(reader, p, device).cpu().numpy()
    attrs = {"motion_params": p.to_dict(), "raw_store": str(raw_store), "device": str(device),
             "seconds": round(time.perf_counter() - t_start, 3)}
    write_template_store(template_store, template, plan, attrs)
    return plan


def _template_for(raw_store: str | Path, template_store: str | Path, p: MotionParams):
    """(the template store's record, the raw movie's reader) of a split run's chunk or gather job, after
    checking that the template was made with ``p`` and planned for this movie's frame count."""
    template_store = Path(template_store)
    tpl = read_template_store(template_store)
    if tpl.attrs.get("motion_params") != p.to_dict():
        raise CalflowInputError("the template was made with other motion parameters", file=template_store,
                                fix=rerun_fix(template_store, "motion_template"))
    reader = _open_raw(Path(raw_store))
    if reader.shape[0] != tpl.plan.n_frames:
        raise CalflowInputError(f"raw movie has {reader.shape[0]} frames, the template's plan "
                                f"{tpl.plan.n_frames}", file=template_store,
                                fix=rerun_fix(template_store, "motion_template"))
    return tpl, reader


def motion_chunk(raw_store: str | Path, template_store: str | Path, part_store: str | Path, index: int, *,
                 params: MotionParams | Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Chunk job ``index`` of a split run: register and warp its frames (the plan's ``bounds(index)``)
    to the template of ``template_store``, batch by batch from its first frame, and write them with their
    shifts, correlations and sums to ``part_store`` (atomically; :mod:`calflow.motion.split`)."""
    t_start = time.perf_counter()
    p = MotionParams.from_config(params)
    tpl, reader = _template_for(raw_store, template_store, p)
    if not 0 <= index < tpl.plan.n_chunks:
        raise CalflowInputError(f"chunk {index} does not exist: the plan has {tpl.plan.n_chunks}",
                                file=template_store, fix="ask for chunks 0 to n_chunks - 1")
    start, stop = tpl.plan.bounds(index)
    h, w = reader.shape[1:]
    device = p.torch_device()
    with _threads(p, device), torch.inference_mode():
        ctx = _context(torch.from_numpy(tpl.template).to(device), p, device)
        with atomic_output(part_store) as tmp:
            writer = MovieWriter(tmp, (stop - start, h, w), _out_dtype(reader, p), fps=reader.fps,
                                 chunk_frames=tpl.plan.chunk_frames)
            frames = _register_range(reader, ctx, p, device, writer, start, stop, progress)
            writer.close()
            stats = {"index": index, "start": start, "stop": stop, "n_chunks": tpl.plan.n_chunks,
                     "template_sha256": tpl.attrs["template_sha256"], "device": str(device),
                     "seconds": round(time.perf_counter() - t_start, 3)}
            write_part_arrays(tmp, {a: getattr(frames, a) for a in PART_FRAME_ARRAYS},
                              {a: getattr(frames, a) for a in PART_SUM_ARRAYS}, stats)
    return stats


def motion_gather(raw_store: str | Path, template_store: str | Path, part_stores: Sequence[str | Path],
                  out_store: str | Path, *, params: MotionParams | Mapping[str, Any] | None = None,
                  verify_chunks: bool = True) -> dict[str, Any]:
    """The gather of a split run: check that every part is present, complete and made with this template
    (:func:`calflow.motion.split.check_parts`; the first problem is one CalflowInputError and nothing is
    written), then write ``out_store`` with the same arrays and attrs as :func:`correct_motion`: the
    parts' encoded movie chunks taken as they are (hard links, no decoding), the per-frame arrays
    concatenated, the mean images from the summed float64 sums, crispness and statistics computed as
    there. ``seconds`` adds the template's and every chunk job's seconds to the gather's."""
    t_start = time.perf_counter()
    p = MotionParams.from_config(params)
    raw_store, template_store = Path(raw_store), Path(template_store)
    tpl, reader = _template_for(raw_store, template_store, p)
    n_t, h, w = reader.shape
    out_dtype = _out_dtype(reader, p)
    parts = check_parts(part_stores, tpl, dtype=out_dtype, frame_shape=(h, w), verify_chunks=verify_chunks)
    frames = _Frames(**{a: np.concatenate([r.frames[a] for r in parts]) for a in PART_FRAME_ARRAYS},
                     **{a: _ordered_sum([r.sums[a] for r in parts]) for a in PART_SUM_ARRAYS})
    grid = PatchGrid.make(h, w, p.patch_size, p.overlap) if p.piecewise else None  # as Registration's
    devices = ",".join(dict.fromkeys(str(r.attrs.get("device")) for r in parts))
    before = float(tpl.attrs.get("seconds", 0.0)) + sum(float(r.attrs.get("seconds", 0.0)) for r in parts)
    with atomic_output(out_store) as tmp:
        writer = movie_writer(tmp, (n_t, h, w), out_dtype, fps=reader.fps, chunk_frames=reader.chunk_frames,
                              raw_attrs=reader.attrs, raw_store=raw_store)
        for r in parts:
            part = MovieReader(r.path)
            if part.chunk_frames == writer.chunk_frames:
                writer.adopt_chunks(r.path)
            else:  # a last part shorter than a chunk (its writer made one shorter chunk): < 1 chunk to copy
                for _, block in part.iter_blocks():
                    writer.write(block)
        writer.close()
        return _finish(tmp, tpl.template, grid, frames, n_t, p, devices, effective_batch(p, h, w), t_start,
                       seconds_before=before)


def _ordered_sum(arrays: list[np.ndarray]) -> np.ndarray:
    """Sum in chunk order (float64, as the one-job path accumulates batch after batch)."""
    total = np.zeros_like(arrays[0], dtype=np.float64)
    for a in arrays:
        total += a
    return total
