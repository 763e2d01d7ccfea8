# Stimulation classifier (GPU in profiles/slurm), Grad-CAM maps + ZNCC matrices, condition comparison.
# docs/classify.md: one cross-fitted classifier per animal (sessions '<animal>_<condition>' sharing
# a targets table), trained on every condition of that animal; models in results/classifier/{group}/.
# Helpers (and the rules' params, CLS_MODEL_PARAMS / CLS_CONTROL_MEMBERS) are in classify_common.smk.


rule train_classifier:
    """Cross-fitted stimulation classifier of one animal (all its sessions and conditions); with
    classify.shuffle_control also its shuffled-label control, the same training on trial labels
    permuted within each session, in the same job (the sessions streamed once)."""
    input:
        unpack(lambda w: _classify_entry_inputs(CLASSIFY_GROUPS[w.group])),
    output:
        **CLS_CONTROL_OUTPUTS,
        model="results/classifier/{group}/model.pt",
        metrics="results/classifier/{group}/metrics.json",
        predictions="results/classifier/{group}/predictions.npz",
    log:
        "results/logs/train_classifier/{group}.log",
    priority: 10  # the longest jobs: start them as soon as an animal's sessions are corrected
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=3000,
    params:
        classify=CLS_MODEL_PARAMS,
        control_members=CLS_CONTROL_MEMBERS,
        seed=config["seed"],
        sessions=lambda w: CLASSIFY_GROUPS[w.group],
        conditions=lambda w: [SESSIONS.loc[s, "condition"] for s in CLASSIFY_GROUPS[w.group]],
        checkpoint_dir=lambda w: f"results/classifier/{w.group}/checkpoints",
    script:
        "../scripts/train_classifier.py"


rule gradcam:
    """Grad-CAM maps per stimulation pattern (held-out trials) and the pattern x pattern ZNCC matrix; with
    classify.shuffle_control also the shuffled-label control's maps (gradcam_shuffled.zarr, the same
    layout), from the same streamed session."""
    input:
        unpack(lambda w: {k: v[0] for k, v in _classify_entry_inputs([w.session]).items()}),
        unpack(_gradcam_control_input),
        model=lambda w: f"results/classifier/{classifier_group(w.session)}/model.pt",
        # the trace-correlation matrix of the same targets, for comparison with the ZNCC matrix
        cnmf="results/{session}/cnmf.zarr",
    output:
        **GRADCAM_CONTROL_OUTPUTS,
        store=directory("results/{session}/gradcam.zarr"),
        plots=report(
            directory("results/{session}/plots/gradcam"),
            patterns=["{name}.png"],
            caption="../report/gradcam.rst",
            category="Grad-CAM",
            subcategory="{session}",
            labels={"session": "{session}", "figure": "{name}"},
        ),
    log:
        "results/logs/gradcam/{session}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=3000,
    params:
        gradcam=config["gradcam"],
        condition=lambda w: SESSIONS.loc[w.session, "condition"],
    script:
        "../scripts/gradcam.py"
