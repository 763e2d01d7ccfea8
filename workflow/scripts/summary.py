"""Thin wrapper: snakemake rule `summary` -> calflow.summary.stage.compute_summary + figures."""
from calflow.runner import run_script
from calflow.summary.plots import plot_summary
from calflow.summary.stage import compute_summary


def main(smk):
    compute_summary(smk.input[0], smk.output.store, params=smk.params.summary, progress=True)
    plot_summary(smk.output.store, smk.output.plots)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
