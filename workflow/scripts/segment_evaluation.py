"""Thin wrapper: snakemake rule `segment_evaluation` -> calflow.segment.stage.summarise_evaluations."""
from calflow.runner import run_script
from calflow.segment.stage import summarise_evaluations


def main(smk):
    summarise_evaluations(list(smk.input), smk.output[0])


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
