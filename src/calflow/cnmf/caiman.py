"""Optional backend ``cnmf.backend: caiman``: CaImAn's seeded CNMF, written to the same cnmf.zarr.

CaImAn is conda-only (the PyPI name ``caiman`` is an unrelated package), so it is imported lazily
and only inside rule ``cnmf_caiman``'s environment (envs/caiman.yaml, ``--sdm conda``). Without it,
:func:`require_caiman` raises :class:`~calflow.errors.CalflowInputError` naming the config key and
the fix. The adapter seeds CaImAn's ``CNMF`` with the segmenter's footprints (``Ain``), refits
(``fit`` on the memory-mapped movie), evaluates components and maps its fields onto the calflow
contract (A, C, C + YrA, S, dF/F, b, f, SNR, r_values, g).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError

FIX = ("install CaImAn from conda-forge (`conda install -c conda-forge caiman`) and run with "
       "`snakemake --sdm conda` (rule cnmf_caiman uses envs/caiman.yaml), or set cnmf.backend: calflow")


def require_caiman() -> Any:
    """Import and return the ``caiman`` module, or raise a CalflowInputError that says how to get it."""
    try:
        import caiman
        import caiman.source_extraction.cnmf.cnmf  # noqa: F401
        import caiman.source_extraction.cnmf.params  # noqa: F401
    except ImportError as err:
        raise CalflowInputError(f"config key cnmf.backend is 'caiman' but CaImAn is not importable ({err})",
                                file="config", fix=FIX) from err
    return caiman


def run_caiman(movie_store: str | Path, footprints_store: str | Path, out_store: str | Path, *, params: Any,
               fps: float | None = None) -> dict[str, Any]:
    """Seeded CaImAn CNMF of one session -> cnmf.zarr (same layout as calflow's backend)."""
    import tempfile

    import scipy.sparse as sp

    from calflow.cnmf.evaluate import dff
    from calflow.cnmf.store import write_cnmf
    from calflow.io import MovieReader
    from calflow.segment.footprints import read_footprints

    cm = require_caiman()
    cnmf = cm.source_extraction.cnmf.cnmf  # imported by require_caiman
    cm_params = cm.source_extraction.cnmf.params

    reader = MovieReader(movie_store)
    T, H, W = reader.shape
    fps = float(fps or reader.fps)
    seeds, _ = read_footprints(footprints_store)
    with tempfile.TemporaryDirectory() as tmp:
        # CaImAn reads a C-order memory map (frames x pixels) written block by block
        fname = Path(tmp) / f"Yr_d1_{H}_d2_{W}_d3_1_order_C_frames_{T}_.mmap"
        mm = np.memmap(fname, dtype=np.float32, mode="w+", shape=(T, H * W))
        for a, block in reader.iter_blocks(params.chunk_frames):
            mm[a: a + block.shape[0]] = block.reshape(block.shape[0], -1)
        mm.flush()
        Yr, dims, _ = cm.load_memmap(str(fname))
        images = np.reshape(Yr.T, [T, *dims], order="F")
        # CaImAn's pixels are Fortran-ordered (x fastest along columns of Ain)
        Ain = sp.csc_matrix(np.stack([np.asarray(seeds[k].todense()).reshape(H, W).ravel(order="F")
                                      for k in range(seeds.shape[0])], axis=1)) if seeds.shape[0] else None
        opts = cm_params.CNMFParams(params_dict={
            "fr": fps, "p": params.ar_order, "nb": params.nb, "merge_thr": params.merge_threshold,
            "rf": None, "only_init": False, "min_SNR": params.min_snr, "rval_thr": params.min_r_spatial,
            "use_cnn": False})
        model = cnmf.CNMF(n_processes=1, params=opts, Ain=Ain)
        model = model.fit(images)
        model.estimates.evaluate_components(images, model.params)
        est = model.estimates
        K = est.A.shape[1]
        A = sp.csr_matrix(np.stack([est.A[:, k].toarray().reshape(H, W, order="F").ravel() for k in range(K)]))
        C, YrA, S = est.C, est.YrA, est.S
        b = np.stack([est.b[:, j].reshape(H, W, order="F") for j in range(est.b.shape[1])])
        accepted = np.zeros(K, bool)
        accepted[est.idx_components] = True
        g = np.zeros((K, 2), np.float32)
        for k, gk in enumerate(est.g if est.g is not None else []):
            g[k, : min(2, len(gk))] = np.asarray(gk)[:2]
        A_dense = A.toarray()
        bg = ((A_dense @ b.reshape(b.shape[0], -1).T) @ est.f) / np.maximum((A_dense**2).sum(1), 1e-12)[:, None]
        dff_, _ = dff(C + YrA, bg, max(3, int(round(params.dff_window_s * fps))), params.dff_percentile)
        write_cnmf(out_store, A=A, C=C, C_raw=C + YrA, S=S, dff=dff_, b=b, f=est.f, accepted=accepted,
                   snr=np.asarray(est.SNR_comp, np.float32), r_spatial=np.asarray(est.r_values, np.float32), g=g,
                   frame_shape=(H, W), fps=fps, attrs={"backend": "caiman", "caiman_version": cm.__version__})
    return {"n_components": int(K), "n_accepted": int(accepted.sum()), "backend": "caiman"}
