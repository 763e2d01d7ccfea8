"""Step 2 of a session: render movie frames of a :class:`GroundTruth`.

:func:`iter_movie` and :func:`render_frames` render any frame range, block by block; a frame
depends only on (truth, frame index), never on the block or thread it was rendered in. Frames are
uint16 digital units with Poisson-Gaussian detector noise, or float32 expected digital units
(offset + gain * photons) without noise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from calflow.errors import CalflowInputError
from calflow.simulate.motion_field import _frame_field
from calflow.simulate.params import UINT16_MAX, _rng
from calflow.simulate.truth import GroundTruth


def _world_block(truth: GroundTruth, a: int, b: int) -> np.ndarray:
    """Noiseless un-moved fluorescence (n, Y+2p, X+2p) float32 for frames a..b-1, F units.

    Per-element sums in a fixed order (baseline, neuropil, background, cells), so a frame's
    values do not depend on the block it is computed in.
    """
    p, pad = truth.params, truth.pad
    world = np.full((b - a, p.height + 2 * pad, p.width + 2 * pad), p.baseline, np.float32)
    for i, t in enumerate(range(a, b)):  # frame by frame: temporaries of one frame only
        world[i] += truth.neuropil_trace[t] * truth.neuropil_map
        for r in range(truth.bg_maps.shape[0]):
            world[i] += truth.bg_traces[r, t] * truth.bg_maps[r]
    amp = truth.f0[:, None] + truth.calcium[:, a:b]  # (K, n) float32
    if truth.cell_scale is not None and np.any(truth.cell_scale[a:b] != 1):
        amp *= truth.cell_scale[None, a:b]  # expression level and bleaching
    for k, (y0, x0, box) in enumerate(truth.boxes):
        sl = world[:, pad + y0 : pad + y0 + box.shape[0], pad + x0 : pad + x0 + box.shape[1]]
        sl += amp[k][:, None, None] * box[None]
    return world


def _finish_frame(truth: GroundTruth, t: int, world_t: np.ndarray, noise: bool, motion: bool,
                  grid: np.ndarray | None) -> np.ndarray:
    """Warp one world frame, convert to photons/DU and add Poisson-Gaussian noise."""
    p, pad = truth.params, truth.pad
    Y, X = p.height, p.width
    if motion and grid is not None:
        coords = grid - _frame_field(truth, t)
        coords += pad
        F = ndimage.map_coordinates(world_t, coords, order=1, mode="nearest", output=np.float32)
    else:
        F = world_t[pad : pad + Y, pad : pad + X]
    if truth.artifact is not None and truth.artifact[t] != 0:
        F = F + truth.artifact[t]  # stimulation light in the detector: frame coordinates, does not move
    lam = F.astype(np.float64) * p.photons_per_unit
    if not noise:
        return (p.offset + p.gain * lam).astype(np.float32)
    rng = _rng(truth.seed, "noise", t)
    du = rng.poisson(lam).astype(np.float32)
    du *= np.float32(p.gain)
    du += np.float32(p.offset)
    if p.read_noise > 0:
        du += np.float32(p.read_noise) * rng.standard_normal((Y, X), dtype=np.float32)
    np.rint(du, out=du)
    np.clip(du, 0, UINT16_MAX, out=du)
    return du.astype(np.uint16)


def _default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _default_block(truth: GroundTruth) -> int:
    """Frames per block so that one float32 world block is ~16 MB."""
    p = truth.params
    per_frame = (p.height + 2 * truth.pad) * (p.width + 2 * truth.pad) * 4
    return int(max(1, min(256, 16e6 // per_frame)))


def iter_movie(
    truth: GroundTruth,
    start: int = 0,
    stop: int | None = None,
    *,
    block_frames: int | None = None,
    noise: bool = True,
    motion: bool = True,
    threads: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_frame, block)`` with blocks (n, Y, X) of the rendered movie.

    uint16 with ``noise=True``; float32 expected digital units (offset + gain * photons, no
    rounding or clipping) with ``noise=False``. ``motion=False`` renders the world (template)
    frame. Output is identical for any ``block_frames`` / ``threads``. Peak memory is about
    ``block_frames`` frames.
    """
    T = truth.n_frames
    stop = T if stop is None else stop
    if not (0 <= start <= stop <= T):
        raise CalflowInputError(f"frame range {start}:{stop} is outside 0:{T}", fix="pass 0 <= start <= stop <= T")
    block = int(block_frames or _default_block(truth))
    if block < 1:
        raise CalflowInputError(f"block_frames={block_frames} must be >= 1", fix="use e.g. 32")
    use_motion = motion and truth.has_motion
    grid = None
    if use_motion:
        Y, X = truth.params.height, truth.params.width
        grid = np.mgrid[0:Y, 0:X].astype(np.float64)
        _ = truth._basis_y, truth._basis_x, truth._static_field  # build the cached fields before threading
    n_threads = int(threads or _default_threads())
    starts = list(range(start, stop, block))
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        # the next block's world is computed while this block's frames are warped and noised
        nxt = pool.submit(_world_block, truth, starts[0], min(stop, starts[0] + block)) if starts else None
        for i, a in enumerate(starts):
            b = min(stop, a + block)
            world = nxt.result()
            if i + 1 < len(starts):
                nxt = pool.submit(_world_block, truth, starts[i + 1], min(stop, starts[i + 1] + block))
            n = b - a
            frames = list(pool.map(_finish_frame, [truth] * n, range(a, b), world, [noise] * n,
                                   [use_motion] * n, [grid] * n))
            del world
            yield a, np.stack(frames)


def render_frames(
    truth: GroundTruth,
    start: int = 0,
    stop: int | None = None,
    *,
    noise: bool = True,
    motion: bool = True,
    block_frames: int | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Frames start..stop-1 as (n, Y, X): uint16 (noise) or float32 expected DU (noise=False)."""
    stop = truth.n_frames if stop is None else stop
    blocks = [b for _, b in iter_movie(truth, start, stop, block_frames=block_frames, noise=noise,
                                       motion=motion, threads=threads)]
    if not blocks:
        Y, X = truth.params.height, truth.params.width
        return np.zeros((0, Y, X), np.uint16 if noise else np.float32)
    return np.concatenate(blocks)
