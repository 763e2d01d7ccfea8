"""Thin wrapper: snakemake rule `simulate_virtual_stain_demo` -> calflow.virtual_stain.simulate.write_pair."""
from calflow.runner import run_script
from calflow.virtual_stain.simulate import write_pair


def main(smk):
    write_pair(smk.output.label_free, smk.output.fluorescence, smk.params.demo, seed=smk.params.seed)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
