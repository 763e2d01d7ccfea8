# Load and validate config/config.yaml and the sessions sheet before any job is scheduled.
import glob
import re
import sys
from pathlib import Path

from calflow.config import load_config, load_sessions
from calflow.errors import CalflowInputError

SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"
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
