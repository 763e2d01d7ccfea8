# Helpers of workflow/rules/classify.smk: which sessions take part, model groups (animals), compared pairs.
CLS = config["classify"]
# The rules' params (calflow.config.classify_model_params / classify_control_members): the section
# without the keys that only steer the workflow (scratch_dir, profile, shuffle_control,
# control_members), and the control's size (0 = no control). Changing the control re-runs
# train_classifier, whose real classifier then resumes from its last checkpoint (nothing to train).
CLS_MODEL_PARAMS = classify_model_params(CLS)
CLS_CONTROL_MEMBERS = classify_control_members(CLS)
# train_classifier's shuffled-label control outputs (classify.shuffle_control; docs/classify.md)
CLS_CONTROL_OUTPUTS = (
    {
        "control_model": "results/classifier/{group}/shuffled/model.pt",
        "control_metrics": "results/classifier/{group}/shuffled/metrics.json",
        "control_predictions": "results/classifier/{group}/shuffled/predictions.npz",
    }
    if CLS_CONTROL_MEMBERS
    else {}
)
# ... and gradcam's: the control's maps of every session, made in the gradcam job
GRADCAM_CONTROL_OUTPUTS = (
    {"control_store": directory("results/{session}/gradcam_shuffled.zarr")} if CLS_CONTROL_MEMBERS else {}
)


def _gradcam_control_input(w):
    """The shuffled-label control's model of the session's group (classify.shuffle_control), else nothing."""
    if not CLS_CONTROL_MEMBERS:
        return {}
    return {"control_model": f"results/classifier/{classifier_group(w.session)}/shuffled/model.pt"}


def classify_sessions():
    """Sessions with a stim log and a targets table."""
    return [
        s
        for s in SESSION_NAMES
        if all(isinstance(SESSIONS.loc[s, c], str) and SESSIONS.loc[s, c] for c in ("stim_log", "targets"))
    ]


def classifier_group(session):
    """The classifier (model group) of a session: its animal (the sheet's `animal` column, or the
    session name before classify.animal_separator), or the session itself with group_by: session."""
    if CLS["group_by"] == "session":
        return session
    return SESSIONS.loc[session, "animal"]


CLASSIFY_SESSIONS = classify_sessions()
CLASSIFY_GROUPS = {}
for _s in CLASSIFY_SESSIONS:
    CLASSIFY_GROUPS.setdefault(classifier_group(_s), []).append(_s)


def compare_pairs():
    """compare.pairs (or every pair of conditions in sheet order) that some group has both of."""
    conds = list(dict.fromkeys(SESSIONS.loc[CLASSIFY_SESSIONS, "condition"])) if CLASSIFY_SESSIONS else []
    pairs = [tuple(p) for p in config["compare"]["pairs"]] or [
        (a, b) for i, a in enumerate(conds) for b in conds[i + 1 :]
    ]
    have = {(g, SESSIONS.loc[s, "condition"]) for g, ss in CLASSIFY_GROUPS.items() for s in ss}
    return [(a, b) for a, b in pairs if any((g, a) in have and (g, b) in have for g in CLASSIFY_GROUPS)]


COMPARE_PAIRS = compare_pairs()


wildcard_constraints:
    group="|".join(map(re.escape, CLASSIFY_GROUPS)) or "NO_GROUP",
    a="|".join(map(re.escape, sorted({c for p in COMPARE_PAIRS for c in p}))) or "NO_CONDITION",
    b="|".join(map(re.escape, sorted({c for p in COMPARE_PAIRS for c in p}))) or "NO_CONDITION",


def _classify_entry_inputs(sessions):
    files = {
        "motion": [f"results/{s}/motion.zarr" for s in sessions],
        "stim_log": [SESSIONS.loc[s, "stim_log"] for s in sessions],
        "targets": [SESSIONS.loc[s, "targets"] for s in sessions],
    }
    if CLS["mask"] == "cells":
        files["footprints"] = [f"results/{s}/footprints.zarr" for s in sessions]
    return files


def _compare_inputs(w):
    """Map stores of both conditions per source (Grad-CAM, the controls) and the classifiers' metrics."""
    sessions = [s for s in CLASSIFY_SESSIONS if SESSIONS.loc[s, "condition"] in (w.a, w.b)]
    groups = sorted({classifier_group(s) for s in sessions})
    out = {
        "gradcam": [f"results/{s}/gradcam.zarr" for s in sessions],
        "stim_maps": [f"results/{s}/stim_maps.zarr" for s in sessions],
        "metrics": [f"results/classifier/{g}/metrics.json" for g in groups],
    }
    if CLS.get("shuffle_control"):
        out["gradcam_shuffled"] = [f"results/{s}/gradcam_shuffled.zarr" for s in sessions]
    return out


def animal_groups():
    """animal -> experimental group (the sheet's `group` column) of the classified sessions."""
    return {
        classifier_group(s): SESSIONS.loc[s, "group"]
        for s in CLASSIFY_SESSIONS
        if isinstance(SESSIONS.loc[s, "group"], str) and SESSIONS.loc[s, "group"]
    }
