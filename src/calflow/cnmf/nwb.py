"""NWB export of a whole session (pynwb), written atomically; the layout is in docs/nwb.md.

``{session}.nwb`` holds the session's metadata and Subject (:mod:`calflow.nwb_metadata`) and:

* ``acquisition/TwoPhotonSeries``: the acquired movie, linked, not copied (``nwb.movie``: TIFF
  sources as ``external_file`` paths relative to the NWB file, HDF5/NWB sources as an HDF5
  external link; ``copy`` streams raw.zarr into the file; ``none`` leaves it out);
* ``ophys/MotionCorrection``: ``CorrectedImageStack`` (the corrected movie streamed from
  motion.zarr, linked to the TwoPhotonSeries, with the rigid ``xy_translation``) and
  ``ophys/patch_shifts`` (time, patch_y, patch_x, 2) with the ``motion_patches`` table;
* ``ophys/SummaryImages``: summary.zarr's images and the motion template;
* ``ophys/ImageSegmentation/PlaneSegmentation``: one ROI per CNMF component as a weighted
  ``pixel_mask`` (x, y, weight) with ``accepted``, ``snr``, ``r_spatial``, centroid and AR columns;
  ``ophys/BackgroundSegmentation`` the background components (image masks);
* ``ophys/Fluorescence`` (``RoiResponseSeries`` = denoised C, ``RoiResponseSeriesRaw`` = C_raw,
  ``Background`` = f), ``ophys/DfOverF/RoiResponseSeries``, ``ophys/Deconvolved/RoiResponseSeries`` (S);
* ``intervals/photostimulation`` (one row per trial: times, frames, pattern, targets as a
  ``target_ids`` of ``ogen/photostimulation_targets``), or ``intervals/stimuli`` for a stimulus table;
* ``classification``: ``classifier_metrics``, ``classifier_per_target``, ``classifier_confusion``
  (metrics.json), ``GradCAM`` pattern maps and the ``GradCAM_ZNCC`` table (gradcam.zarr).

Images are written as NWB orders them, (x, y) = the stores' (y, x) transposed; movies (time, x, y).
Time of frame ``t`` is ``t / fps`` s from the session start. Nothing is read whole: movies are
streamed in blocks (hdmf ``GenericDataChunkIterator``).
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from collections.abc import Mapping
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError

log = logging.getLogger("calflow.nwb")

CHUNK_BYTES = 1 << 20   # target HDF5 chunk size of the movies, bytes
BUFFER_BYTES = 64 << 20  # movie frames read at a time, bytes
_TIFF = (".tif", ".tiff")
_HDF5 = (".h5", ".hdf5", ".nwb")


def _movie_iterator(store: str | Path, var: str = "movie"):
    """An hdmf iterator over a calflow movie store's (time, y, x) array, yielding (time, x, y)
    blocks of whole frames (at most :data:`BUFFER_BYTES`)."""
    from hdmf.data_utils import GenericDataChunkIterator

    from calflow.io import MovieReader

    reader = MovieReader(store, var)
    T, H, W = reader.shape
    frame = H * W * reader.dtype.itemsize
    chunk = max(1, min(T, CHUNK_BYTES // frame))
    buffer = max(chunk, min(T, (BUFFER_BYTES // frame) // chunk * chunk))

    class _Frames(GenericDataChunkIterator):
        def _get_data(self, selection: tuple[slice, ...]) -> np.ndarray:
            t, xs, ys = selection
            return np.ascontiguousarray(np.asarray(reader[t])[:, ys, xs].transpose(0, 2, 1))

        def _get_maxshape(self) -> tuple[int, int, int]:
            return (T, W, H)

        def _get_dtype(self) -> np.dtype:
            return reader.dtype

    return _Frames(buffer_shape=(buffer, W, H), chunk_shape=(chunk, W, H), display_progress=False)


def _io(data: Any, level: int) -> Any:
    """Wrap ``data`` for gzip level ``level`` (0: as is)."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO

    return H5DataIO(data, compression="gzip", compression_opts=level) if level else data


