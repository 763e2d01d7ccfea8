"""Scatter-gather motion correction of one session (``motion.split_frames`` > 0): the plan and the two
intermediate stores, without torch (the workflow reads the plan at DAG time).

* :class:`SplitPlan`: ``n_chunks`` time chunks of ``split_frames`` frames (the last one shorter), with
  ``split_frames`` a whole number of raw.zarr chunks, so every chunk job writes whole zarr chunks and
  the gather can take them as they are (:meth:`calflow.io.MovieWriter.adopt_chunks`).
* The template store (``motion_split/template.zarr``, the template job's output): ``template`` (y, x)
  float32 and attrs ``plan`` (the :class:`SplitPlan`), ``template_sha256``, ``motion_params``, ``device``,
  ``seconds``.
* A part store (``motion_split/part{k}.zarr``, chunk job ``k``): the corrected ``movie`` of frames
  ``start:stop`` (chunked like raw.zarr), the per-frame arrays of :data:`PART_FRAME_ARRAYS` for those
  frames, the float64 sums of the raw and corrected frames (``sum_before`` / ``sum_after``, (y, x), for
  the mean images), and attrs ``index``, ``start``, ``stop``, ``template_sha256``, ``device``, ``seconds``.

:func:`check_parts` is the gather's completeness check: every part present and readable, made from
this template and plan, every movie chunk present and intact, every array of the right shape; the
first problem is one :class:`~calflow.errors.CalflowInputError` naming the part and the fix.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs.checksum32 import crc32c_checksum

from calflow.errors import CalflowInputError
from calflow.io import MOVIE_VAR, MovieReader, atomic_output, open_group, write_array

PART_FRAME_ARRAYS = ("rigid_shifts", "patch_shifts", "corr_with_template", "corr_with_template_before")
PART_SUM_ARRAYS = ("sum_before", "sum_after")
_FRAME_DIMS = {"rigid_shifts": ("time", "axis"), "patch_shifts": ("time", "patch_y", "patch_x", "axis"),
               "corr_with_template": ("time",), "corr_with_template_before": ("time",)}


@dataclass(frozen=True)
class SplitPlan:
    """Frames ``[k * split_frames, min((k + 1) * split_frames, n_frames))`` go to chunk job ``k`` of
    ``n_chunks``; ``split_frames`` is a multiple of ``chunk_frames`` (raw.zarr's frames per zarr chunk)."""

    n_frames: int
    chunk_frames: int
    split_frames: int
    n_chunks: int

    def bounds(self, k: int) -> tuple[int, int]:
        """(start, stop) frames of chunk ``k``."""
        if not 0 <= k < self.n_chunks:
            raise IndexError(f"chunk {k} of a plan with {self.n_chunks} chunks")
        return k * self.split_frames, min((k + 1) * self.split_frames, self.n_frames)


def plan_split(n_frames: int, chunk_frames: int, split_frames: int) -> SplitPlan:
    """The plan for a movie of ``n_frames`` stored ``chunk_frames`` frames a chunk: ``split_frames``
    rounded up to a whole number of chunks (a chunk job then writes whole zarr chunks only)."""
    if split_frames < 1 or n_frames < 1 or chunk_frames < 1:
        raise ValueError(f"plan_split({n_frames}, {chunk_frames}, {split_frames}): all must be >= 1")
    chunk = min(chunk_frames, n_frames)  # MovieWriter's chunk length for this movie
    split = math.ceil(split_frames / chunk) * chunk
    return SplitPlan(n_frames, chunk, split, math.ceil(n_frames / split))


def template_sha256(template: np.ndarray) -> str:
    """SHA-256 of the template's float32 bytes: ties every part to the template it was made with."""
    return hashlib.sha256(np.ascontiguousarray(template, dtype=np.float32).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- template store
def write_template_store(path: str | Path, template: np.ndarray, plan: SplitPlan,
                         attrs: Mapping[str, Any]) -> None:
    """The template job's output, whole or not at all: ``template`` and attrs (``plan``,
    ``template_sha256`` and ``attrs``: ``motion_params``, ``device``, ``seconds``, ...)."""
    with atomic_output(path) as tmp:
        zarr.open_group(tmp, mode="w", zarr_format=3).attrs.update(
            {**dict(attrs), "plan": asdict(plan), "template_sha256": template_sha256(template)})
        write_array(tmp, "template", np.asarray(template, dtype=np.float32), ("y", "x"))


@dataclass(frozen=True)
class TemplateRecord:
    """The template store: ``template`` (y, x) float32, its plan and attrs."""

    template: np.ndarray
    plan: SplitPlan
    attrs: Mapping[str, Any]


def rerun_fix(path: Path, rule: str) -> str:
    """The fix of a bad template or part store: delete it and let Snakemake make it again."""
    return f"delete {path} and rerun the workflow (Snakemake makes it again with rule {rule})"


def read_plan(path: str | Path) -> SplitPlan:
    """Only the plan of a template store (its group metadata; the template is not read)."""
    return _open_template(Path(path))[1]


def _open_template(path: Path) -> tuple[zarr.Group, SplitPlan]:
    try:
        group = open_group(path, mode="r")
        plan = SplitPlan(**group.attrs["plan"])
    except Exception as err:  # noqa: BLE001 - zarr raises many types for broken stores
        raise CalflowInputError(f"not a readable motion template store ({type(err).__name__}: {err})",
                                file=path, fix=rerun_fix(path, "motion_template")) from err
    return group, plan


def read_template_store(path: str | Path) -> TemplateRecord:
    """The template, plan and attrs of a template store; an unreadable store or a template whose
    SHA-256 differs from the recorded one is one CalflowInputError line."""
    path = Path(path)
    group, plan = _open_template(path)
    try:
        template = np.asarray(group["template"][...], dtype=np.float32)
    except Exception as err:  # noqa: BLE001
        raise CalflowInputError(f"cannot read its template ({type(err).__name__}: {err})", file=path,
                                fix=rerun_fix(path, "motion_template")) from err
    attrs = dict(group.attrs)
    if template_sha256(template) != attrs.get("template_sha256"):
        raise CalflowInputError("the template does not match its recorded SHA-256", file=path,
                                fix=rerun_fix(path, "motion_template"))
    return TemplateRecord(template, plan, attrs)


# ---------------------------------------------------------------------------------------------- part stores
def write_part_arrays(path: str | Path, frames: Mapping[str, np.ndarray], sums: Mapping[str, np.ndarray],
                      attrs: Mapping[str, Any]) -> None:
    """Add a part's per-frame arrays (:data:`PART_FRAME_ARRAYS`), its float64 sums
    (:data:`PART_SUM_ARRAYS`) and attrs to the part store whose movie is written and closed."""
    for name in PART_FRAME_ARRAYS:
        write_array(path, name, np.asarray(frames[name], dtype=np.float32), _FRAME_DIMS[name])
    for name in PART_SUM_ARRAYS:
        write_array(path, name, np.asarray(sums[name], dtype=np.float64), ("y", "x"))
    zarr.open_group(path, mode="a").attrs.update(dict(attrs))


@dataclass(frozen=True)
class PartRecord:
    """One checked part: its frames ``start:stop``, per-frame arrays, float64 sums and attrs."""

    path: Path
    start: int
    stop: int
    frames: Mapping[str, np.ndarray]
    sums: Mapping[str, np.ndarray]
    attrs: Mapping[str, Any]


def _verify_chunks(reader: MovieReader) -> None:
    """Every movie chunk of ``reader`` is intact: its CRC-32C (the last codec of calflow's stores, the
    checksum of the encoded bytes) is recomputed from the file, without decompressing; a store without
    that codec is decoded chunk by chunk instead. A bad chunk is one CalflowInputError naming it."""
    array = open_group(reader.store, mode="r")[MOVIE_VAR]
    codecs = array.metadata.to_dict()["codecs"]
    if crc32c_checksum is None or not codecs or codecs[-1].get("name") != "crc32c":
        for _ in reader.iter_blocks(reader.chunk_frames):  # zarr checks what its codecs can
            pass
        return
    for idx in np.ndindex(*array.cdata_shape):
        key = array.metadata.encode_chunk_key(idx)
        data = (reader.store / MOVIE_VAR / key).read_bytes()
        if len(data) < 4 or np.uint32(crc32c_checksum(data[:-4])).tobytes() != data[-4:]:
            a = idx[0] * reader.chunk_frames
            b = min(a + reader.chunk_frames, reader.shape[0]) - 1
            raise CalflowInputError(f"chunk {MOVIE_VAR}/{key} (frames {a}-{b}) is corrupt (CRC-32C checksum mismatch)",
                                    file=reader.store, fix="delete the store and rerun the stage that writes it")


def check_parts(parts: Sequence[str | Path], template: TemplateRecord, *, dtype: np.dtype,
                frame_shape: tuple[int, int], verify_chunks: bool = True) -> list[PartRecord]:
    """Check that ``parts`` are the plan's chunks 0..n-1, in order, complete and made with ``template``;
    return their small arrays. The movies are not loaded: every chunk file must be present and, with
    ``verify_chunks``, its checksum is recomputed (:func:`_verify_chunks`). The first problem is one
    CalflowInputError naming the part and the fix; nothing is written."""
    plan = template.plan
    sha = template.attrs["template_sha256"]
    if len(parts) != plan.n_chunks:
        raise CalflowInputError(f"{len(parts)} part store(s) given, the plan has {plan.n_chunks} chunks of "
                                f"{plan.split_frames} frames", file=Path(parts[0]).parent if parts else None,
                                fix="give every part store of the plan, in order")
    records, grid = [], None
    for k, part in enumerate(map(Path, parts)):
        start, stop = plan.bounds(k)
        n = stop - start
        fix = rerun_fix(part, "motion_chunk")
        if not part.exists():
            raise CalflowInputError(f"part {k} of {plan.n_chunks} (frames {start}-{stop - 1}) is missing",
                                    file=part, fix=fix)
        try:
            group = open_group(part, mode="r")
            attrs = dict(group.attrs)
            missing = [a for a in (MOVIE_VAR, *PART_FRAME_ARRAYS, *PART_SUM_ARRAYS) if a not in group]
        except Exception as err:  # noqa: BLE001 - zarr raises many types for broken stores
            raise CalflowInputError(f"part {k} is not a readable zarr store ({type(err).__name__}: {err})",
                                    file=part, fix=fix) from err
        if missing:
            raise CalflowInputError(f"part {k} lacks {missing}; it is incomplete", file=part, fix=fix)
        if (attrs.get("index"), attrs.get("start"), attrs.get("stop")) != (k, start, stop):
            raise CalflowInputError(
                f"part {k} holds chunk {attrs.get('index')} (frames {attrs.get('start')}:{attrs.get('stop')}), "
                f"the plan has frames {start}:{stop} there", file=part, fix=fix)
        if attrs.get("template_sha256") != sha:
            raise CalflowInputError(f"part {k} was made with another template (its SHA-256 differs)",
                                    file=part, fix=fix)
        try:
            reader = MovieReader(part)  # every chunk file present (or one line naming the missing one)
            if verify_chunks:
                _verify_chunks(reader)
        except CalflowInputError as err:
            raise CalflowInputError(f"part {k}: {err.problem}", file=part, fix=fix) from err
        if reader.shape != (n, *frame_shape) or reader.dtype != dtype:
            raise CalflowInputError(f"part {k}'s movie is {reader.shape} {reader.dtype}, expected "
                                    f"{(n, *frame_shape)} {np.dtype(dtype)}", file=part, fix=fix)
        try:
            frames = {a: np.asarray(group[a][...]) for a in PART_FRAME_ARRAYS}
            sums = {a: np.asarray(group[a][...]) for a in PART_SUM_ARRAYS}
        except Exception as err:  # noqa: BLE001
            raise CalflowInputError(f"part {k}: an array does not read ({type(err).__name__}: {err})",
                                    file=part, fix=fix) from err
        grid = grid or frames["patch_shifts"].shape[1:]
        bad = [a for a, x in frames.items()
               if x.shape[0] != n or (a == "patch_shifts" and x.shape[1:] != grid)
               or (a == "rigid_shifts" and x.shape[1:] != (2,))]
        bad += [a for a, x in sums.items() if x.shape != tuple(frame_shape) or x.dtype != np.float64]
        if bad:
            raise CalflowInputError(f"part {k}: arrays {bad} have the wrong shape for frames {start}:{stop}",
                                    file=part, fix=fix)
        records.append(PartRecord(part, start, stop, frames, sums, attrs))
    return records
