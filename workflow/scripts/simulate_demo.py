"""Thin wrapper: snakemake rule `simulate_demo` -> calflow.simulate.write_session."""
import dataclasses
from pathlib import Path

from calflow.runner import run_script
from calflow.simulate import SimParams, draw_nuisance, study_params, write_session


def main(smk):
    sim = {**smk.params.sim, "fps": smk.params.fps, "w_gain": smk.params.w_gain}
    if "n_frames" in sim:  # an explicit length: as many blocks of trials as fit
        params = SimParams.from_dict(sim)
    else:  # every pattern trials_per_pattern times, n_frames to fit
        params = study_params(**sim, trials_per_pattern=smk.params.trials_per_pattern)
    params = dataclasses.replace(params, **draw_nuisance(smk.params.nuisance_seed, smk.params.nuisance, base=params))
    params.validate()
    write_session(
        Path(smk.output.movie).parent,
        params,
        smk.params.seed,
        anatomy_seed=smk.params.anatomy_seed,
        threads=smk.threads,
        progress=True,
    )


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