def _link_movie(spec: str, out_file: Path, n_frames: int) -> tuple[dict[str, Any], Any] | None:
    """TwoPhotonSeries kwargs that link the source movie ``spec`` as ingest opened it (TIFFs:
    ``external_file`` paths relative to ``out_file``'s folder with each file's starting frame;
    HDF5/NWB: the source dataset, which ``link_data`` writes as an HDF5 external link) and the open
    source to close after the write (or None); None when the source cannot be linked (zarr/npy, a
    dataset that is not plain HDF5, or a frame count that differs from raw.zarr's)."""
    import h5py

    from calflow.ingest import _open_source

    try:
        src = _open_source(spec)
    except CalflowInputError:
        return None  # moved or changed since ingest: the caller copies raw.zarr instead
    if int(src.shape[0]) != n_frames:
        src.close()
        return None
    if all(p.suffix.lower() in _TIFF for p in src.paths):
        starts = [int(s) for s in src._offsets]
        src.close()
        return {"external_file": [os.path.relpath(p.resolve(), out_file.resolve().parent) for p in src.paths],
                "format": "external", "starting_frame": starts, "num_samples": int(n_frames)}, None
    data = getattr(src, "_data", None)
    if isinstance(data, h5py.Dataset) and len(src.paths) == 1 and src.paths[0].suffix.lower() in _HDF5:
        return {"data": data}, src
    src.close()
    return None


DEFAULT_OPTIONS: dict[str, Any] = {"movie": "link", "corrected_movie": True, "compression": 4, "inspect": False,
                                   "experiment_description": "", "keywords": [], "related_publications": []}


def export_nwb(cnmf_store: str | Path, out_file: str | Path, *, session: str, condition: str = "",
               fps: float | None = None, animal: str | None = None, group: str | None = None,
               metadata: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
               raw: str | Path | None = None, motion: str | Path | None = None, summary: str | Path | None = None,
               stim_log: str | Path | None = None, targets: str | Path | None = None,
               gradcam: str | Path | None = None, classifier_metrics: str | Path | None = None) -> dict[str, Any]:
    """Write ``out_file`` (.nwb) from the session's stores; return {"n_rois", "n_frames", "items", "notes"}
    (and "nwbinspector": findings per importance with ``options["inspect"]``).

    ``metadata``: the session's metadata cells (:func:`calflow.nwb_metadata.raw_metadata`; parsed
    here, a bad value raises before anything is written); ``options``: the config's ``nwb`` section
    (:data:`DEFAULT_OPTIONS` for what is not given). Every store but ``cnmf_store`` is optional; what
    is given is written (docs/nwb.md). The file is written to a temporary sibling and renamed, so a
    failure leaves no ``out_file``.
    """
    from pynwb import NWBHDF5IO

    from calflow.cnmf.store import read_cnmf
    from calflow.io import atomic_output
    from calflow.nwb_metadata import DANDI_REQUIRED, parse_metadata

    out_file = Path(out_file)
    opts = {**DEFAULT_OPTIONS, **dict(options or {})}
    meta = parse_metadata(dict(metadata or {}), file=f"the metadata of session {session}")
    r = read_cnmf(cnmf_store)
    rate = float(fps if fps is not None else r["attrs"]["fps"])
    K, T = r["C"].shape
    notes = [f"{', '.join(c for c in DANDI_REQUIRED if c not in meta)} not given: dandi validate will fail "
             "(the run's start-up warning names the fix)"] if any(c not in meta for c in DANDI_REQUIRED) else []
    with ExitStack() as opened, warnings.catch_warnings():
        # pynwb: the series' ROI regions are linked before the module holds them, and the temporary
        # file name does not end in .nwb; neither matters for the file written
        warnings.filterwarnings("ignore", message=".*(does not share an ancestor|does not end in '.nwb').*")
        nwb, plane = _new_file(session, condition, animal, group, meta, opts, r["attrs"], raw, rate, notes)
        level = int(opts["compression"])
        twop = _add_movie(nwb, plane, raw, out_file, opts, level, rate, notes, opened) if raw else None
        ophys = nwb.create_processing_module(name="ophys", description="calflow: motion correction, summary "
                                                                       "images, CNMF cells and traces")
        items = ["TwoPhotonSeries"] if twop is not None else []
        if motion:
            items += _add_motion(ophys, motion, twop, opts["corrected_movie"], level, rate)
        items += _add_summary(ophys, summary, motion)
        items += _add_cells(ophys, plane, r, level, rate)
        if stim_log:
            items += _add_stimulation(nwb, stim_log, targets, rate, T)
        if gradcam or classifier_metrics:
            items += _add_classification(nwb, session, gradcam, classifier_metrics)
        _check_space(out_file, nwb)
        with atomic_output(out_file) as tmp, NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb, link_data=True)
    for line in notes:  # in the job's log; the run's start-up warning covers the sheet as a whole
        log.info("%s: %s", session, line)
    out: dict[str, Any] = {"n_rois": int(K), "n_frames": int(T), "items": items, "notes": notes}
    if opts["inspect"]:  # after the rename: external files are checked relative to the final path
        out["nwbinspector"] = _log_inspection(out_file)
    return out


