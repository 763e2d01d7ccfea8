"""Deconvolution of CNMF traces with OASIS (the ``oasis-deconv`` package, Friedrich et al. 2017).

:func:`deconvolve_traces` runs OASIS on each raw trace with an AR(1) or AR(2) calcium model whose
coefficients OASIS estimates from the trace's autocovariance, an L1 sparsity penalty under the noise
constraint ``|c - y|^2 = sn^2 T`` (noise ``sn`` from the power spectral density) and a non-negative
baseline. Returns the denoised traces ``C`` (baseline included, movie units), spikes ``S`` >= 0, the
baselines, the AR coefficients (K, 2) (zero-padded for AR(1)) and the noise levels.

Spike-time scoring against known spikes is in :mod:`calflow.cnmf.accuracy`.
"""

from __future__ import annotations

import logging
import warnings
from typing import NamedTuple

import numpy as np
from oasis.functions import deconvolve

log = logging.getLogger("calflow.cnmf")


class _Result(NamedTuple):
    c: np.ndarray
    s: np.ndarray
    b: float
    g: tuple
    lam: float


def deconvolve_traces(C_raw: np.ndarray, p: int = 2, *, penalty: int = 1) -> dict[str, np.ndarray]:
    """OASIS on every row of ``C_raw`` (K, T); ``p`` = 1 or 2 (AR order). See the module doc."""
    if p not in (1, 2):
        raise ValueError(f"AR order p must be 1 or 2, got {p}")
    K, T = C_raw.shape
    C = np.zeros((K, T), np.float32)
    S = np.zeros((K, T), np.float32)
    base = np.zeros(K, np.float32)
    g = np.zeros((K, 2), np.float32)
    sn = np.zeros(K, np.float32)
    for k in range(K):
        y = np.asarray(C_raw[k], np.float64)
        scale = float(np.abs(y).max()) if T else 0.0
        if T < 10 or scale == 0 or not np.isfinite(y).all() or np.ptp(y) == 0:
            C[k] = y
            base[k] = float(np.median(y)) if T else 0.0
            continue
        res = None
        for order in ((2, 1) if p == 2 else (1,)):  # AR(2) estimation can fail on short traces
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # OASIS warns about ill-conditioned AR estimates
                    # g=(None,)*order: AR coefficients estimated from the data; this spelling works with
                    # oasis-deconv 0.2 (conda-forge) and 0.3 (PyPI; there it is deprecated for tau_d/tau_r)
                    res = _Result(*deconvolve(y / scale, g=(None,) * order, penalty=penalty))
                break
            except (ValueError, np.linalg.LinAlgError, ZeroDivisionError) as err:
                log.warning("OASIS AR(%d) failed on component %d (%s)%s", order, k, err,
                            "; trying AR(1)" if order == 2 else "; trace kept undeconvolved")
        if res is None or not np.isfinite(res.c).all():
            C[k] = y
            base[k] = float(np.median(y))
            continue
        gk = np.atleast_1d(np.asarray(res.g, np.float64))
        C[k] = (np.asarray(res.c) + res.b) * scale
        S[k] = np.clip(np.asarray(res.s), 0, None) * scale
        base[k] = float(res.b) * scale
        g[k, : min(2, gk.size)] = gk[:2]
        sn[k] = float(np.std(y / scale - res.c - res.b)) * scale
    return {"C": C, "S": S, "baseline": base, "g": g, "sn": sn}
