"""Step 1 of a session: :func:`simulate` draws its ground truth, everything but the movie.

Cells (placement, soma footprints, brightness, kinetics), firing rates (spontaneous, a shared
population modulation, photostimulation with off-target excitation, drive through W) and spike
counts, AR(2) calcium, neuropil and background, rigid and non-rigid motion, the stimulation
schedule and the connectivity W, each from its own random stream. Memory is O(K*T + Y*X).
:func:`evoked_calcium` gives the expected calcium response per 1 Hz of extra rate.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, signal
from scipy.interpolate import CubicSpline
from scipy.special import expit

from calflow.errors import CalflowInputError
from calflow.simulate.params import SimParams, _check_seed, _rng
from calflow.simulate.truth import GroundTruth

_TIME_CHUNK = 4096  # frames per chunk when drawing spikes (part of the random-stream definition)


def _smooth_process(rng: np.random.Generator, n: int, T: int, tau_frames: float) -> np.ndarray:
    """(n, T) smooth stationary gaussian processes, zero mean, unit variance.

    White noise through two cascaded AR(1) filters with time constant ``tau_frames``;
    a burn-in of 5 tau makes the start stationary.
    """
    if n == 0:
        return np.zeros((0, T))
    a = math.exp(-1.0 / max(tau_frames, 1e-9))
    burn = int(min(5 * tau_frames, 20000)) + 2
    x = rng.standard_normal((n, T + burn))
    y = signal.lfilter([1.0], [1.0, -a], signal.lfilter([1.0], [1.0, -a], x, axis=1), axis=1)
    var = (1 + a * a) / (1 - a * a) ** 3
    return y[:, burn:] / math.sqrt(var)


def _lognormal(rng: np.random.Generator, mean: float, cv: float, n: int) -> np.ndarray:
    """n log-normal draws with the given mean and coefficient of variation."""
    s2 = math.log1p(cv * cv)
    return mean * np.exp(rng.normal(-s2 / 2, math.sqrt(s2), n))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float, fov: tuple[slice, slice],
                  contrast: float = 0.5) -> np.ndarray:
    """Positive smooth random map (log-normal gaussian field), mean 1 over ``fov``."""
    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    z /= z.std() + 1e-12
    m = np.exp(contrast * z)
    return (m / m[fov].mean()).astype(np.float32)


def _place_cells(p: SimParams, rng: np.random.Generator):
    """Cell centres (y, x), semi-axes, angles and overlap partners in world coordinates."""
    K, Y, X = p.n_cells, p.height, p.width
    radii = rng.uniform(p.radius_min, p.radius_max, K)
    q = rng.uniform(1 - p.ellipticity, 1.0, K)
    major, minor = radii / np.sqrt(q), radii * np.sqrt(q)
    angles = rng.uniform(0, np.pi, K)
    margin = major + 2 * p.edge_softness + 1
    n_over = min(int(round(p.overlap_fraction * K)), K // 2)
    n_free = K - n_over
    centers = np.full((K, 2), np.nan)
    partner = np.full(K, -1, np.int64)

    cos, sin = np.cos(angles), np.sin(angles)

    def extent(e: np.ndarray, i: np.ndarray | int) -> np.ndarray:
        """Distance from the centre of ellipse(s) ``i`` to their half-max contour along unit ``e``."""
        eu = e[..., 0] * cos[i] + e[..., 1] * sin[i]
        ev = -e[..., 0] * sin[i] + e[..., 1] * cos[i]
        return 1.0 / np.sqrt((eu / major[i]) ** 2 + (ev / minor[i]) ** 2)

    def clear_of(c: np.ndarray, k: int, placed: np.ndarray, skip: int = -1) -> np.ndarray:
        """(n,) True where candidates ``c`` (n, 2) keep a 1 px gap to every placed cell's contour."""
        idx = placed[placed != skip]
        if idx.size == 0:
            return np.ones(len(c), bool)
        diff = c[:, None, :] - centers[idx][None]
        d = np.linalg.norm(diff, axis=-1)
        e = diff / np.maximum(d, 1e-9)[..., None]
        return np.all(d >= extent(e, k) + extent(e, idx[None, :]) + 1.0, axis=1)

    def too_dense(what: str) -> CalflowInputError:
        r = (p.radius_min + p.radius_max) / 2 + 0.5
        fit = int(0.5 * (Y - 2 * margin.mean()) * (X - 2 * margin.mean()) / (np.pi * r * r) * 1.3)
        return CalflowInputError(
            f"could not place {what} cells of radius {p.radius_min}-{p.radius_max} px in a {Y}x{X} FOV "
            f"(about {max(fit, 1)} non-overlapping cells of this size fit)",
            fix="reduce n_cells or overlap_fraction, use smaller radii, or enlarge height/width",
        )

    for k in range(n_free):
        placed = np.arange(k)
        for _ in range(40):
            c = np.column_stack([rng.uniform(margin[k], Y - 1 - margin[k], 256),
                                 rng.uniform(margin[k], X - 1 - margin[k], 256)])
            ok = np.flatnonzero(clear_of(c, k, placed))
            if ok.size:
                centers[k] = c[ok[0]]
                break
        else:
            raise too_dense(f"{n_free} non-overlapping")
    parents = rng.permutation(n_free)
    pi = 0
    for k in range(n_free, K):
        placed = np.arange(k)
        done = False
        while not done and pi < n_free:
            par = int(parents[pi])
            pi += 1
            for _ in range(8):
                ang = rng.uniform(0, 2 * np.pi, 64)
                dist = rng.uniform(0.45, 0.8, 64) * (radii[k] + radii[par])
                c = centers[par] + np.column_stack([np.sin(ang), np.cos(ang)]) * dist[:, None]
                inside = ((c[:, 0] >= margin[k]) & (c[:, 0] <= Y - 1 - margin[k])
                          & (c[:, 1] >= margin[k]) & (c[:, 1] <= X - 1 - margin[k]))
                # clear of every placed cell except the parent, and of the parent's partner
                ok = np.flatnonzero(inside & clear_of(c, k, placed, skip=par))
                if ok.size:
                    centers[k] = c[ok[0]]
                    partner[k], partner[par] = par, k
                    done = True
                    break
        if not done:
            raise too_dense(f"{n_over} overlapping")
    perm = rng.permutation(K)
    inv = np.argsort(perm)
    partner = partner[perm]
    partner = np.where(partner >= 0, inv[np.maximum(partner, 0)], -1)
    return centers[perm], radii[perm], np.column_stack([major, minor])[perm], angles[perm], partner