# a file's size beyond its datasets: the cached NWB schema (~170 kB) and each object's metadata
OVERHEAD_BYTES, OBJECT_BYTES = 256 << 10, 2 << 10


def _data_bytes(data: Any) -> int:
    """Bytes ``data`` (an array, list, hdmf DataIO or chunk iterator) takes in the file, uncompressed;
    0 for an h5py dataset (written as a link)."""
    import h5py
    from hdmf.data_utils import AbstractDataChunkIterator, DataIO

    if isinstance(data, DataIO):
        return _data_bytes(data.data)
    if data is None or isinstance(data, h5py.Dataset | str | bytes):
        return 0
    if isinstance(data, AbstractDataChunkIterator):
        return int(np.prod(data.maxshape)) * np.dtype(data.dtype).itemsize
    if isinstance(data, np.ndarray):
        return int(data.nbytes)
    if isinstance(data, list | tuple):
        return 16 * len(data) + sum(_data_bytes(x) for x in data if isinstance(x, np.ndarray | list | tuple))
    return 8


def _file_bytes(nwb: Any) -> int:
    """An upper bound of the size of ``nwb`` written: every dataset uncompressed plus
    :data:`OVERHEAD_BYTES` and :data:`OBJECT_BYTES` per object."""
    objects = list(nwb.all_children())
    return OVERHEAD_BYTES + OBJECT_BYTES * len(objects) + sum(_data_bytes(getattr(o, "data", None)) for o in objects)


def _check_space(out_file: Path, nwb: Any) -> None:
    """Refuse to start the write (the usual one-line disk-full error) when the filesystem of
    ``out_file`` has less free space than :func:`_file_bytes`: HDF5 2.0 can crash the process (at
    exit, after the clean error) when the disk fills in the middle of a write (docs/nwb.md)."""
    import shutil

    from calflow.errors import disk_full

    out_file.parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(out_file.parent).free < _file_bytes(nwb):
        raise disk_full(out_file)


