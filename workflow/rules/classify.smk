# Stimulation classifier (GPU in profiles/slurm), Grad-CAM maps + ZNCC matrices, condition comparison.
# docs/classify.md: one cross-fitted classifier per animal (sessions '<animal>_<condition>' sharing
# a targets table), trained on every condition of that animal; models in results/classifier/{group}/.
CLS = config["classify"]


def classify_sessions():
    """Sessions with a stim log and a targets table."""
    return [s for s in SESSION_NAMES
            if all(isinstance(SESSIONS.loc[s, c], str) and SESSIONS.loc[s, c] for c in ("stim_log", "targets"))]


def classifier_group(session):
    if CLS["group_by"] == "session":
        return session
    return session.split(CLS["animal_separator"], 1)[0] if CLS["animal_separator"] else session


CLASSIFY_SESSIONS = classify_sessions()
CLASSIFY_GROUPS = {}
for _s in CLASSIFY_SESSIONS:
    CLASSIFY_GROUPS.setdefault(classifier_group(_s), []).append(_s)


def compare_pairs():
    """compare.pairs (or every pair of conditions in sheet order) that some group has both of."""
    conds = list(dict.fromkeys(SESSIONS.loc[CLASSIFY_SESSIONS, "condition"])) if CLASSIFY_SESSIONS else []
    pairs = [tuple(p) for p in config["compare"]["pairs"]] or [
        (a, b) for i, a in enumerate(conds) for b in conds[i + 1:]]
    have = {(g, SESSIONS.loc[s, "condition"]) for g, ss in CLASSIFY_GROUPS.items() for s in ss}
    return [(a, b) for a, b in pairs if any((g, a) in have and (g, b) in have for g in CLASSIFY_GROUPS)]


COMPARE_PAIRS = compare_pairs()


wildcard_constraints:
    group="|".join(map(re.escape, CLASSIFY_GROUPS)) or "NO_GROUP",


def _classify_entry_inputs(sessions):
    files = {
        "motion": [f"results/{s}/motion.zarr" for s in sessions],
        "stim_log": [SESSIONS.loc[s, "stim_log"] for s in sessions],
        "targets": [SESSIONS.loc[s, "targets"] for s in sessions],
    }
    if CLS["mask"] == "cells":
        files["footprints"] = [f"results/{s}/footprints.zarr" for s in sessions]
    return files


rule train_classifier:
    """Cross-fitted stimulation classifier of one animal (all its sessions and conditions)."""
    input:
        unpack(lambda w: _classify_entry_inputs(CLASSIFY_GROUPS[w.group])),
    output:
        model="results/classifier/{group}/model.pt",
        metrics="results/classifier/{group}/metrics.json",
        predictions="results/classifier/{group}/predictions.npz",
    params:
        classify=CLS,
        seed=config["seed"],
        sessions=lambda w: CLASSIFY_GROUPS[w.group],
        conditions=lambda w: [SESSIONS.loc[s, "condition"] for s in CLASSIFY_GROUPS[w.group]],
        checkpoint_dir=lambda w: f"results/classifier/{w.group}/checkpoints",
    conda:
        "../../envs/torch.yaml"
    log:
        "results/logs/train_classifier/{group}.log",
    threads: 1
    resources:
        mem_mb=3000,
    script:
        "../scripts/train_classifier.py"


rule gradcam:
    """Grad-CAM maps per stimulation pattern (held-out trials) and the pattern x pattern ZNCC matrix."""
    input:
        unpack(lambda w: {k: v[0] for k, v in _classify_entry_inputs([w.session]).items()}),
        model=lambda w: f"results/classifier/{classifier_group(w.session)}/model.pt",
    output:
        store=directory("results/{session}/gradcam.zarr"),
        plots=report(
            directory("results/{session}/plots/gradcam"),
            patterns=["{name}.png"],
            caption="../report/gradcam.rst",
            category="Grad-CAM",
            subcategory="{session}",
            labels={"session": "{session}", "figure": "{name}"},
        ),
    params:
        gradcam=config["gradcam"],
        condition=lambda w: SESSIONS.loc[w.session, "condition"],
        # optional: used when the cnmf stage has written it (not an input yet, see docs/classify.md)
        cnmf=lambda w: f"results/{w.session}/cnmf.zarr",
    conda:
        "../../envs/torch.yaml"
    log:
        "results/logs/gradcam/{session}.log",
    threads: 1
    resources:
        mem_mb=3000,
    script:
        "../scripts/gradcam.py"


def _compare_inputs(w):
    sessions = [s for s in CLASSIFY_SESSIONS if SESSIONS.loc[s, "condition"] in (w.a, w.b)]
    groups = sorted({classifier_group(s) for s in sessions})
    return {"gradcam": [f"results/{s}/gradcam.zarr" for s in sessions],
            "metrics": [f"results/classifier/{g}/metrics.json" for g in groups]}


rule compare:
    """Summed / mean off-diagonal ZNCC per condition, bootstrap CIs, permutation p-value, accuracy."""
    input:
        unpack(_compare_inputs),
    output:
        json="results/compare/{a}_vs_{b}.json",
        figure=report("results/compare/{a}_vs_{b}.png", caption="../report/compare.rst", category="Comparison"),
    params:
        compare=config["compare"],
    conda:
        "../../envs/torch.yaml"
    log:
        "results/logs/compare/{a}_vs_{b}.log",
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/compare.py"