def _footprint_box(p: SimParams, center: np.ndarray, radius: float, axes: np.ndarray, angle: float):
    """(y0, x0, patch) of one soma: soft ellipse times a darker nucleus, unit max, float32."""
    Y, X = p.height, p.width
    h = int(math.ceil(axes[0] + 5 * p.edge_softness + 2))
    cy, cx = center
    y0, y1 = max(0, int(cy) - h), min(Y, int(cy) + h + 1)
    x0, x1 = max(0, int(cx) - h), min(X, int(cx) + h + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dy * math.cos(angle) + dx * math.sin(angle)
    v = -dy * math.sin(angle) + dx * math.cos(angle)
    rho = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)
    soma = expit((1.0 - rho) * radius / p.edge_softness)
    nucleus = 1.0 - p.nucleus_depth * np.exp(-0.5 * (rho / p.nucleus_fraction) ** 2)
    f = soma * nucleus
    f /= f.max()
    f[f < 1e-3] = 0.0
    return y0, x0, f.astype(np.float32)


def _ar2(p: SimParams, rng: np.random.Generator, K: int):
    """Per-cell time constants, AR(2) coefficients (K, 2) and the peak of the unit impulse response."""
    dt = 1.0 / p.fps
    jit = np.exp(p.tau_jitter * rng.standard_normal((K, 2)))
    tau_d = p.tau_decay_s * jit[:, 0]
    tau_r = np.minimum(p.tau_rise_s * jit[:, 1], 0.9 * tau_d)
    d = np.exp(-dt / tau_d)
    r = np.where(tau_r > 0, np.exp(-dt / np.maximum(tau_r, 1e-12)), 0.0)
    g = np.column_stack([d + r, -d * r])
    # impulse response h[n] = (d^(n+1) - r^(n+1)) / (d - r) peaks within ~10 rise times
    n = np.arange(int(10 * tau_r.max() * p.fps) + 10)[None, :]
    h = (d[:, None] ** (n + 1) - r[:, None] ** (n + 1)) / (d - r)[:, None]
    return tau_r, tau_d, g, h.max(axis=1)