def _new_file(session: str, condition: str, animal: str | None, group: str | None, meta: Mapping[str, Any],
              opts: Mapping[str, Any], attrs: Mapping[str, Any], raw: str | Path | None, rate: float,
              notes: list[str]) -> tuple[Any, Any]:
    """The NWBFile with its session metadata, Subject, Device and ImagingPlane; returns (file, plane)."""
    from pynwb import NWBFile
    from pynwb.file import Subject
    from pynwb.ophys import OpticalChannel

    from calflow.ingest.store import read_raw

    H, W = attrs["frame_shape"]
    version = attrs.get("calflow_version") or (read_raw(raw).calflow_version if raw else "")
    start = meta.get("session_start_time")
    if start is None:
        notes.append("session_start_time not given: written as 1970-01-01 UTC")
        start = datetime(1970, 1, 1, tzinfo=UTC)
    keywords = [k for k in dict.fromkeys([*opts["keywords"], condition, group or ""]) if k]
    who = animal or meta.get("subject_id") or session
    described = [f"calflow session {session}: animal {who}"] + [f"{k} {v}" for k, v in
                                                                 (("condition", condition), ("group", group)) if v]
    nwb = NWBFile(
        session_description=", ".join(described),
        identifier=str(uuid.uuid4()),  # unique per file, as DANDI asks
        session_id=session, session_start_time=start, keywords=keywords or None,
        experimenter=meta.get("experimenter") or None, institution=meta.get("institution"), lab=meta.get("lab"),
        experiment_description=opts["experiment_description"] or None,
        related_publications=list(opts["related_publications"]) or None,
        source_script=f"calflow {version or ''}".strip(), source_script_file_name="calflow/cnmf/nwb.py")
    nwb.subject = Subject(
        subject_id=meta.get("subject_id") or who, species=meta.get("species"), sex=meta.get("sex"),
        age=meta.get("age"), age__reference="birth", genotype=meta.get("genotype"), strain=meta.get("strain"),
        description=f"animal {who}" + (f", group {group}" if group else ""))
    device = nwb.create_device(name="Microscope", description=meta.get("microscope") or "two-photon microscope")
    indicator = meta.get("indicator") or "unknown"
    channel = OpticalChannel(name="OpticalChannel", description=f"{indicator} fluorescence",
                             emission_lambda=meta.get("emission_lambda", np.nan))
    depth, px = meta.get("plane_depth"), meta.get("pixel_size")
    plane_kw: dict[str, Any] = {}
    if depth is not None:
        plane_kw.update(origin_coords=[0.0, 0.0, float(depth)], origin_coords_unit="micrometers",
                        reference_frame="origin: the field of view's corner (x, y) at the brain surface; "
                                        "z: depth below the surface")
    if px is not None:
        plane_kw.update(grid_spacing=[float(px), float(px)], grid_spacing_unit="micrometers")
    plane = nwb.create_imaging_plane(
        name="ImagingPlane", optical_channel=channel, imaging_rate=rate, device=device,
        description=f"{W} x {H} px field of view" + (f", {depth:g} um below the surface" if depth is not None else ""),
        excitation_lambda=meta.get("excitation_lambda", np.nan), indicator=indicator,
        location=meta.get("imaging_location") or "unknown", **plane_kw)
    return nwb, plane


def _add_movie(nwb: Any, plane: Any, raw: str | Path, out_file: Path, opts: Mapping[str, Any], level: int,
               rate: float, notes: list[str], opened: ExitStack) -> Any:
    """The acquired movie as acquisition/TwoPhotonSeries (linked, copied from raw.zarr, or none: None)."""
    from pynwb.ophys import TwoPhotonSeries

    from calflow.ingest.store import read_raw

    if opts["movie"] == "none":
        return None
    info = read_raw(raw)
    T, H, W = info.shape
    spec = info.source_spec or info.source
    linked = _link_movie(str(spec), out_file, int(T)) if opts["movie"] == "link" and spec else None
    if linked is None:
        if opts["movie"] == "link":
            notes.append(f"the source movie {spec} cannot be linked (not TIFF or HDF5/NWB, or changed since "
                         "ingest): copied from raw.zarr instead")
        kw, how = {"data": _io(_movie_iterator(raw), level)}, "copied from raw.zarr, (time, x, y)"
    else:
        kw, source = linked
        if source is not None:
            opened.callback(source.close)
        how = ("external files " + ", ".join(kw["external_file"]) if "external_file" in kw
               else "an HDF5 external link to the source's dataset, in its (time, y, x) order")
    twop = TwoPhotonSeries(name="TwoPhotonSeries", imaging_plane=plane, rate=rate, unit="a.u.", dimension=[W, H],
                           description=f"the acquired movie ({how}); source {spec}, "
                                       f"sha256 {info.source_sha256 or '?'}", **kw)
    nwb.add_acquisition(twop)
    return twop


