"""Thin wrapper: snakemake rule `segment` -> calflow.segment.infer.segment_session (segment.method:
network) or calflow.segment.corr_pnr.seed_session (segment.method: corr_pnr)."""
import logging

from calflow.runner import run_script


def main(smk):
    if smk.params.method == "corr_pnr":
        from calflow.segment.corr_pnr import seed_session

        info = seed_session(smk.input.movie, smk.input.summary, smk.output[0], params=smk.params.corr_pnr)
    else:
        from calflow.segment.infer import segment_session

        info = segment_session(smk.input.summary, smk.input.keyframes, smk.input.model, smk.output[0],
                               device=smk.params.device, tta=smk.params.tta, post=smk.params.post)
    logging.getLogger("calflow.segment").info("segment: %s", info)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
