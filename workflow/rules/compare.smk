# Condition comparison (docs/classify.md): animal-level statistics of the Grad-CAM maps and of the
# controls (model-free stimulus-triggered maps, the shuffled-label classifier's Grad-CAM).
# Helpers (COMPARE_PAIRS, _compare_inputs, classifier_group) are in classify_common.smk.


rule stim_maps:
    """Model-free control: the stimulus-triggered average map of every trial (no network)."""
    input:
        motion="results/{session}/motion.zarr",
        stim_log=lambda w: SESSIONS.loc[w.session, "stim_log"],
        targets=lambda w: SESSIONS.loc[w.session, "targets"],
    output:
        store=directory("results/{session}/stim_maps.zarr"),
    log:
        "results/logs/stim_maps/{session}.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        stim_maps=config["stim_maps"],
        condition=lambda w: SESSIONS.loc[w.session, "condition"],
        animal=lambda w: classifier_group(w.session),
    script:
        "../scripts/stim_maps.py"


rule compare:
    """Per-animal effects of every map source, sign-flip test over animals, hierarchical bootstrap CIs."""
    input:
        unpack(_compare_inputs),
    output:
        json="results/compare/{a}_vs_{b}.json",
        figure=report(
            "results/compare/{a}_vs_{b}.png", caption="../report/compare.rst", category="Comparison"
        ),
    log:
        "results/logs/compare/{a}_vs_{b}.log",
    conda:
        "../../envs/report.yaml"
    threads: 2  # its map sources (Grad-CAM and the two controls) are analysed in parallel; it runs last
    resources:
        mem_mb=2000,
    params:
        compare=config["compare"],
        animal_groups=lambda w: animal_groups(),
        # recorded in the JSON; its values are already in the sections (common.smk resolves it)
        profile=config["classify"]["profile"],
    script:
        "../scripts/compare.py"
