"""Thin wrapper: snakemake rule `virtual_stain` -> calflow.virtual_stain.stage.run_dataset."""
import logging

from calflow.runner import run_script
from calflow.virtual_stain.stage import run_dataset


def main(smk):
    out_dir = smk.output.metrics.rsplit("/", 1)[0]
    res = run_dataset(smk.params.images, out_dir, smk.params.virtual_stain, dataset=smk.wildcards.dataset)
    t = res["test"]
    logging.getLogger("calflow.virtual_stain").info(
        "%s: held-out F1 %.3f, accuracy %.3f, ROC AUC %.3f, fraction Pearson r %.3f", smk.wildcards.dataset,
        t["f1"], t["accuracy"], t["roc_auc"], res["pearson_r"])


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
