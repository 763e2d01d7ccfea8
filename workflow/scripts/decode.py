"""Thin wrapper: snakemake rule `decode` -> calflow.decode.decode_session."""
import logging

from calflow.decode.stage import decode_session
from calflow.runner import run_script


def main(smk):
    res = decode_session(smk.input.cnmf, smk.input.stim_log, smk.output.json, smk.output.plots,
                         smk.params.decode, n_jobs=smk.threads)
    log = logging.getLogger("calflow.decode")
    for name, r in res["classifiers"].items():
        log.info("%s: %s accuracy %.3f (p=%s, %s test)", smk.wildcards.session, name, r["accuracy"],
                 r.get("p_value", "-"), r.get("p_method", "no"))


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
