"""Thin wrapper: snakemake rule `nwb` -> calflow.cnmf.nwb.export_nwb."""
from calflow.cnmf.nwb import export_nwb
from calflow.runner import run_script


def main(smk):
    return export_nwb(smk.input[0], smk.output[0], session=smk.wildcards.session, condition=smk.params.condition,
                      fps=smk.params.fps)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
