"""Thin wrapper: snakemake rule `track_crossday` -> calflow.tracking.crossday.crossday_compare."""
from calflow.runner import run_script
from calflow.tracking.crossday import crossday_compare


def main(smk):
    crossday_compare(smk.params.animals, smk.wildcards.a, smk.wildcards.b, smk.output[0], seed=smk.params.seed)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
