# Population decoding (calflow.decode): cnmf.zarr traces + the session's stim log -> decode.json.
# Only sessions with a stim_log get a decode job. Rule `decode` reads results/{session}/cnmf.zarr,
# which rule `cnmf` makes; until a rule named `cnmf` is in the workflow, decode_targets() is empty,
# so `all` and the report do not ask for decoding (the rule exists and `snakemake -n
# results/{session}/decode.json` names the missing input).


rule decode:
    """Trial x neuron responses -> scikit-learn classifiers vs the dummy (stratified k-fold, permutation p)."""
    input:
        cnmf="results/{session}/cnmf.zarr",
        stim_log=lambda w: SESSIONS.loc[w.session, "stim_log"],
    output:
        json="results/{session}/decode.json",
        plots=report(
            directory("results/{session}/plots/decode"),
            patterns=["{name}.png"],
            caption="../report/decode.rst",
            category="Decoding",
            subcategory="{session}",
            labels={"session": "{session}", "figure": "{name}"},
        ),
    params:
        decode=config["decode"],
    conda:
        "../../envs/torch.yaml"
    log:
        "results/logs/decode/{session}.log",
    threads: 2
    resources:
        mem_mb=2000,
    script:
        "../scripts/decode.py"
