"""NWB export of a session's CNMF results (pynwb), written atomically.

``{session}.nwb`` holds, in the processing module ``ophys``:

* ``ImageSegmentation/PlaneSegmentation``: one ROI per CNMF component as a weighted ``pixel_mask``
  (x, y, weight), with columns ``accepted``, ``snr`` and ``r_spatial``;
* ``Fluorescence/RoiResponseSeries``: ``C`` (denoised calcium, movie units), (time, roi);
* ``Fluorescence/RoiResponseSeriesRaw``: ``C_raw`` (C plus residual);
* ``DfOverF/RoiResponseSeries``: dF/F, (time, roi);
* ``Deconvolved/RoiResponseSeries`` (a ``Fluorescence`` container): spikes S.

The imaging rate is the session's fps; the condition is in ``session_description`` and the
keywords. The session's start time is not known to calflow: it is written as 1970-01-01 UTC.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np


def export_nwb(cnmf_store: str | Path, out_file: str | Path, *, session: str, condition: str = "",
               fps: float | None = None) -> dict[str, Any]:
    """Write ``out_file`` (.nwb) from ``cnmf_store``; return {"n_rois", "n_frames"}."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel, RoiResponseSeries

    from calflow.cnmf.store import read_cnmf
    from calflow.io import atomic_output

    r = read_cnmf(cnmf_store)
    attrs = r["attrs"]
    H, W = attrs["frame_shape"]
    rate = float(fps if fps is not None else attrs["fps"])
    A = r["A"].tocsr()
    K, T = r["C"].shape
    nwb = NWBFile(session_description=f"calflow session {session}" + (f", condition {condition}" if condition else ""),
                  identifier=f"calflow-{session}", session_id=session,
                  session_start_time=datetime(1970, 1, 1, tzinfo=UTC), keywords=[condition] if condition else None,
                  source_script="calflow cnmf", source_script_file_name="calflow/cnmf/nwb.py")
    device = nwb.create_device(name="Microscope", description="unknown (not recorded by calflow)")
    channel = OpticalChannel(name="OpticalChannel", description="calcium indicator", emission_lambda=np.nan)
    plane = nwb.create_imaging_plane(name="ImagingPlane", optical_channel=channel, imaging_rate=rate,
                                     description=f"{H} x {W} px field of view", device=device,
                                     excitation_lambda=np.nan, indicator="unknown", location="unknown")
    ophys = nwb.create_processing_module(name="ophys", description="calflow CNMF (cnmf.zarr)")
    seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(seg)
    ps = seg.create_plane_segmentation(name="PlaneSegmentation", description="CNMF spatial footprints",
                                       imaging_plane=plane)
    if K:  # (hdmf cannot write an empty column: a session without components gets an empty table)
        ps.add_column(name="accepted", description="passed the SNR and spatial-correlation tests")
        ps.add_column(name="snr", description="peak transient over noise")
        ps.add_column(name="r_spatial", description="spatial correlation of the footprint with the data")
    for k in range(K):
        row = slice(A.indptr[k], A.indptr[k + 1])
        y, x = np.divmod(A.indices[row], W)
        mask = [(int(xi), int(yi), float(v)) for xi, yi, v in zip(x, y, A.data[row], strict=True)]
        ps.add_roi(pixel_mask=mask, accepted=bool(r["accepted"][k]), snr=float(r["snr"][k]),
                   r_spatial=float(r["r_spatial"][k]))

    def series(name: str, data: np.ndarray, unit: str, what: str) -> RoiResponseSeries:
        region = ps.create_roi_table_region(region=list(range(K)), description="all CNMF components")
        return RoiResponseSeries(name=name, data=np.ascontiguousarray(data.T, np.float32), rois=region, unit=unit,
                                 rate=rate, description=what)

    with warnings.catch_warnings():
        # pynwb: the series' ROI regions are linked before the module holds them, and the temporary
        # file name does not end in .nwb; neither matters for the file written
        warnings.filterwarnings("ignore", message=".*(does not share an ancestor|does not end in '.nwb').*")
        if K:
            ophys.add(Fluorescence(roi_response_series=[
                series("RoiResponseSeries", r["C"], "a.u.", "denoised calcium C (movie units)"),
                series("RoiResponseSeriesRaw", r["C_raw"], "a.u.", "C plus its residual (raw trace)")]))
            ophys.add(DfOverF(roi_response_series=series("RoiResponseSeries", r["dff"], "n.a.",
                                                          "dF/F against a running-percentile baseline")))
            ophys.add(Fluorescence(name="Deconvolved", roi_response_series=series(
                "RoiResponseSeries", r["S"], "a.u.", "OASIS deconvolved spikes S")))
        with atomic_output(out_file) as tmp, NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
    return {"n_rois": int(K), "n_frames": int(T)}