def _poisson_inverse(u: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Poisson counts by inverse CDF of uniforms ``u``: monotone in ``lam`` for a fixed ``u``.

    This couples conditions: raising a rate (e.g. w_gain) can only add spikes, never move them.
    """
    k = np.zeros(lam.shape, np.float32)
    pmf = np.exp(-lam)
    cdf = pmf.copy()
    kmax = int(np.ceil(lam.max() + 12 * math.sqrt(lam.max()) + 12)) if lam.size else 0
    for i in range(1, kmax + 1):
        more = u > cdf
        if not more.any():
            break
        k += more
        pmf = pmf * lam / i
        cdf = cdf + pmf
    return k


def evoked_calcium(g: np.ndarray, spike_weight: np.ndarray, fps: float, trial_frames: int, delay_frames: int,
                   context: int = 0) -> np.ndarray:
    """Expected extra calcium of each cell during a trial per 1 Hz of extra firing rate, (2, K) F units.

    Row 0: the rate rises for the trial's ``trial_frames`` frames (a stimulated target); row 1: the
    same step delayed by ``delay_frames`` (a driven cell). The value is the mean, over the trial's
    frames t, of the calcium averaged over the window ``t - context .. t + context`` (what an input
    of ``2 * context + 1`` frames sees), through each cell's AR(2) kernel ``g`` (K, 2) and
    ``spike_weight`` (K,). A target j's expected response is then ``stim_gain * (row 0 at j +
    w_gain * W[j] * row 1)``, the per-cell weights of its functional footprint.
    """
    g = np.asarray(g, np.float64)
    n = delay_frames + trial_frames + 2 * context + 1
    out = np.empty((2, len(g)))
    windows = np.lib.stride_tricks.sliding_window_view(np.arange(n), 2 * context + 1)[:trial_frames]
    for row, lag in enumerate((0, delay_frames)):
        drive = np.zeros(n)
        drive[context + lag: context + lag + trial_frames] = 1.0 / fps  # expected extra spikes per frame
        for k in range(len(g)):
            ca = signal.lfilter([float(spike_weight[k])], [1.0, -g[k, 0], -g[k, 1]], drive)
            out[row, k] = ca[windows].mean()
    return out


def _stim_schedule(p: SimParams, rng: np.random.Generator, rng_order: np.random.Generator):
    """Patterns (P, 2), trial arrays and the per-frame (T, N) stimulation matrix.

    The pair patterns come from ``rng`` (the experimental design, shared by an animal's
    sessions); the trial order and inter-trial intervals from ``rng_order`` (per session).
    """
    T, N = p.n_frames, p.n_targets
    stim = np.zeros((T, N), bool)
    singles = [(j, -1) for j in range(N)]
    combos = [(a, b) for a in range(N) for b in range(a + 1, N)]
    n_pairs = p.pairs_count
    chosen = rng.choice(len(combos), size=n_pairs, replace=False) if n_pairs else np.array([], int)
    pairs = sorted(combos[i] for i in chosen)
    patterns = np.array(singles + pairs, np.int64).reshape(-1, 2)
    starts, pats, blocks = [], [], []
    if N > 0:
        t = p.stim_start_frame
        block = 0
        while p.n_blocks is None or block < p.n_blocks:
            order = rng_order.permutation(len(patterns))
            gaps = p.iti_frames + rng_order.integers(0, p.iti_jitter_frames + 1, len(patterns))
            for i, pat in enumerate(order):
                if t + p.trial_frames > T:
                    break
                starts.append(t)
                pats.append(int(pat))
                blocks.append(block)
                t += p.trial_frames + int(gaps[i])
            else:
                block += 1
                continue
            break
    trial_start = np.array(starts, np.int64)
    trial_stop = trial_start + p.trial_frames
    trial_pattern = np.array(pats, np.int64)
    for s, e, pat in zip(trial_start, trial_stop, trial_pattern, strict=True):
        for j in patterns[pat]:
            if j >= 0:
                stim[s:e, j] = True
    return patterns, trial_start, trial_stop, trial_pattern, np.array(blocks, np.int64), stim


def _connectivity(p: SimParams, rng: np.random.Generator, target_cells: np.ndarray) -> np.ndarray:
    """Sparse non-negative W (K, K), W[source, target]; every target has >= 1 outgoing link."""
    K = p.n_cells
    weights = rng.uniform(p.w_min, p.w_max, (K, K))
    mask = rng.random((K, K)) < p.connection_prob
    np.fill_diagonal(mask, False)
    W = np.where(mask, weights, 0.0)
    if K > 1:
        for i in target_cells:
            if not W[i].any():
                j = int(rng.integers(0, K - 1))
                j += j >= i
                W[i, j] = weights[i, j]
    return W


def simulate(params: SimParams | None = None, seed: int = 0, *, anatomy_seed: int | None = None) -> GroundTruth:
    """Draw a session's ground truth (no movie). Deterministic in (params, seed, anatomy_seed).

    ``anatomy_seed`` (default: ``seed``) draws what belongs to the animal/FOV rather than the
    recording: cells (positions, shapes, brightness, kinetics, spike amplitudes, spontaneous
    rates), targets and the stimulated pairs, W, and the neuropil/background maps. Sessions of one animal in two
    conditions share ``anatomy_seed`` and differ in ``seed`` (activity, motion, trial order,
    noise) and ``w_gain``.
    """
    p = params or SimParams()
    p.validate()
    seed = _check_seed("seed", seed)
    aseed = seed if anatomy_seed is None else _check_seed("anatomy_seed", anatomy_seed)
    K, T, Y, X = p.n_cells, p.n_frames, p.height, p.width
    dt = 1.0 / p.fps

    # cells
    centers, radii, axes, angles, partner = _place_cells(p, _rng(aseed, "layout"))
    if p.warp_px > 0:
        centers = _warp_centers(p, centers, axes, _rng(seed, "warp"))
    boxes = [_footprint_box(p, centers[k], radii[k], axes[k], angles[k]) for k in range(K)]
    f0 = _lognormal(_rng(aseed, "brightness"), p.cell_brightness, p.brightness_cv, K).astype(np.float32)

    present = None
    if p.turnover > 0:  # cells of the animal absent in this session (at least one cell stays)
        n_gone = min(int(round(p.turnover * K)), K - 1)
        present = np.ones(K, bool)
        present[_rng(seed, "turnover").choice(K, n_gone, replace=False)] = False
    change = None
    if p.brightness_change_cv > 0:
        change = _lognormal(_rng(seed, "cell_change"), 1.0, p.brightness_change_cv, K).astype(np.float32)
        f0 = f0 * change

    # targets, stimulation schedule, connectivity
    rng_stim = _rng(aseed, "stim")
    isolated = np.flatnonzero(partner < 0)
    pool = np.concatenate([rng_stim.permutation(isolated), rng_stim.permutation(np.flatnonzero(partner >= 0))])
    target_cells = np.sort(pool[: p.n_targets]).astype(np.int64)
    patterns, t_start, t_stop, t_pat, t_block, stim = _stim_schedule(p, rng_stim, _rng(seed, "stim", 1))
    W = _connectivity(p, _rng(aseed, "connectivity"), target_cells)

    # firing rates: spontaneous (log-normal across cells, shared slow modulation) + stimulation
    base = _lognormal(_rng(aseed, "rates"), p.spike_rate_hz, p.rate_cv, K)
    c = p.population_coupling
    pop = np.exp(c * _smooth_process(_rng(seed, "population"), 1, T, p.population_tau_s * p.fps)[0] - c * c / 2)
    delay = int(round(p.w_delay_s * p.fps))
    drive = stim.T.astype(np.float64)  # (N, T) 1 while target j is stimulated
    delayed = np.zeros_like(drive)
    if delay < T:
        delayed[:, delay:] = drive[:, : T - delay]
    w_out = p.w_gain * p.stim_gain * W[target_cells].T  # (K, N) rate gain per stimulated target
    stim_drive, offtarget = _stim_drive(p, centers, target_cells)  # (K, N) Hz; the non-target part
    rate = np.empty((K, T), np.float32)
    spikes = np.empty((K, T), np.float32)
    rng_spikes = _rng(seed, "spikes")
    for a in range(0, T, _TIME_CHUNK):  # fixed chunks bound the float64 temporaries
        b = min(T, a + _TIME_CHUNK)
        r_ab = base[:, None] * pop[None, a:b]
        r_ab[target_cells] += p.stim_gain * drive[:, a:b]
        if offtarget is not None:
            r_ab += offtarget @ drive[:, a:b]
        r_ab += w_out @ delayed[:, a:b]
        rate[:, a:b] = r_ab
        spikes[:, a:b] = _poisson_inverse(rng_spikes.random((K, b - a)), r_ab * dt)

    # calcium: AR(2) per cell, one isolated spike peaks at spike_amplitude[k]
    tau_r, tau_d, g, peaks = _ar2(p, _rng(aseed, "kinetics"), K)
    amp = _lognormal(_rng(aseed, "kinetics", 1), p.spike_amplitude, p.amplitude_cv, K)
    weight = amp / peaks
    calcium = np.empty((K, T), np.float32)
    for k in range(K):
        calcium[k] = signal.lfilter([weight[k]], [1.0, -g[k, 0], -g[k, 1]], spikes[k].astype(np.float64))
    if change is not None:
        calcium *= change[:, None]
    if present is not None:  # absent cells give no light: no resting fluorescence, no calcium
        f0 = np.where(present, f0, 0).astype(np.float32)
        calcium[~present] = 0

    # motion
    gy, gx = p.nonrigid_grid
    control_y = np.linspace(0.0, Y - 1.0, gy)
    control_x = np.linspace(0.0, X - 1.0, gx)
    rigid = np.zeros((T, 2))
    grid = np.zeros((T, gy, gx, 2))
    if p.motion:
        # Zero temporal mean: the world frame is the average position, which is where a
        # mean-image template sits, so estimated shifts and the truth share their origin.
        if p.rigid_std > 0:
            walk = p.rigid_std * _smooth_process(_rng(seed, "rigid"), 2, T, p.rigid_tau_s * p.fps).T
            rigid = p.max_shift * np.tanh((walk - walk.mean(axis=0)) / p.max_shift)
            rigid -= rigid.mean(axis=0)
            peak = np.abs(rigid).max()
            if peak > p.max_shift:
                rigid *= p.max_shift / peak
        if p.nonrigid and p.nonrigid_amplitude > 0:
            proc = _smooth_process(_rng(seed, "nonrigid"), gy * gx * 2, T, p.nonrigid_tau_s * p.fps)
            grid = p.nonrigid_amplitude * proc.T.reshape(T, gy, gx, 2)
            grid -= grid.mean(axis=0, keepdims=True)  # each control point: zero mean over time
            grid -= grid.mean(axis=(1, 2), keepdims=True)  # each frame: pure deformation, rigid is separate
    # world canvas padding: bounds |D| <= |rigid| + Lebesgue(y) * Lebesgue(x) * max|grid|
    leb = 1.0
    for knots, n in ((control_y, Y), (control_x, X)):
        sp = CubicSpline(knots, np.eye(len(knots)), bc_type="natural")
        leb *= float(np.abs(sp(np.linspace(-4, n + 3, 4 * n))).sum(axis=1).max())
    # plus the static FOV placement (affine, so its largest component is at a corner of the FOV)
    static = _Static(p)
    corners = np.array([[0.0, 0.0], [0.0, X - 1.0], [Y - 1.0, 0.0], [Y - 1.0, X - 1.0]])
    static_max = float(np.abs(static.static_displacement(corners)).max())
    pad = int(math.ceil(np.abs(rigid).max(initial=0) + leb * np.abs(grid).max(initial=0) + static_max)) + 3

    # neuropil and background on the padded world canvas. The random maps are drawn on a canvas
    # whose size depends on (Y, X) only, so switching motion on/off leaves them unchanged.
    fpad = max(pad, 16 + int(math.ceil(0.05 * max(Y, X))))
    ffov = (slice(fpad, fpad + Y), slice(fpad, fpad + X))
    crop = (slice(fpad - pad, fpad + Y + pad), slice(fpad - pad, fpad + X + pad))
    Yp, Xp = Y + 2 * pad, X + 2 * pad
    fov = (slice(pad, pad + Y), slice(pad, pad + X))
    fshape = (Y + 2 * fpad, X + 2 * fpad)
    neuropil_map = _smooth_field(_rng(aseed, "neuropil"), fshape, p.neuropil_scale_px, ffov, contrast=0.4)[crop].copy()
    # population calcium: the shared rate modulation (mean 1) through the mean calcium kernel
    # (unit DC gain, started in steady state), i.e. the activity of the unobserved neurites
    g1, g2 = g.mean(axis=0)
    b_ca, a_ca = [1.0 - g1 - g2], [1.0, -g1, -g2]
    pop_ca, _ = signal.lfilter(b_ca, a_ca, pop, zi=signal.lfilter_zi(b_ca, a_ca) * pop[0])
    s = p.neuropil_noise
    fluct = np.exp(s * _smooth_process(_rng(seed, "neuropil", 1), 1, T, p.neuropil_tau_s * p.fps)[0] - s * s / 2)
    neuropil_trace = p.neuropil_level * fluct * np.maximum(0.0, 1.0 + p.neuropil_coupling * (pop_ca - 1.0))
    # photobleaching: cells and neuropil (GCaMP in the neurites) decay; background/baseline do not
    bleach = np.ones(T)
    if p.bleach_tau_s > 0:
        bleach = np.exp(-np.arange(T) / (p.fps * p.bleach_tau_s))
        neuropil_trace = neuropil_trace * bleach
    neuropil_trace = neuropil_trace.astype(np.float32)
    cell_scale = (p.expression_scale * bleach).astype(np.float32)
    artifact = np.where(stim.any(axis=1), p.stim_artifact, 0.0).astype(np.float32)
    R = p.bg_rank
    bg_maps = np.empty((R, Yp, Xp), np.float32)
    sigma = p.bg_scale * min(Y, X)
    for r in range(R):
        if r == 0:  # vignetting: brightest in the middle of the FOV
            yy, xx = np.mgrid[-pad : Y + pad, -pad : X + pad].astype(np.float64)
            vig = np.exp(-(((yy - (Y - 1) / 2) / (0.8 * Y)) ** 2 + ((xx - (X - 1) / 2) / (0.8 * X)) ** 2))
            bg_maps[0] = vig / vig[fov].mean()
        else:
            bg_maps[r] = _smooth_field(_rng(aseed, "background", r), fshape, sigma, ffov, contrast=0.5)[crop]
    s = p.bg_fluct
    proc = _smooth_process(_rng(seed, "background", 1000), R, T, p.bg_tau_s * p.fps)
    bg_traces = (p.bg_level * np.exp(s * proc - s * s / 2)).astype(np.float32)

    return GroundTruth(
        params=p, seed=seed, anatomy_seed=aseed, centers=centers, radii=radii, semi_axes=axes, angles=angles,
        overlap_partner=partner, f0=f0, boxes=boxes, rate_hz=rate, spikes=spikes,
        calcium=calcium, g=g, tau_rise_s=tau_r, tau_decay_s=tau_d, spike_amplitude=amp, spike_weight=weight,
        population=pop.astype(np.float32), pad=pad, neuropil_map=neuropil_map, neuropil_trace=neuropil_trace,
        bg_maps=bg_maps, bg_traces=bg_traces, rigid_shifts=rigid, nonrigid_grid=grid, control_y=control_y,
        control_x=control_x, W=W, target_cells=target_cells, patterns=patterns, trial_start=t_start,
        trial_stop=t_stop, trial_pattern=t_pat, trial_block=t_block, stim=stim, delay_frames=delay,
        cell_scale=cell_scale, bleach=bleach.astype(np.float32), artifact=artifact, stim_drive=stim_drive,
        fov_offset=np.array(p.fov_offset, np.float64), fov_rotation_deg=float(p.fov_rotation_deg),
        present=present,
    )


def _warp_centers(p: SimParams, centers: np.ndarray, axes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cell centres (K, 2) moved by a smooth static warp: a natural cubic spline through a 3x3 grid of
    control displacements (std ``warp_px``, mean removed so the warp adds no net shift), kept inside the FOV."""
    Y, X = p.height, p.width
    ctrl = p.warp_px * rng.standard_normal((3, 3, 2))
    ctrl -= ctrl.mean(axis=(0, 1), keepdims=True)
    by = CubicSpline(np.linspace(0.0, Y - 1.0, 3), np.eye(3), bc_type="natural")(centers[:, 0])  # (K, 3)
    bx = CubicSpline(np.linspace(0.0, X - 1.0, 3), np.eye(3), bc_type="natural")(centers[:, 1])
    d = np.einsum("ki,kj,ijc->kc", by, bx, ctrl)
    margin = (axes[:, 0] + 2 * p.edge_softness + 1)[:, None]
    return np.clip(centers + d, margin, np.array([Y - 1.0, X - 1.0]) - margin)


