# Population decoding (calflow.decode): cnmf.zarr traces + the session's stim log -> decode.json.
# Only sessions with a stim_log get a decode job.


rule decode:
    """Trial x neuron responses, cleaned of spontaneous PCs -> scikit-learn classifiers vs the dummy (label-independent folds, permutation p)."""
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
    log:
        "results/logs/decode/{session}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1  # profiles/slurm sets more (set-threads)
    resources:
        mem_mb=2000,  # 10,000 neurons x 10,873 frames x 2,000 trials: 1.7 GB peak (benchmarks/decode_scale.py)
    params:
        decode=config["decode"],
    script:
        "../scripts/decode.py"
