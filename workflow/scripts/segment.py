"""Thin wrapper: snakemake rule `segment` -> calflow.segment.infer.segment_session."""
import logging

from calflow.runner import run_script
from calflow.segment.infer import segment_session


def main(smk):
    info = segment_session(smk.input.summary, smk.input.keyframes, smk.input.model, smk.output[0],
                           device=smk.params.device, tta=smk.params.tta, post=smk.params.post)
    logging.getLogger("calflow.segment").info("segment: %s", info)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
