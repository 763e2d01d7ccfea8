"""Thin wrapper: snakemake rule `cnmf_caiman` (cnmf.backend: caiman) -> calflow.cnmf.caiman.run_caiman."""
from calflow.cnmf.caiman import run_caiman
from calflow.cnmf.params import CNMFParams
from calflow.runner import run_script


def main(smk):
    return run_caiman(smk.input.movie, smk.input.footprints, smk.output[0],
                      params=CNMFParams.from_config(smk.params.cnmf), fps=smk.params.fps)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
