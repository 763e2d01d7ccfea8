"""Thin wrapper: snakemake rule `gradcam` -> calflow.gradcam.stage.session_gradcam (with the shuffled-label control's maps)."""
import logging

from calflow.gradcam.stage import session_gradcam
from calflow.runner import run_script


def main(smk):
    entry = {"session": smk.wildcards.session, "condition": smk.params.condition, "motion": smk.input.motion,
             "stim_log": smk.input.stim_log, "targets": smk.input.targets}
    if "footprints" in smk.input.keys():
        entry["footprints"] = smk.input.footprints
    info = session_gradcam(entry, smk.input.model, smk.params.gradcam, smk.output.store,
                           plots_dir=smk.output.get("plots"), cnmf_store=smk.input.get("cnmf"),
                           scratch_dir=smk.config.get("classify", {}).get("scratch_dir", ""),
                           control_model=smk.input.get("control_model"), control_store=smk.output.get("control_store"))
    logging.getLogger("calflow.gradcam").info("gradcam: %s", info)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
