"""What the tracking rules call.

:func:`track_animal` (rule ``track``): register every session's summary image to the reference session,
match the CNMF footprints across sessions and write their union (tracking.zarr, docs/tracking.md).
:func:`reextract_session` (rule ``track_traces``): CNMF of one session seeded by the union footprints
warped into it, so that every tracked cell has a trace on every day.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from calflow.errors import CalflowInputError
from calflow.tracking.match import candidate_scores, centroids, choose_threshold, match_union, warp_footprints
from calflow.tracking.params import TrackingParams
from calflow.tracking.register import Registration, identity, register
from calflow.tracking.store import read_tracking, write_seeds, write_tracking

log = logging.getLogger("calflow.tracking")


def reference_index(n_sessions: int, p: TrackingParams) -> int:
    """Index of the reference session among ``n_sessions`` (sheet order): the first or the middle one."""
    return 0 if p.reference == "first" else (n_sessions - 1) // 2


def _session_footprints(cnmf_store: str | Path, frame_shape: tuple[int, int],
                        accepted_only: bool) -> tuple[sp.csr_matrix, np.ndarray]:
    """CSR footprints (K', Y*X) of a cnmf.zarr and their component indices (K',) in it."""
    from calflow.cnmf.store import read_cnmf

    try:
        c = read_cnmf(cnmf_store)
    except Exception as err:  # noqa: BLE001 - zarr raises many types for broken stores
        raise CalflowInputError(f"not a readable cnmf store ({type(err).__name__}: {err})", file=cnmf_store,
                                fix="rerun rule cnmf for this session") from err
    if tuple(c["attrs"].get("frame_shape", ())) != tuple(frame_shape):
        raise CalflowInputError(f"footprints are for frames {c['attrs'].get('frame_shape')}, the summary images "
                                f"are {list(frame_shape)}", file=cnmf_store, fix="rerun rule cnmf for this session")
    idx = np.flatnonzero(c["accepted"]) if accepted_only else np.arange(c["A"].shape[0])
    return sp.csr_matrix(c["A"][idx]), idx.astype(np.int64)


def track_footprints(images: Sequence[np.ndarray], footprints: Sequence[sp.csr_matrix],
                     params: TrackingParams | Mapping[str, Any] | None = None, *, seed: int = 0) -> dict[str, Any]:
    """Register, match and unite the footprints of S sessions (the library core of :func:`track_animal`).

    ``images`` S summary images (Y, X), ``footprints`` S CSR (K_s, Y*X), in session order. Returns a dict:
    ``registrations`` (S Registration), ``threshold`` (match.Threshold), ``candidate_scores`` (n,),
    ``union`` (match.Union, its ``members``/``scores`` columns in session order), ``reference`` (index).
    """
    p = TrackingParams.from_config(params)
    S = len(images)
    shape = tuple(np.shape(images[0]))
    ref = reference_index(S, p)
    regs: list[Registration] = [identity(shape) if s == ref else register(images[ref], images[s], p, seed=seed)
                                for s in range(S)]
    order = [ref] + [s for s in range(S) if s != ref]
    warped = [warp_footprints(footprints[s], shape, regs[s].to_session) for s in order]
    cand = candidate_scores(warped, shape[1], p)
    thr = choose_threshold(cand, p, seed=seed)
    u = match_union(warped, shape[1], thr.value, p)
    back = np.argsort(order)  # union columns in `order` -> session order
    u = replace(u, members=u.members[:, back], scores=u.scores[:, back])
    return {"registrations": regs, "threshold": thr, "candidate_scores": cand, "union": u, "reference": ref}


def track_animal(animal: str, sessions: Sequence[str], summary_stores: Sequence[str | Path],
                 cnmf_stores: Sequence[str | Path], out_store: str | Path, *,
                 params: TrackingParams | Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Track an animal's cells across its sessions -> ``tracking.zarr`` (docs/tracking.md); returns a summary."""
    from calflow.summary.store import read_summary_images

    p = TrackingParams.from_config(params)
    images = [read_summary_images(s, (p.image,))[0][p.image] for s in summary_stores]
    shape = images[0].shape
    for store, img in zip(summary_stores, images, strict=True):
        if img.shape != shape:
            raise CalflowInputError(f"frames of {list(img.shape)} px, but the animal's first session's are "
                                    f"{list(shape)}", file=store,
                                    fix="track only sessions of one field of view and frame size (same animal), or set "
                                        "tracking.enabled: false")
    fps, comp = zip(*(_session_footprints(c, shape, p.accepted_only) for c in cnmf_stores), strict=True)
    res = track_footprints(images, list(fps), p, seed=seed)
    u, thr, regs = res["union"], res["threshold"], res["registrations"]
    members = np.full_like(u.members, -1)  # row index among the selected components -> cnmf.zarr's index
    for s, c in enumerate(comp):
        hit = u.members[:, s] >= 0
        members[hit, s] = c[u.members[hit, s]]
    found = (members >= 0).sum(axis=1)
    info = {"animal": animal, "sessions": list(sessions), "reference": sessions[res["reference"]],
            "frame_shape": list(shape), "threshold": float(thr.value), "threshold_method": thr.method,
            "mixture_means": thr.means.tolist(), "mixture_sds": thr.sds.tolist(),
            "mixture_weights": thr.weights.tolist(), "n_cells": int(len(members)),
            "n_in_every_session": int((found == len(sessions)).sum()),
            "n_per_session": [int(len(c)) for c in comp], "transforms": [r.kind for r in regs],
            "image": p.image, "params": asdict(p), "cnmf_stores": [str(c) for c in cnmf_stores]}
    write_tracking(out_store, union=u.footprints, centroids=centroids(u.footprints, shape[1]), members=members,
                   scores=u.scores, to_session=np.stack([r.to_session for r in regs]),
                   to_reference=np.stack([r.to_reference for r in regs]),
                   rigid_shift=np.stack([r.rigid_shift for r in regs]), affine=np.stack([r.affine for r in regs]),
                   candidate_scores=res["candidate_scores"], reference_image=images[res["reference"]], attrs=info)
    log.info("tracking %s: %d cells, %d in every session, threshold %.3f (%s), transforms %s", animal,
             info["n_cells"], info["n_in_every_session"], thr.value, thr.method, info["transforms"])
    return info