def _add_motion(ophys: Any, motion: str | Path, twop: Any, corrected_movie: bool, level: int,
                rate: float) -> list[str]:
    """MotionCorrection (the corrected movie with the rigid shifts; without the movie, or without an
    acquired movie to point to, the rigid ``xy_translation`` alone), ``patch_shifts`` and ``motion_patches``."""
    from hdmf.common import DynamicTable
    from pynwb import TimeSeries
    from pynwb.image import ImageSeries
    from pynwb.ophys import CorrectedImageStack, MotionCorrection

    from calflow.motion.store import read_shifts

    ms = read_shifts(motion)
    shifts = np.asarray(ms.rigid_shifts, np.float64)          # (T, 2) (dy, dx) px
    xy = TimeSeries(name="xy_translation", data=-shifts[:, ::-1], unit="pixels", rate=rate,
                    description="(x, y) px that align each frame to the template: minus calflow's rigid "
                                "shift (dx, dy), the displacement of the content")
    items = []
    if corrected_movie and twop is not None:
        corrected = ImageSeries(name="corrected", data=_io(_movie_iterator(motion), level), unit="a.u.",
                                rate=rate, description="motion-corrected movie (motion.zarr), (time, x, y)")
        ophys.add(MotionCorrection(corrected_image_stacks=[CorrectedImageStack(
            name="CorrectedImageStack", corrected=corrected, original=twop, xy_translation=xy)]))
        items.append("MotionCorrection")
    else:
        ophys.add(xy)
        items.append("xy_translation")
    patch = np.asarray(ms.patch_shifts, np.float64)             # (T, py, px, 2) (dy, dx)
    ophys.add(TimeSeries(name="patch_shifts", data=_io(patch, level), unit="pixels", rate=rate,
                         description="piecewise shifts (dy, dx) px per patch (time, patch_y, patch_x, axis), "
                                     "rigid + residual, calflow's convention (the displacement of the content); "
                                     "patch centres in motion_patches"))
    cy, cx = np.asarray(ms.patch_centers_y, np.float64), np.asarray(ms.patch_centers_x, np.float64)
    iy, ix = np.meshgrid(np.arange(len(cy)), np.arange(len(cx)), indexing="ij")
    patches = DynamicTable(name="motion_patches", description="patch grid of patch_shifts: one row per patch",
                           id=np.arange(iy.size))
    for col, what, data in (("patch_y", "row of the patch grid", iy.ravel()),
                            ("patch_x", "column of the patch grid", ix.ravel()),
                            ("center_y", "patch centre y, px", cy[iy.ravel()]),
                            ("center_x", "patch centre x, px", cx[ix.ravel()])):
        patches.add_column(name=col, description=what, data=data)
    ophys.add(patches)
    return [*items, "patch_shifts", "motion_patches"]


def _add_summary(ophys: Any, summary: str | Path | None, motion: str | Path | None) -> list[str]:
    """summary.zarr's 2-D images and the motion template as ``SummaryImages`` (Images)."""
    from pynwb.base import Images
    from pynwb.image import GrayscaleImage

    from calflow.motion.store import read_images
    from calflow.summary.store import read_summary_images

    images = []
    if summary:
        found, _ = read_summary_images(summary)
        for name in sorted(found):
            arr = found[name]
            if arr.ndim == 2:
                images.append(GrayscaleImage(name=name, data=arr.T, description=f"summary image '{name}' "
                                             "(summary.zarr) of the corrected movie, (x, y)"))
    if motion:
        images.append(GrayscaleImage(name="motion_template", data=np.asarray(read_images(motion).template).T,
                                     description="the motion-correction template, (x, y)"))
    if not images:
        return []
    ophys.add(Images(name="SummaryImages", images=images, description="summary images of the session"))
    return ["SummaryImages"]


