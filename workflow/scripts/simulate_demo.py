"""Thin wrapper: snakemake rule `simulate_demo` -> calflow.simulate.write_session."""
from pathlib import Path

from calflow.runner import run_script
from calflow.simulate import SimParams, write_session


def main(smk):
    params = SimParams.from_dict({**smk.params.sim, "fps": smk.params.fps, "w_gain": smk.params.w_gain})
    write_session(
        Path(smk.output.movie).parent,
        params,
        smk.params.seed,
        anatomy_seed=smk.params.anatomy_seed,
        threads=smk.threads,
        progress=True,
    )


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
