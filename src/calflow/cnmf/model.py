"""Seeded CNMF: Y ~ A C + b f + noise fitted by alternating HALS, streaming the movie in time chunks.

Shapes: P = H*W pixels (row-major, pixel = y*W + x), K components, nb background components,
T frames. ``A`` (K, P) and ``b`` (nb, P) are non-negative spatial maps scaled to unit maximum, so
``C`` (K, T) and ``f`` (nb, T) are in the movie's units (DU at the footprint's brightest pixel).

One pass over the movie per iteration, chunk by chunk (``chunk_frames`` frames at a time):

1. temporal HALS on the chunk's columns of [C; f] given [A; b] (frames are independent given the
   spatial maps, so the chunk is updated in place: ``U = [A; b] Y_c`` and ``V = [A; b][A; b]^T``);
2. the spatial sufficient statistics ``W += Y_c [C; f]_c^T`` (P, K+nb) and ``M += [C; f]_c [C; f]_c^T``.

After the pass, spatial HALS updates every footprint inside a dilated support of its seed
(``dilation`` px) and the background maps everywhere; then components with overlapping supports and
correlated traces are merged (:func:`calflow.cnmf.evaluate.merge_groups`). A last pass computes the
traces for the final maps, and the spatial correlation of every footprint with the data in the frames
where it is active (``r_spatial``). Peak memory is the chunk, ``W`` and the (K, T) traces: it does not
grow with T beyond the traces themselves.

Optionally (``add_components`` > 0) cells the seeds missed are added after the first pass by a
greedy search of the residual: peaks of its (gaussian-smoothed) peak-to-noise image outside every
support, each seeded as a disc of ``new_radius`` px.

Written here rather than taken from CaImAn because CaImAn is not installable from PyPI (docs/design.md);
the update rules are those of CNMF with HALS (Cichocki & Phan 2009; Pnevmatikakis et al. 2016).
Dense (K, P) maps: fine for hundreds of components on 512 x 512 frames (K*P*4 bytes each).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from calflow.cnmf.evaluate import merge_groups
from calflow.io import MovieReader

log = logging.getLogger("calflow.cnmf")


@dataclass
class FitSettings:
    """Numerical knobs of :func:`fit` (the stage builds them from the ``cnmf`` config section)."""

    n_iter: int = 2                 # alternating passes (temporal + spatial) before the final pass
    nb: int = 2                     # background rank
    dilation: int = 3               # px a footprint may grow beyond its seed
    chunk_frames: int = 200         # frames per streamed chunk
    hals_temporal: int = 5          # HALS sweeps of the traces per chunk
    hals_spatial: int = 5           # HALS sweeps of the maps per iteration
    merge_threshold: float = 0.85   # trace correlation above which overlapping components merge
    add_components: int = 0         # most cells added from the residual (0 = none)
    new_radius: float = 4.0         # px, disc radius of an added cell
    add_min_pnr: float = 15.0        # residual peak-to-noise a new cell needs
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class FitResult:
    """Fitted model; arrays are numpy. ``C_raw`` (K, T) are the HALS traces (C + residual)."""

    A: np.ndarray            # (K, P) float32, unit max per row
    C_raw: np.ndarray        # (K, T) float32
    b: np.ndarray            # (nb, P) float32
    f: np.ndarray            # (nb, T) float32
    r_spatial: np.ndarray    # (K,) float32
    seed_index: np.ndarray   # (K,) int64: seed row it grew from (-1 = added from the residual)
    merged: list[list[int]]  # groups of seed rows merged into one component
    n_added: int
    passes: int


def _dilate(masks: torch.Tensor, shape: tuple[int, int], px: int) -> torch.Tensor:
    """(K, P) bool -> (K, P) bool grown by ``px`` (disc structuring element) in the image plane."""
    if px <= 0 or masks.shape[0] == 0:
        return masks
    h, w = shape
    r = torch.arange(-px, px + 1, dtype=torch.float32)
    disc = ((r[:, None] ** 2 + r[None, :] ** 2) <= px * px + 1e-6).float()[None, None]
    out = F.conv2d(masks.float().reshape(-1, 1, h, w), disc.to(masks.device), padding=px)
    return (out > 0.5).reshape(masks.shape[0], -1)


def _hals_rows(X: torch.Tensor, U: torch.Tensor, V: torch.Tensor, sweeps: int,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """HALS for min ||Y - Z^T X|| over X >= 0 (rows of X updated in turn).

    X (R, N) current factor, U = Z Y (R, N), V = Z Z^T (R, R); ``mask`` (R, N) restricts rows' support.
    """
    diag = torch.clamp(torch.diagonal(V), min=1e-12)
    for _ in range(sweeps):
        for k in range(X.shape[0]):
            row = X[k] + (U[k] - V[k] @ X) / diag[k]
            row = torch.clamp(row, min=0)
            if mask is not None:
                row = row * mask[k]
            X[k] = row
    return X


def _blocks(reader: MovieReader, chunk: int, device: torch.device):
    for a, block in reader.iter_blocks(chunk):
        yield a, torch.from_numpy(block.reshape(block.shape[0], -1).astype(np.float32)).to(device)


def _background_init(mean: np.ndarray, nb: int) -> np.ndarray:
    """(nb, P) positive smooth maps: the mean image, then the mean image tilted along y and x."""
    h, w = mean.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    tilts = [np.ones_like(yy), 1 + 0.5 * yy, 1 + 0.5 * xx, 1 - 0.5 * yy, 1 - 0.5 * xx]
    maps = [np.clip(mean, 0, None) * tilts[j % len(tilts)] for j in range(nb)]
    return np.stack(maps).reshape(nb, -1).astype(np.float32) if nb else np.zeros((0, h * w), np.float32)


def _normalise(S: torch.Tensor, T: torch.Tensor) -> None:
    """Scale rows of S (maps) to unit max and rows of T (traces) inversely, in place."""
    m = S.amax(dim=1)
    ok = m > 0
    S[ok] /= m[ok, None]
    T[ok] *= m[ok, None]


def _mean_image(reader: MovieReader, chunk: int) -> np.ndarray:
    acc = np.zeros(reader.shape[1:], np.float64)
    for _, block in reader.iter_blocks(chunk):
        acc += block.sum(axis=0, dtype=np.float64)
    return (acc / max(reader.shape[0], 1)).astype(np.float32)


def _residual_candidates(res_max: torch.Tensor, res_sq: torch.Tensor, n_frames: int, covered: torch.Tensor,
                         shape: tuple[int, int], s: FitSettings) -> list[tuple[int, int]]:
    """Greedy peaks of the residual peak-to-noise image outside every support, strongest first.

    ``res_max`` is the largest smoothed residual per pixel, ``res_sq`` half the summed squared frame
    differences (their mean is the white-noise variance, little affected by slow transients).
    """
    noise = torch.sqrt(torch.clamp(res_sq / max(n_frames - 1, 1), min=1e-12))
    pnr = (res_max / noise).reshape(shape).cpu().numpy()
    free = ~covered.reshape(shape).cpu().numpy()
    r = int(np.ceil(s.new_radius))
    out: list[tuple[int, int]] = []
    pnr = np.where(free, pnr, 0)
    for _ in range(s.add_components):
        y, x = np.unravel_index(int(np.argmax(pnr)), shape)
        if pnr[y, x] < s.add_min_pnr:
            break
        out.append((int(y), int(x)))
        pnr[max(0, y - 2 * r): y + 2 * r + 1, max(0, x - 2 * r): x + 2 * r + 1] = 0
    return out


def _disc(center: tuple[int, int], radius: float, shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    d2 = (yy - center[0]) ** 2 + (xx - center[1]) ** 2
    return np.exp(-d2 / (2 * (radius / 1.5) ** 2)) * (d2 <= radius**2)


def _smooth_frames(Yc: torch.Tensor, shape: tuple[int, int], sigma: float) -> torch.Tensor:
    r = max(1, int(round(2 * sigma)))
    x = torch.arange(-r, r + 1, dtype=Yc.dtype, device=Yc.device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    img = Yc.reshape(-1, 1, *shape)
    img = F.conv2d(F.pad(img, (r, r, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1))
    img = F.conv2d(F.pad(img, (0, 0, r, r), mode="replicate"), k.reshape(1, 1, -1, 1))
    return img.reshape(Yc.shape)


def fit(reader: MovieReader, seeds: sp.csr_matrix, settings: FitSettings,
        mean_image: np.ndarray | None = None) -> FitResult:
    """Fit the CNMF model to the movie of ``reader`` from seed footprints (K, P) (see module doc)."""
    s = settings
    dev = s.device
    T = reader.shape[0]
    shape = (int(reader.shape[1]), int(reader.shape[2]))
    P = shape[0] * shape[1]
    passes = 0
    if mean_image is None:
        mean_image = _mean_image(reader, s.chunk_frames)
        passes += 1
    A = torch.from_numpy(np.asarray(seeds.todense(), np.float32)).to(dev)
    A = torch.clamp(A, min=0)
    keep = A.amax(dim=1) > 0
    seed_index = torch.arange(A.shape[0])[keep.cpu()].numpy().astype(np.int64)
    groups = [[int(i)] for i in seed_index]
    A = A[keep]
    A /= torch.clamp(A.amax(dim=1, keepdim=True), min=1e-12)
    support = _dilate(A > 0, shape, s.dilation)
    B = torch.from_numpy(_background_init(mean_image, s.nb)).to(dev)
    B /= torch.clamp(B.amax(dim=1, keepdim=True), min=1e-12)
    nb = B.shape[0]
    K = A.shape[0]
    C = torch.zeros((K + nb, T), dtype=torch.float32, device=dev)
    fresh = torch.ones(K + nb, dtype=torch.bool, device=dev)  # rows without a trace yet (least-squares start)
    n_added = 0

    def temporal(Yc: torch.Tensor, Z: torch.Tensor, V: torch.Tensor, a: int, fresh: torch.Tensor) -> torch.Tensor:
        U = Z @ Yc.T  # (R, t)
        Cc = C[:, a: a + Yc.shape[0]].clone()
        if bool(fresh.any()):
            ls = torch.linalg.lstsq(V.double(), U.double()).solution.float()
            Cc[fresh] = torch.clamp(ls[fresh], min=0)
        return _hals_rows(Cc, U, V, s.hals_temporal)

    for it in range(s.n_iter):
        Z = torch.cat([A, B])
        V = Z @ Z.T
        R = Z.shape[0]
        W = torch.zeros((P, R), dtype=torch.float64, device=dev)
        M = torch.zeros((R, R), dtype=torch.float64, device=dev)
        search = it == 0 and s.add_components > 0
        if search:
            res_max = torch.zeros(P, device=dev)
            res_sq = torch.zeros(P, dtype=torch.float64, device=dev)
        for a, Yc in _blocks(reader, s.chunk_frames, dev):
            Cc = temporal(Yc, Z, V, a, fresh)
            C[:, a: a + Yc.shape[0]] = Cc
            W += (Yc.T @ Cc.T).double()
            M += (Cc @ Cc.T).double()
            if search:
                res = _smooth_frames(Yc - Cc.T @ Z, shape, max(s.new_radius / 2, 1.0))
                res_max = torch.maximum(res_max, res.amax(dim=0))
                res_sq += (torch.diff(res, dim=0).double() ** 2).sum(dim=0) / 2  # white-noise power
        passes += 1
        fresh[:] = False
        # spatial HALS: neurons inside their dilated supports, background everywhere
        mask = torch.cat([support, torch.ones((nb, P), dtype=torch.bool, device=dev)]).float()
        Z = _hals_rows(Z.clone(), W.T.float(), M.float(), s.hals_spatial, mask)
        # while cells may still be missing, the background keeps its smooth initial maps (a free
        # background would soak up the missed cells' light before the residual search sees it)
        A, B = Z[:K].contiguous(), (B if search else Z[K:]).contiguous()
        Cn, Cb = C[:K], C[K:]
        _normalise(A, Cn)
        _normalise(B, Cb)
        alive = (A.amax(dim=1) > 0) & (Cn.amax(dim=1) > 0)
        if not bool(alive.all()):
            idx = torch.nonzero(alive).ravel()
            A, support = A[idx], support[idx]
            C = torch.cat([Cn[idx], Cb])
            sel = idx.cpu().numpy()
            seed_index, groups = seed_index[sel], [groups[i] for i in sel]
            K = A.shape[0]
        # merge overlapping, correlated components
        merge = merge_groups(A.cpu().numpy(), C[:K].cpu().numpy(), s.merge_threshold)
        if any(len(g) > 1 for g in merge):
            A, C, support, seed_index, groups = _merge(A, C, support, seed_index, groups, merge, K)
            K = A.shape[0]
        if search:
            covered = support.any(dim=0) if K else torch.zeros(P, dtype=torch.bool, device=dev)
            new = _residual_candidates(res_max, res_sq, T, covered, shape, s)
            if new:
                discs = torch.from_numpy(np.stack([_disc(c, s.new_radius, shape).ravel() for c in new])
                                         .astype(np.float32)).to(dev)
                A = torch.cat([A, discs])
                support = torch.cat([support, _dilate(discs > 0, shape, s.dilation)])
                C = torch.cat([C[:K], torch.zeros((len(new), T), device=dev), C[K:]])
                seed_index = np.concatenate([seed_index, -np.ones(len(new), np.int64)])
                groups = groups + [[] for _ in new]
                n_added = len(new)
                K = A.shape[0]
                fresh = torch.zeros(K + nb, dtype=torch.bool, device=dev)
                fresh[K - len(new): K] = True
                log.info("cnmf: %d component(s) added from the residual at %s", n_added, new)
        log.info("cnmf: iteration %d/%d: %d components", it + 1, s.n_iter, K)

    # final pass: traces for the final maps; spatial correlation in each component's active frames
    Z = torch.cat([A, B])
    V = Z @ Z.T
    prev = C[:K].clone()
    thr = _active_threshold(prev)
    E = torch.zeros((K, P), dtype=torch.float64, device=dev)
    for a, Yc in _blocks(reader, s.chunk_frames, dev):
        Cc = temporal(Yc, Z, V, a, fresh)
        C[:, a: a + Yc.shape[0]] = Cc
        sel = (prev[:, a: a + Yc.shape[0]] >= thr[:, None]).float()  # (K, t)
        resid = Yc - Cc.T @ Z  # (t, P)
        E += (sel @ resid).double() + (A * (sel * Cc[:K]).sum(dim=1, keepdim=True)).double()
    passes += 1
    r = _masked_corr(E.float(), A, support)
    return FitResult(A=A.cpu().numpy(), C_raw=C[:K].cpu().numpy(), b=B.cpu().numpy(), f=C[K:].cpu().numpy(),
                     r_spatial=r.cpu().numpy(), seed_index=seed_index, merged=[g for g in groups if len(g) > 1],
                     n_added=n_added, passes=passes)


def _active_threshold(C: torch.Tensor) -> torch.Tensor:
    """Per-row activity threshold: median + 3 robust noise sd, lowered to the 5th-highest value if needed."""
    if C.shape[0] == 0 or C.shape[1] == 0:
        return torch.zeros(C.shape[0], device=C.device)
    med = C.median(dim=1).values
    sn = (C[:, 1:] - C[:, :-1]).abs().median(dim=1).values / (0.6745 * np.sqrt(2)) if C.shape[1] > 1 else med * 0
    thr = med + 3 * sn
    top = torch.topk(C, k=min(5, C.shape[1]), dim=1).values[:, -1]
    return torch.minimum(thr, top)


def _masked_corr(E: torch.Tensor, A: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of rows of E and A over each row's support."""
    m = support.float()
    n = torch.clamp(m.sum(dim=1), min=1)
    me, ma = (E * m).sum(1) / n, (A * m).sum(1) / n
    de, da = (E - me[:, None]) * m, (A - ma[:, None]) * m
    num = (de * da).sum(1)
    den = torch.sqrt((de**2).sum(1) * (da**2).sum(1))
    return torch.where(den > 0, num / torch.clamp(den, min=1e-12), torch.zeros_like(num))