def session_seeds(tracking_store: str | Path, session: str) -> sp.csr_matrix:
    """The union footprints warped into ``session``'s frames, CSR (U, Y*X), peak 1 each."""
    t = read_tracking(tracking_store)
    if session not in t.sessions:
        raise CalflowInputError(f"session {session!r} is not one of the animal's {list(t.sessions)}",
                                file=tracking_store, fix="rerun rule track for this animal")
    s = t.sessions.index(session)
    return warp_footprints(t.union, t.frame_shape, t.to_reference[s].astype(np.float64))


def reextract_session(tracking_store: str | Path, session: str, movie_store: str | Path,
                      summary_store: str | Path, seeds_store: str | Path, out_store: str | Path, *,
                      cnmf: Mapping[str, Any] | None = None, fps: float | None = None, seed: int = 0) -> dict[str, Any]:
    """CNMF of one session seeded by the animal's union footprints (no merging, no added components), so
    that component i of ``out_store`` (a cnmf.zarr, docs/cnmf.md) is union cell ``seed_index[i]``."""
    from calflow.cnmf.stage import (  # CNMFParams through stage: its module is being renamed
        CNMFParams,
        run_cnmf,
    )

    t = read_tracking(tracking_store)
    seeds = session_seeds(tracking_store, session)
    write_seeds(seeds_store, seeds, t.frame_shape, {"animal": t.animal, "session": session,
                                                     "source": str(tracking_store)})
    p = replace(CNMFParams.from_config(cnmf), merge_threshold=1.0, add_components=0, backend="calflow")
    return run_cnmf(movie_store, seeds_store, out_store, params=p, summary_store=summary_store, fps=fps, seed=seed)


def plot_animal(tracking_store: str | Path, summary_stores: Sequence[str | Path], out_png: str | Path) -> Path:
    """The animal's figure (:func:`calflow.tracking.plots.plot_tracking`) from its stores."""
    from calflow.summary.store import read_summary_images
    from calflow.tracking.plots import plot_tracking

    t = read_tracking(tracking_store)
    image = str(t.attrs.get("image", "mean"))
    return plot_tracking(t, [read_summary_images(s, (image,))[0][image] for s in summary_stores], out_png)