def _add_cells(ophys: Any, plane: Any, r: Mapping[str, Any], level: int, rate: float) -> list[str]:
    """CNMF's components (PlaneSegmentation with acceptance and metrics), background components
    and the traces C, C_raw, f, dF/F and S as RoiResponseSeries."""
    from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, RoiResponseSeries

    A = r["A"].tocsr()
    W = int(r["attrs"]["frame_shape"][1])
    K = int(r["C"].shape[0])
    seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(seg)
    ps = seg.create_plane_segmentation(name="PlaneSegmentation", description="CNMF spatial footprints (cnmf.zarr A)",
                                       imaging_plane=plane)
    if K:  # (hdmf cannot write an empty column: a session without components gets an empty table)
        for col, what in (("accepted", "passed the SNR and spatial-correlation tests (cnmf.min_snr, min_r_spatial)"),
                          ("snr", "peak transient over noise"),
                          ("r_spatial", "spatial correlation of the footprint with the data"),
                          ("centroid_y", "footprint centre y, px"), ("centroid_x", "footprint centre x, px"),
                          ("ar_coefficients", "AR coefficients g of the calcium model (g1, g2, ...)")):
            ps.add_column(name=col, description=what)
    for k in range(K):
        row = slice(A.indptr[k], A.indptr[k + 1])
        y, x = np.divmod(A.indices[row], W)
        mask = [(int(xi), int(yi), float(v)) for xi, yi, v in zip(x, y, A.data[row], strict=True)]
        ps.add_roi(pixel_mask=mask, accepted=bool(r["accepted"][k]), snr=float(r["snr"][k]),
                   r_spatial=float(r["r_spatial"][k]), centroid_y=float(r["centroids"][k, 0]),
                   centroid_x=float(r["centroids"][k, 1]), ar_coefficients=np.asarray(r["g"][k], np.float32))
    items = ["PlaneSegmentation"]
    nb = int(r["b"].shape[0])
    bg_ps = None
    if nb:
        bg_seg = ImageSegmentation(name="BackgroundSegmentation")
        ophys.add(bg_seg)
        bg_ps = bg_seg.create_plane_segmentation(name="PlaneSegmentation", imaging_plane=plane,
                                                 description="CNMF background components b (image masks, (x, y))")
        for i in range(nb):
            bg_ps.add_roi(image_mask=r["b"][i].T)
        items.append("BackgroundSegmentation")

    def series(name: str, data: np.ndarray, unit: str, what: str, table: Any, n: int) -> Any:
        region = table.create_roi_table_region(region=list(range(n)), description="all rows")
        return RoiResponseSeries(name=name, data=_io(np.ascontiguousarray(data.T, np.float32), level), rois=region,
                                 unit=unit, rate=rate, description=what)

    fluo = []
    if K:
        fluo = [series("RoiResponseSeries", r["C"], "a.u.", "denoised calcium C (movie units)", ps, K),
                series("RoiResponseSeriesRaw", r["C_raw"], "a.u.", "C plus its residual (raw trace, movie units)",
                       ps, K)]
    if nb:
        fluo.append(series("Background", r["f"], "a.u.", "CNMF background time courses f", bg_ps, nb))
    if fluo:
        ophys.add(Fluorescence(roi_response_series=fluo))
    if K:
        ophys.add(DfOverF(roi_response_series=series("RoiResponseSeries", r["dff"], "n.a.",
                                                      "dF/F against a running-percentile baseline", ps, K)))
        ophys.add(Fluorescence(name="Deconvolved", roi_response_series=series(
            "RoiResponseSeries", r["S"], "a.u.", "OASIS deconvolved spikes S (movie units)", ps, K)))
        items += ["RoiResponseSeries", "RoiResponseSeriesRaw", "DfOverF", "Deconvolved"]
    return items


def _log_inspection(path: Path) -> dict[str, int]:
    """Run :func:`inspect_nwb` on the written file and log its findings; returns counts per importance
    ({} when nwbinspector is not installed: one log line says so)."""
    try:
        found = inspect_nwb(path)
    except ImportError:
        log.warning("nwb.inspect: nwbinspector is not installed (pip install nwbinspector); %s was not checked",
                    path)
        return {}
    log.info("nwbinspector (DANDI configuration) on %s: %s", path, ", ".join(
        f"{len(v)} {k}" for k, v in found.items()) or "no findings")
    for k in ("CRITICAL", "BEST_PRACTICE_VIOLATION", "ERROR", "PYNWB_VALIDATION"):
        for msg in found.get(k, []):
            log.warning("nwbinspector %s: %s", k, msg)
    return {k: len(v) for k, v in found.items()}


