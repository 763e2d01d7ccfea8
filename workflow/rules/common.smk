# Load and validate config/config.yaml and the sessions sheet before any job is scheduled.
import glob
import os
import re
import sys
import zlib
from pathlib import Path

from calflow.config import load_config, load_sessions
from calflow.errors import CalflowInputError

SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"

# Jobs import calflow from this checkout, also inside per-rule conda envs (--sdm conda),
# which hold the dependencies but not calflow itself.
_SRC = str(Path(workflow.basedir) / "src")
_ENV = os.environ
_ENV.update(PYTHONPATH=os.pathsep.join(p for p in (_SRC, _ENV.get("PYTHONPATH")) if p))
CONFIG_FILE = ", ".join(map(str, workflow.configfiles)) or "config"

try:
    _validated = load_config(CONFIG_FILE, SCHEMAS, data=dict(config))
    config.clear()
    config.update(_validated)
    SESSIONS = load_sessions(config["sessions"], SCHEMAS)
except CalflowInputError as err:
    sys.exit(f"calflow: {err}")

SESSION_NAMES = list(SESSIONS.index)


wildcard_constraints:
    session="|".join(map(re.escape, SESSION_NAMES)),


def session_row(wildcards):
    return SESSIONS.loc[wildcards.session]


def movie_files(wildcards):
    """The files behind a session's movie spec (several for multi-file TIFF; '#name' stripped)."""
    spec = str(SESSIONS.loc[wildcards.session, "movie"]).split("#", 1)[0]
    files = []
    for part in (p.strip() for p in spec.split(";") if p.strip()):
        matches = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        files.extend(matches)
    return files


def _stable_seed(text):
    """A seed from a name that does not change between Python runs (unlike hash())."""
    return zlib.crc32(text.encode()) % (2**31)


def demo_animal(session):
    return session.split(config["demo"]["animal_separator"], 1)[0]
