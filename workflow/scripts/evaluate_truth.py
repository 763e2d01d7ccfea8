"""Thin wrapper: snakemake rule `evaluate_truth` -> calflow.truth_eval.evaluate_session, once per simulated session."""
from calflow.runner import run_script
from calflow.truth_eval import evaluate_session


def main(smk):
    i = smk.input
    for n, session in enumerate(smk.params.sessions):
        evaluate_session(i.truth[n], i.motion[n], i.cnmf[n], i.footprints[n], smk.output.json[n], smk.output.npz[n],
                         session=session)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
