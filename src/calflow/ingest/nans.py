"""NaN policy (``ingest.nan_policy``): ``error`` lists every NaN frame in one message,
``fill_previous`` replaces NaN pixels by the previous frame's values (leading ones by the frame's mean)."""

from __future__ import annotations

import numpy as np

from calflow.errors import CalflowInputError
from calflow.ingest.frames import FrameSource


def _nan_frames(block: np.ndarray, first: int) -> list[int]:
    return [first + int(i) for i in np.nonzero(np.isnan(block).any(axis=(1, 2)))[0]]


def _handle_nans(
    block: np.ndarray, first: int, last_good: np.ndarray | None, policy: str, src: FrameSource, read_frames: int
):
    bad = np.isnan(block)
    if not bad.any():
        return block, block[-1]
    if policy == "error":
        frames = _nan_frames(block, first)
        for a in range(first + block.shape[0], src.shape[0], read_frames):  # list them all for the message
            frames += _nan_frames(src.read(a, min(a + read_frames, src.shape[0])), a)
        file = src.paths[0]
        shown = ", ".join(map(str, frames[:10])) + (" ..." if len(frames) > 10 else "")
        raise CalflowInputError(
            f"{len(frames)} frame(s) contain NaN (frames {shown})",
            file=file,
            fix="set ingest.nan_policy: fill_previous to replace NaN pixels by the previous frame's values, "
            "or drop those frames from the movie",
        )
    out = block.copy()
    for i in range(out.shape[0]):
        nan_i = np.isnan(out[i])
        if nan_i.any():
            if last_good is not None:
                out[i][nan_i] = last_good[nan_i]
            else:  # leading NaNs: use the frame's own finite mean
                finite = out[i][~nan_i]
                out[i][nan_i] = finite.mean() if finite.size else 0.0
        last_good = out[i]
    return out, last_good
