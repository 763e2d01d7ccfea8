# Population decoding (calflow.decode): cnmf.zarr traces + the session's stim log -> decode.json.
# Only sessions with a stim_log get a decode job.


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
