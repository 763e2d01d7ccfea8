"""Thin wrapper: snakemake rule `ingest` -> calflow.ingest.ingest."""
from calflow.ingest import ingest
from calflow.runner import run_script


def main(smk):
    ingest(
        smk.params.spec,
        smk.output[0],
        fps=smk.params.fps,
        params=smk.params.ingest,
        session=smk.wildcards.session,
        progress=True,
    )


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