def inspect_nwb(path: str | Path, config: str = "dandi") -> dict[str, list[str]]:
    """nwbinspector's findings on the NWB file ``path`` under its ``config`` (``dandi``: what
    ``dandi validate`` applies): importance (CRITICAL, BEST_PRACTICE_VIOLATION, ...) -> messages."""
    from nwbinspector import inspect_all, load_config

    found: dict[str, list[str]] = {}
    for m in inspect_all(path=str(path), config=load_config(config), progress_bar=False):
        if m is not None:
            where = m.location or m.object_name or ""
            found.setdefault(m.importance.name, []).append(f"{m.check_function_name} at {where}: {m.message}")
    return found


def _add_stimulation(nwb: Any, stim_log: str | Path, targets: str | Path | None, rate: float,
                     n_frames: int) -> list[str]:
    """Photostimulation trials (stim log ``frame,targets`` + targets table) or stimulus onsets
    (``frame,stimulus[,stop]``) as a TimeIntervals table; returns the items added."""
    import pandas as pd
    from hdmf.common import DynamicTable
    from pynwb.epoch import TimeIntervals

    from calflow.stimulation import find_trials, read_labels, read_targets

    head = pd.read_csv(stim_log, nrows=0).columns.str.strip()
    if "targets" not in head and "stimulus" in head:
        df = pd.read_csv(stim_log, dtype=str, keep_default_na=False)
        ti = TimeIntervals(name="stimuli", description=f"stimulus onsets of the stimulus table {Path(stim_log).name}")
        ti.add_column(name="start_frame", description="first frame of the stimulus")
        ti.add_column(name="stop_frame", description="frame after the stimulus (the stop column, else onset + 1)")
        ti.add_column(name="stimulus", description="the stimulus' name")
        for _, row in df.iterrows():
            a = int(row["frame"])
            b = int(row["stop"]) if "stop" in df.columns and str(row["stop"]).strip() else a + 1
            ti.add_interval(start_time=a / rate, stop_time=b / rate, start_frame=a, stop_frame=b,
                            stimulus=str(row["stimulus"]).strip())
        nwb.add_time_intervals(ti)
        return ["stimuli"]
    if not targets:
        return []
    tg = read_targets(targets)
    labels = read_labels(stim_log, tg, n_frames)
    trials = find_trials(labels, 1)
    module = nwb.create_processing_module(name="ogen", description="photostimulation (two-photon) targets")
    table = DynamicTable(name="photostimulation_targets", description=f"photostimulation targets "
                         f"({Path(targets).name}): ids, positions and radii in px of the movie", id=[int(i) for i in tg.ids])
    table.add_column(name="y", description="target centre y, px", data=tg.yx[:, 0].astype(np.float64))
    table.add_column(name="x", description="target centre x, px", data=tg.yx[:, 1].astype(np.float64))
    table.add_column(name="radius", description="target radius, px (NaN: not given)", data=tg.radius.astype(np.float64))
    module.add(table)
    ti = TimeIntervals(name="photostimulation", description=f"photostimulation trials of {Path(stim_log).name}: "
                       "maximal runs of frames with the same target set; times = frames / fps")
    ti.add_column(name="start_frame", description="first stimulated frame")
    ti.add_column(name="stop_frame", description="frame after the last stimulated frame")
    ti.add_column(name="pattern", description="the stimulated target ids joined by '+'")
    ti.add_column(name="target_ids", description="the stimulated targets' ids (the id column of "
                  "ogen/photostimulation_targets)", index=True)
    for a, b, pat in zip(trials.start, trials.stop, trials.pattern, strict=True):
        ti.add_interval(start_time=float(a) / rate, stop_time=float(b) / rate, start_frame=int(a), stop_frame=int(b),
                        pattern="+".join(tg.ids[j] for j in pat), target_ids=[int(tg.ids[j]) for j in pat])
    nwb.add_time_intervals(ti)
    return ["photostimulation", "photostimulation_targets"]


