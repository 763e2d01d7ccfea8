"""Thin wrapper: snakemake rule `motion` -> calflow.motion.stage.correct_motion + figures."""
import logging

from calflow.motion.plots import plot_motion
from calflow.motion.stage import correct_motion
from calflow.runner import run_script


def main(smk):
    stats = correct_motion(smk.input[0], smk.output.store, params=smk.params.motion, progress=True)
    logging.getLogger("calflow.motion").info("motion: %s", stats)
    plot_motion(smk.output.store, smk.output.plots)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
