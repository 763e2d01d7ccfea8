"""Thin wrapper: snakemake rule `report` -> calflow.report.build_report."""
from pathlib import Path

from calflow.report import build_report
from calflow.runner import run_script


def main(smk):
    try:
        from snakemake import __version__ as snakemake_version
    except ImportError:  # pragma: no cover - the script always runs under snakemake
        snakemake_version = "unknown"
    build_report(
        Path(smk.output[0]).parents[1],  # results/report/index.html -> results/
        smk.output[0],
        sessions=smk.params.sessions,
        config=smk.params.config,
        workflow_dir=smk.params.workflow_dir,
        extra_versions={"snakemake": snakemake_version},
        progress=True,
        workers=int(smk.threads),
    )


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