def _merge(A, C, support, seed_index, groups, merge, K):
    """Replace each group by one rank-1 component: a ~ sum_i a_i |c_i|, c its least-squares trace."""
    newA, newC, newS, newI, newG = [], [], [], [], []
    for g in merge:
        if len(g) == 1:
            i = g[0]
            newA.append(A[i]); newC.append(C[i]); newS.append(support[i])  # noqa: E702
            newI.append(seed_index[i]); newG.append(groups[i])  # noqa: E702
            continue
        idx = torch.as_tensor(g, device=A.device)
        norms = torch.linalg.vector_norm(C[idx], dim=1)
        a = (A[idx] * norms[:, None]).sum(0)
        a = a / torch.clamp(a.max(), min=1e-12)
        # least-squares trace of the group's summed contribution projected on the merged map
        c = ((A[idx] @ a)[:, None] * C[idx]).sum(0) / torch.clamp(a @ a, min=1e-12)
        newA.append(a); newC.append(c); newS.append(support[idx].any(0))  # noqa: E702
        newI.append(seed_index[g[0]]); newG.append(sorted(sum((groups[i] for i in g), [])))  # noqa: E702
        log.info("cnmf: merged components %s", g)
    A2 = torch.stack(newA)
    C2 = torch.cat([torch.stack(newC), C[K:]])
    return A2, C2, torch.stack(newS), np.asarray(newI, np.int64), newG