class _Static:
    """The static FOV placement of a SimParams (for the padding, before a GroundTruth exists)."""

    def __init__(self, p: SimParams):
        self.params = p
        self.fov_offset = np.array(p.fov_offset, np.float64)
        self.fov_rotation_deg = float(p.fov_rotation_deg)

    has_static = GroundTruth.has_static
    fov_transform = GroundTruth.fov_transform
    static_displacement = GroundTruth.static_displacement


def _stim_drive(p: SimParams, centers: np.ndarray, target_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Effective stimulation drive (K, N) in Hz and its off-target part (None without off-target).

    ``drive[target_cells[j], j] = stim_gain``; with ``offtarget_radius_px = r > 0`` every non-target
    cell k also gets ``offtarget_gain * stim_gain * exp(-d^2 / (2 r^2))`` with d the distance of
    its centre to target j's centre, for d <= 3r (0 beyond). Targets get no off-target drive.
    """
    K, N = len(centers), len(target_cells)
    drive = np.zeros((K, N))
    drive[target_cells, np.arange(N)] = p.stim_gain
    if p.offtarget_radius_px <= 0 or N == 0:
        return drive, None
    r = float(p.offtarget_radius_px)
    d = np.linalg.norm(centers[:, None, :] - centers[target_cells][None, :, :], axis=-1)  # (K, N)
    off = np.where(d <= 3 * r, p.offtarget_gain * p.stim_gain * np.exp(-(d * d) / (2 * r * r)), 0.0)
    off[target_cells] = 0.0
    return drive + off, off
