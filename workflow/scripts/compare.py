"""Thin wrapper: snakemake rule `compare` -> calflow.compare."""
import logging

from calflow.compare.stage import compare_conditions, write_comparison
from calflow.runner import run_script


def main(smk):
    sources = {k: list(smk.input[k]) for k in ("gradcam", "stim_maps", "gradcam_shuffled") if k in smk.input.keys()}
    res = compare_conditions(sources, smk.wildcards.a, smk.wildcards.b, smk.params.compare,
                             metrics_files=list(smk.input.metrics), animal_groups=dict(smk.params.animal_groups),
                             profile=str(smk.params.get("profile", "default")), workers=int(smk.threads))
    write_comparison(res, smk.output.json, smk.output.figure)
    p = "no test (too few animals)" if res["p"] is None else f"p = {res['p']:.4g}"
    logging.getLogger("calflow.compare").info("compare %s vs %s (%s, %d animals): effect %+.4f, %s", res["a"],
                                              res["b"], res["primary"], res["n_animals"], res["effect"], p)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
