"""Thin wrapper: snakemake rule `motion_chunk` -> calflow.motion.stage.motion_chunk."""
import logging

from calflow.motion.stage import motion_chunk
from calflow.runner import run_script


def main(smk):
    stats = motion_chunk(smk.input.raw, smk.input.template, smk.output.store, int(smk.wildcards.chunk),
                         params=smk.params.motion, progress=True)
    logging.getLogger("calflow.motion").info("motion chunk: %s", stats)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