def _add_classification(nwb: Any, session: str, gradcam: str | Path | None,
                        metrics_file: str | Path | None) -> list[str]:
    """The classifier's held-out metrics of this session (metrics.json) and its Grad-CAM maps and
    pattern x pattern ZNCC (gradcam.zarr) in the processing module ``classification``."""
    from hdmf.common import DynamicTable
    from pynwb.base import Images
    from pynwb.image import GrayscaleImage

    from calflow.classify.store import read_classifier_metrics
    from calflow.gradcam.store import read_gradcam_arrays

    module = nwb.create_processing_module(
        name="classification", description="stimulation classifier (cross-fitted CNN ensemble of the animal) and "
                                           "its Grad-CAM connectivity maps (docs/classify.md)")
    items = []
    if metrics_file:
        m = read_classifier_metrics(metrics_file)
        s = m.get("sessions", {}).get(session)
        if s:
            test = s["test"]
            t = DynamicTable(name="classifier_metrics", description=f"held-out accuracy of the classifier "
                             f"{m.get('group', '')} on this session (metrics.json; accuracy rule in docs/classify.md)")
            scalars = {k: v for k, v in test.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            scalars.update(n_trials=s.get("n_trials", 0), train_accuracy=s.get("train_accuracy", float("nan")),
                           members=len((s.get("members") or {}).get("test_accuracy", [])) or 1)
            for k in scalars:
                where = "test." if k in test else "" if k != "members" else "members (ensemble size): "
                t.add_column(name=k, description=f"metrics.json sessions.{session}.{where}{k}")
            t.add_row(**{k: float(v) if isinstance(v, float) else int(v) for k, v in scalars.items()})
            module.add(t)
            per = test.get("per_target") or {}
            if per:
                pt = DynamicTable(name="classifier_per_target", description="held-out accuracy per stimulated target",
                                  id=[int(k) for k in per])
                pt.add_column(name="accuracy", description="share of the target's stimulated frames classified right",
                              data=[float(v["accuracy"]) for v in per.values()])
                pt.add_column(name="frames", description="held-out stimulated frames of the target",
                              data=[int(v["frames"]) for v in per.values()])
                module.add(pt)
            conf = test.get("confusion")
            if conf and conf.get("rows"):
                ct = DynamicTable(name="classifier_confusion", description="held-out frames: stimulated pattern "
                                  "(row) x top classifier output (columns: " + ", ".join(conf["columns"]) + ")",
                                  id=list(range(len(conf["rows"]))))
                ct.add_column(name="pattern", description="stimulated pattern ('none': no stimulation)",
                              data=list(conf["rows"]))
                ct.add_column(name="counts", description="frames per top output, in the order of the description",
                              data=np.asarray(conf["counts"], np.int64))
                module.add(ct)
            items.append("classifier_metrics")
    if gradcam:
        ga, g = read_gradcam_arrays(gradcam, ("pattern_maps", "pattern_trials", "zncc"))
        names = list(ga["patterns"])
        maps = np.asarray(g["pattern_maps"])
        module.add(Images(name="GradCAM", description=f"Grad-CAM map per stimulation pattern (signed, "
                          f"{ga.get('method')}, layer {ga.get('layer')}, mean over held-out trials and "
                          f"{ga.get('members')} ensemble members), (x, y) at the layer's resolution "
                          f"{ga.get('layer_shape')} of the {ga.get('frame_shape')} px frame",
                          images=[GrayscaleImage(name=f"pattern_{n}", data=maps[i].T, description=f"pattern {n}")
                                  for i, n in enumerate(names)]))
        zt = DynamicTable(name="GradCAM_ZNCC", description=f"pattern x pattern ZNCC of the Grad-CAM maps "
                          f"({ga.get('zncc_map')} maps): row i, column zncc[j] = ZNCC(pattern i, pattern j)",
                          id=list(range(len(names))))
        zt.add_column(name="pattern", description="target ids joined by '+'", data=names)
        zt.add_column(name="n_trials", description="held-out trials of the pattern",
                      data=np.asarray(g["pattern_trials"], np.int64))
        zt.add_column(name="zncc", description="ZNCC with every pattern, in row order",
                      data=np.asarray(g["zncc"], np.float64))
        module.add(zt)
        items += ["GradCAM", "GradCAM_ZNCC"]
    return items
