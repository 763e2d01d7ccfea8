"""Thin wrapper: snakemake rule `cnmf` -> calflow.cnmf.stage.run_cnmf."""
from calflow.cnmf.stage import run_cnmf
from calflow.runner import run_script


def main(smk):
    return run_cnmf(smk.input.movie, smk.input.footprints, smk.output[0], params=smk.params.cnmf,
                    summary_store=smk.input.summary, fps=smk.params.fps, seed=smk.params.seed)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
