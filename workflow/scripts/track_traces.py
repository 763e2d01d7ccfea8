"""Thin wrapper: snakemake rule `track_traces` -> calflow.tracking.stage.reextract_session."""
from calflow.runner import run_script
from calflow.tracking.stage import reextract_session


def main(smk):
    return reextract_session(smk.input.tracking, smk.wildcards.session, smk.input.movie, smk.input.summary,
                             smk.output.seeds, smk.output.traces, cnmf=smk.params.cnmf, fps=smk.params.fps,
                             seed=smk.params.seed)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
