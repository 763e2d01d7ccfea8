# Condition comparison (docs/classify.md): animal-level statistics of the Grad-CAM maps and the
# model-free controls. Helpers (COMPARE_PAIRS, _compare_inputs) are in classify_common.smk.


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
