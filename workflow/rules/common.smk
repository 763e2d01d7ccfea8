# Load and validate config/config.yaml and the sessions sheet before any job is scheduled.
import json
import os
import re
import sys
import zlib
from pathlib import Path

from snakemake.logging import logger

from calflow.config import classify_control_members, classify_model_params, load_config, load_sessions
from calflow.errors import CalflowInputError
from calflow.ingest import source_paths
from calflow.nwb_metadata import check_sheet_metadata, raw_metadata

SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"


def workdir_relative(path):
    """``path`` relative to the working directory when it lies inside it, else as given: a param or
    input naming a file of the checkout (the bundled generalist, the workflow directory) then does
    not change when a project that holds the checkout (the demo) is moved, so nothing re-runs."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# Jobs import calflow from this checkout, also inside per-rule conda envs (--sdm conda),
# which hold the dependencies but not calflow itself.
_SRC = str(Path(workflow.basedir) / "src")
_ENV = os.environ
_ENV.update(PYTHONPATH=os.pathsep.join(p for p in (_SRC, _ENV.get("PYTHONPATH")) if p))
CONFIG_FILE = ", ".join(map(str, workflow.configfiles)) or "config"

try:
    # classify.profile is resolved here, once: the rules' params carry the values it set
    _validated = load_config(
        CONFIG_FILE, SCHEMAS, data=dict(config), log_profile=lambda line: logger.info(f"calflow: {line}")
    )
    config.clear()
    config.update(_validated)
    SESSIONS = load_sessions(
        config["sessions"], SCHEMAS, animal_separator=config["classify"]["animal_separator"]
    )
    for _line in check_sheet_metadata(
        SESSIONS, config["nwb"], sheet_file=config["sessions"], config_file=CONFIG_FILE
    ):
        logger.warning(f"calflow: {_line}")
except CalflowInputError as err:
    sys.exit(f"calflow: {err}")

SESSION_NAMES = list(SESSIONS.index)
# Sessions whose movie the demo simulates, with its ground truth (simulate_demo in demo.smk);
# evaluate_truth (evaluate.smk) compares their results with that truth.
SIMULATED_SESSIONS = [
    s for s in SESSION_NAMES if str(SESSIONS.loc[s, "movie"]) == f"results/demo/{s}/movie.tif"
]


wildcard_constraints:
    session="|".join(map(re.escape, SESSION_NAMES)),


def movie_files(wildcards):
    """The files behind a session's movie spec, expanded as ingest expands them."""
    try:
        return [str(p) for p in source_paths(SESSIONS.loc[wildcards.session, "movie"])]
    except CalflowInputError as err:
        sys.exit(f"calflow: {err}")


def _stable_seed(text):
    """A seed from a name that does not change between Python runs (unlike hash())."""
    return zlib.crc32(text.encode()) % (2**31)


def demo_animal(session):
    """The animal of a demo session (its cells and W): the sheet's animal column."""
    return SESSIONS.loc[session, "animal"]


# ---- Resources scaled to the input (any executor; profiles/slurm adds GPUs and partitions) ----
# Each estimate is raised by `attempt`, so a job retried after an out-of-memory or time-limit
# kill (profiles/slurm sets retries: 1) asks for more. Constants come from the 2-core
# benchmarks in docs/motion.md and benchmarks/out/ingest.json, with a 3x runtime margin.


def _missing(path):
    # Snakemake treats a FileNotFoundError for an input as "not known yet" and re-evaluates the
    # resource when the job is ready to run (the input then exists).
    return FileNotFoundError(2, "not made yet", str(path))


def input_mb(input):
    """Total size of a job's inputs in MB, zarr stores (directories) included."""
    total = 0
    for f in input:
        p = Path(f)
        if not p.exists():
            raise _missing(f)
        total += (
            p.stat().st_size if p.is_file() else sum(x.stat().st_size for x in p.rglob("*") if x.is_file())
        )
    return total / 1e6


def store_shape(store, var="movie"):
    """(time, y, x) of a calflow movie store, read from its zarr metadata (no data read)."""
    meta = Path(store) / var / "zarr.json"
    if not meta.exists():
        raise _missing(store)
    return tuple(json.loads(meta.read_text())["shape"])


def _runtime_min(seconds, attempt):
    return int(attempt * (10 + 3 * seconds / 60))


def ingest_mem_mb(wildcards, input, attempt):
    # bounded by ingest.read_frames, not by the movie's length (a few hundred MB for 512 x 512)
    return 2000 * attempt


def ingest_runtime(wildcards, input, attempt):
    return _runtime_min(input_mb(input) / 100, attempt)  # ~150 MB/s measured


def motion_mem_mb(wildcards, input, attempt):
    # torch + buffers (~500 MB measured) + a batch's working set (~30 float32 frames per batch frame,
    # capped by calflow.motion.effective_batch near 512 MiB) + the template's sample frames
    t, h, w = store_shape(input[0])
    frame_mb = h * w * 4 / 1e6
    batch_mb = min(30 * config["motion"]["batch_size"] * frame_mb, 800)
    return int(attempt * (1000 + batch_mb + 3 * config["motion"]["template_frames"] * frame_mb))


def motion_runtime(wildcards, input, attempt):
    t, h, w = store_shape(input[0])
    return _runtime_min(t * h * w / 2.5e6, attempt)  # ~2.5 Mpx/s piecewise, 2 cores


def summary_mem_mb(wildcards, input, attempt):
    t, h, w = store_shape(input[0])  # ~8 x batch x float64 frames
    return int(attempt * (1000 + 8 * config["summary"]["batch_size"] * h * w * 8 / 1e6))


def summary_runtime(wildcards, input, attempt):
    t, h, w = store_shape(input[0])
    return _runtime_min(t * h * w / 2e7, attempt)
