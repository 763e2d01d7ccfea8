"""Thin wrapper: snakemake rule `track` -> calflow.tracking.stage.track_animal + its figure."""
from calflow.runner import run_script
from calflow.tracking.stage import plot_animal, track_animal


def main(smk):
    info = track_animal(smk.wildcards.animal, smk.params.sessions, smk.input.summary, smk.input.cnmf,
                        smk.output.store, params=smk.params.tracking, seed=smk.params.seed)
    plot_animal(smk.output.store, smk.input.summary, smk.output.figure)
    return info


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
