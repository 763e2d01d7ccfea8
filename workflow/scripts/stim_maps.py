"""Thin wrapper: snakemake rule `stim_maps` -> calflow.stim_maps.stage.session_stim_maps."""
import logging

from calflow.runner import run_script
from calflow.stim_maps.stage import session_stim_maps


def main(smk):
    entry = {"session": smk.wildcards.session, "condition": smk.params.condition, "motion": smk.input.motion,
             "stim_log": smk.input.stim_log, "targets": smk.input.targets}
    info = session_stim_maps(entry, smk.params.stim_maps, smk.output.store, animal=smk.params.animal)
    logging.getLogger("calflow.stim_maps").info("stim_maps: %s", info)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
