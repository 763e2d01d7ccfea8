"""Thin wrapper: snakemake rule `keyframes` -> calflow.keyframes.compute_keyframes."""
import logging

from calflow.keyframes import compute_keyframes
from calflow.runner import run_script


def main(smk):
    params = dict(smk.params.keyframes)
    params["seed"] = int(params.get("seed", 0)) + int(smk.params.seed)
    info = compute_keyframes(smk.input[0], smk.output[0], params)
    logging.getLogger("calflow.keyframes").info("keyframes: %s", info)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
