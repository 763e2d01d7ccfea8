"""Thin wrapper: snakemake rule `train_classifier` -> calflow.classify.train_group (and the shuffled-label control)."""
import logging

from calflow.classify.stage import train_group
from calflow.runner import run_script


def main(smk):
    entries = []
    for i, s in enumerate(smk.params.sessions):
        e = {"session": s, "condition": smk.params.conditions[i], "motion": smk.input.motion[i],
             "stim_log": smk.input.stim_log[i], "targets": smk.input.targets[i]}
        if "footprints" in smk.input.keys():
            e["footprints"] = smk.input.footprints[i]
        entries.append(e)
    out_dir = str(smk.output.model).rsplit("/", 1)[0]
    control = str(smk.output.control_model).rsplit("/", 1)[0] if "control_model" in smk.output.keys() else None
    # scratch_dir is not a rule param (moving it must not re-run the job): it comes from the config
    m = train_group(entries, entries[0]["targets"], smk.params.classify, out_dir, seed=int(smk.params.seed),
                    group=smk.wildcards.group, control_dir=control, control_members=int(smk.params.control_members),
                    scratch_dir=smk.config.get("classify", {}).get("scratch_dir", ""))
    for s, v in m["sessions"].items():
        logging.getLogger("calflow.classify").info("%s: held-out accuracy %s, train %s", s, v["test"]["accuracy"],
                                                   v["train_accuracy"])


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
