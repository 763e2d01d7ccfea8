"""Decode stage speed and memory: the demo session (new vs old code) and 10,000 neurons x 2,000 trials.

    nice -n 19 python benchmarks/decode_scale.py demo [--old HEAD] [--repeats 3]
    nice -n 19 python benchmarks/decode_scale.py large [--neurons 10000] [--trials 2000] [--data DIR]

* ``demo``: one demo-sized session (the demo config's ``demo.sim`` and ``trials_per_pattern``: 20
  cells, 2,830 frames, 10 patterns x 10 trials at 30 Hz; the simulator's true calcium plus
  N(0, 0.05²) noise as ``dff``) written as a cnmf.zarr-like store and a stim log; wall time of
  ``decode_session`` with config/config.yaml's ``decode`` section (2 threads, as the rule), the
  median of ``--repeats`` runs after one warm-up. ``--old REV`` also times ``decode_session`` of
  REV's decode code (``src/calflow/decode.py``, or the package ``src/calflow/decode/``) with REV's
  config.yaml ``decode`` section on the same store (once: it is slow), and the new code with the
  old section (same classifiers, folds, permutations; the refit test for every classifier, as the
  old code did).
* ``large``: N neurons (default 10,000) x T frames at 3 Hz (a 10-minute spontaneous block, then
  ``--trials`` onsets every 4-5 frames of 8 stimulus classes, each 2 frames long), simulated
  directly as traces (no movie): 32 slow shared spontaneous factors, sparse tuned responses, AR(1)
  calcium (decay 0.6 s) and noise, float32. Written once to ``--data`` as a cnmf.zarr-like store and
  a stimulus table with a ``spontaneous`` epoch; ``decode_session`` with the decode defaults
  (``DecodeParams()``, 2 threads) runs in a child process: wall time and peak RSS (VmHWM).

Prints a table and writes benchmarks/out/decode_scale_{demo,large}.json. Nothing here is
asserted by tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from motion import peak_rss_self_mib, run_child  # noqa: E402 - sibling benchmark's helpers

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"


def write_store(store: Path, dff: np.ndarray | None, fps: float, g: np.ndarray, shape: tuple[int, int] | None = None,
                chunks: tuple[int, int] = (1000, 2048)):
    """A cnmf.zarr-like store (dff, accepted, g, fps); ``dff`` None: an empty array to fill, returned."""
    import zarr

    k, t = dff.shape if dff is not None else shape
    root = zarr.open_group(store, mode="w", attributes={"fps": fps, "n_components": k})
    arr = root.create_array("dff", shape=(k, t), chunks=(min(chunks[0], k), min(chunks[1], t)), dtype="float32",
                            dimension_names=("component", "time"))
    if dff is not None:
        arr[...] = dff.astype(np.float32)
    root.create_array("accepted", data=np.ones(k, bool), dimension_names=("component",))
    root.create_array("g", data=np.asarray(g, np.float64), dimension_names=("component", "lag"))
    return arr


def load_module(rev: str, name: str):
    """calflow's decode stage at git revision ``rev`` as a module ``name``: ``src/calflow/decode.py``,
    or the package ``src/calflow/decode/`` (since the split; its imports of itself renamed)."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout

    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "src/calflow/decode.py", "src/calflow/decode/"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    tmp = Path(tempfile.mkdtemp())
    if "src/calflow/decode.py" in files:
        path, package = tmp / f"{name}.py", None
        path.write_text(show("src/calflow/decode.py"))
    else:
        package = tmp / name
        package.mkdir()
        for f in files:
            if f.endswith(".py"):
                (package / Path(f).name).write_text(show(f).replace("calflow.decode.", f"{name}."))
        path = package / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, path,
                                                  submodule_search_locations=[str(package)] if package else None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def config_section(rev: str | None) -> dict:
    text = (ROOT / "config" / "config.yaml").read_text() if rev is None else subprocess.run(
        ["git", "show", f"{rev}:config/config.yaml"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return yaml.safe_load(text)


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def demo(args) -> None:
    from calflow import decode as new
    from calflow.simulate import simulate, study_params

    cfg = config_section(None)
    truth = simulate(study_params(**cfg["demo"]["sim"], trials_per_pattern=cfg["demo"]["trials_per_pattern"]), seed=1)
    work = Path(tempfile.mkdtemp(prefix="calflow-decode-demo-"))
    dff = truth.calcium + np.random.default_rng(0).normal(0, 0.05, truth.calcium.shape).astype(np.float32)
    write_store(work / "cnmf.zarr", dff, truth.fps, truth.g)
    log = work / "stim_log.csv"
    log.write_text("frame,targets\n" + "".join(f"{i},{t}\n" for i, t in enumerate(truth.stim_log())))
    shape = f"{truth.n_cells} cells x {truth.n_frames} frames, {len(truth.trial_start)} trials"
    rows = []

    def timed(mod, section, label, repeats):
        times, res = [], None
        for i in range(repeats):
            t0 = time.perf_counter()
            res = mod.decode_session(work / "cnmf.zarr", log, work / f"{label}.json", work / f"plots_{label}_{i}",
                                     section, n_jobs=2)
            times.append(time.perf_counter() - t0)
        acc = {n: round(c["accuracy"], 3) for n, c in res["classifiers"].items()}
        pv = {n: c.get("p_value") for n, c in res["classifiers"].items() if n != "dummy"}
        rows.append({"case": label, "seconds": float(np.median(times)), "runs": times, "accuracy": acc, "p": pv})
        print(f"{label:<34} {np.median(times):8.2f} s  {acc}", flush=True)

    print(f"demo session: {shape}")
    if args.old:  # first, in a fresh process (it is slow: minutes)
        old_section = config_section(args.old)["decode"]
        timed(load_module(args.old, "calflow_decode_old"), old_section, f"{args.old} code, old demo config", 1)
    new.decode_session(work / "cnmf.zarr", log, work / "warm.json", work / "plots_warm", cfg["decode"], n_jobs=2)
    timed(new, cfg["decode"], "new code, new demo config", args.repeats)
    if args.old:
        refit_all = dict(old_section, refit_test=old_section.get("classifiers", list(new.CLASSIFIERS)),
                         remove_spontaneous_pcs=old_section.get("remove_spontaneous_pcs", 0))
        timed(new, refit_all, "new code, old demo config", args.repeats)
    OUT.mkdir(parents=True, exist_ok=True)
    out = {"session": shape, "threads": 2, "rows": rows}
    if args.old:
        out["speedup_new_config"] = rows[0]["seconds"] / rows[1]["seconds"]
        out["speedup_same_config"] = rows[0]["seconds"] / rows[2]["seconds"]
        print(f"speed-up: {out['speedup_new_config']:.0f}x (demo config), {out['speedup_same_config']:.0f}x "
              f"(old config, every classifier refit-tested)")
    (OUT / "decode_scale_demo.json").write_text(json.dumps(out, indent=2))


# --------------------------------------------------------------------------------------------
# large
# --------------------------------------------------------------------------------------------

FPS = 3.0
N_CLASSES = 8
SPONT_FRAMES = 1800     # 10 minutes at 3 Hz
TAU_S = 0.6


def simulate_large(data: Path, n_neurons: int, n_trials: int, seed: int = 0) -> None:
    """Traces of a 10,000-neuron-style recording straight into ``data`` (cnmf.zarr + stimuli.csv)."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    onset = SPONT_FRAMES + 10 + np.cumsum(4 + rng.integers(0, 2, n_trials))
    t = int(onset[-1] + 20)
    label = rng.permutation(np.resize(np.arange(N_CLASSES), n_trials))
    stim = np.zeros((N_CLASSES, t), np.float32)                     # class x frame: stimulus on
    for d in (0, 1):
        stim[label, onset + d] = 1.0
    n_f = 32
    a = np.exp(-1.0 / (FPS * 3.0))                                  # shared factors: AR(1), 3 s
    factors = lfilter([np.sqrt(1 - a * a)], [1, -a], rng.standard_normal((n_f, t)), axis=1).astype(np.float32)
    g = np.exp(-1.0 / (FPS * TAU_S))
    store = data / "cnmf.zarr"
    arr = write_store(store, None, FPS, np.tile([g, 0.0], (n_neurons, 1)), shape=(n_neurons, t))
    for lo in range(0, n_neurons, 1000):
        n = min(1000, n_neurons - lo)
        load = (rng.standard_normal((n, n_f)) * rng.uniform(0.1, 0.4, (n, 1))).astype(np.float32)
        pref = rng.integers(0, N_CLASSES, n)
        tuning = np.exp(2.0 * np.cos(2 * np.pi * (np.arange(N_CLASSES)[None, :] - pref[:, None]) / N_CLASSES))
        gain = (rng.random(n) < 0.3) * rng.lognormal(-1.5, 0.5, n)
        drive = load @ factors + (gain[:, None] * tuning / tuning.max(axis=1, keepdims=True)).astype(np.float32) @ stim
        drive += 0.3 * rng.standard_normal((n, t)).astype(np.float32)
        calcium = lfilter([1.0], [1.0, -g], np.maximum(drive, 0), axis=1)
        arr[lo: lo + n] = (calcium + 0.05 * rng.standard_normal((n, t))).astype(np.float32)
    rows = [f"0,spontaneous,{SPONT_FRAMES}"] + [f"{o},class{c},{o + 2}" for o, c in zip(onset, label, strict=True)]
    (data / "stimuli.csv").write_text("frame,stimulus,stop\n" + "\n".join(rows) + "\n")
    (data / "done").write_text(json.dumps({"neurons": n_neurons, "trials": n_trials, "frames": t}))


def large_worker(data: Path, result: Path) -> None:
    import logging

    from calflow.decode import DecodeParams, decode_session

    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)7.0f ms %(message)s")  # the stage's steps

    t0 = time.perf_counter()
    res = decode_session(data / "cnmf.zarr", data / "stimuli.csv", data / "decode.json", data / "plots",
                         DecodeParams(), n_jobs=2)
    seconds = time.perf_counter() - t0
    result.write_text(json.dumps({
        "seconds": seconds, "vm_hwm_mib": peak_rss_self_mib(), "n_neurons": res["n_neurons"],
        "n_frames": res["n_frames"], "n_trials": res["n_trials"], "tree_neurons": res["tree_neurons_used"],
        "spontaneous_frames": res["spontaneous_frames"], "pcs_removed": res["pcs_removed"],
        "chance": res["chance"],
        "classifiers": {n: {"accuracy": c["accuracy"], "p_value": c.get("p_value"), "p_method": c.get("p_method")}
                        for n, c in res["classifiers"].items()}}))


def large(args) -> None:
    data = Path(args.data) / f"n{args.neurons}_t{args.trials}"
    if not (data / "done").exists():
        data.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        simulate_large(data, args.neurons, args.trials)
        print(f"simulated and wrote {data} in {time.perf_counter() - t0:.0f} s", flush=True)
    result = data / "result.json"
    out = run_child([sys.executable, __file__, "large-worker", str(data), str(result)], result)
    print(f"{'neurons':>8} {'frames':>7} {'trials':>6} {'tree nrns':>9} {'seconds':>8} {'peak RSS MiB':>12}")
    print(f"{out['n_neurons']:>8} {out['n_frames']:>7} {out['n_trials']:>6} {out['tree_neurons']:>9} "
          f"{out['seconds']:>8.1f} {out['peak_rss_mib']:>12.0f}")
    for name, c in out["classifiers"].items():
        print(f"  {name:<24} accuracy {c['accuracy']:.3f}  p {c['p_value']} ({c['p_method']})")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "decode_scale_large.json").write_text(json.dumps(out, indent=2))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "large-worker":
        return large_worker(Path(sys.argv[2]), Path(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    d = sub.add_parser("demo")
    d.add_argument("--old", default="", help="git revision whose decode code and config to time too (e.g. HEAD)")
    d.add_argument("--repeats", type=int, default=3)
    g = sub.add_parser("large")
    g.add_argument("--neurons", type=int, default=10_000)
    g.add_argument("--trials", type=int, default=2_000)
    g.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "calflow-bench-decode"))
    args = ap.parse_args()
    demo(args) if args.part == "demo" else large(args)


if __name__ == "__main__":
    main()
