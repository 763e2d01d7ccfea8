"""Thin wrapper: snakemake rule `compare` -> calflow.compare."""
import logging

from calflow.compare import compare_conditions, write_comparison
from calflow.runner import run_script


def main(smk):
    res = compare_conditions(list(smk.input.gradcam), smk.wildcards.a, smk.wildcards.b, smk.params.compare,
                             metrics_files=list(smk.input.metrics))
    write_comparison(res, smk.output.json, smk.output.figure)
    logging.getLogger("calflow.compare").info("compare %s vs %s: difference %.4f, p = %.4f", res["a"], res["b"],
                                              res["difference_mean_offdiag"], res["p_permutation"])


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
