"""Thin wrapper: snakemake rule `motion_gather` -> calflow.motion.stage.motion_gather + figures."""
import logging

from calflow.motion.plots import plot_motion
from calflow.motion.stage import motion_gather
from calflow.runner import run_script


def main(smk):
    stats = motion_gather(smk.input.raw, smk.input.template, list(smk.input.parts), smk.output.store,
                          params=smk.params.motion)
    logging.getLogger("calflow.motion").info("motion: %s", stats)
    plot_motion(smk.output.store, smk.output.plots)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
