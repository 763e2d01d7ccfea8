"""Thin wrapper: snakemake rule `evaluate_segment` -> calflow.segment.stage.evaluate_session."""
import logging

from calflow.runner import run_script
from calflow.segment.stage import evaluate_session


def main(smk):
    res = evaluate_session(smk.input.footprints, smk.input.masks, smk.output[0], session=smk.wildcards.session,
                           heldout=smk.params.heldout, iou_threshold=smk.params.iou_threshold,
                           max_distance=smk.params.max_distance)
    logging.getLogger("calflow.segment").info("%s: F1 %.3f (centroid F1 %.3f)", smk.wildcards.session,
                                              res["f1"], res["centroid"]["f1"])


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
