"""Thin wrapper: snakemake checkpoint `motion_template` -> calflow.motion.stage.motion_template."""
import logging

from calflow.motion.stage import motion_template
from calflow.runner import run_script


def main(smk):
    plan = motion_template(smk.input[0], smk.output.store, params=smk.params.motion,
                           split_frames=smk.params.split_frames)
    logging.getLogger("calflow.motion").info("motion template: %s", plan)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
