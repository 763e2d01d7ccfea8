rule motion:
    """Rigid + piecewise-rigid motion correction (torch; GPU when present) -> motion.zarr + figures."""
    input:
        "results/{session}/raw.zarr",
    output:
        store=directory("results/{session}/motion.zarr"),
        plots=report(
            directory("results/{session}/plots/motion"),
            patterns=["{name}.png"],
            caption="../report/motion.rst",
            category="Motion",
            subcategory="{session}",
            labels={"session": "{session}", "figure": "{name}"},
        ),
    log:
        "results/logs/motion/{session}.log",
    priority: 5  # upstream of classifier training (the longest chain: training -> gradcam -> compare -> report)
    conda:
        "../../envs/torch.yaml"
    threads: 1  # profiles/slurm sets more (set-threads); on a 2-core machine two 1-thread jobs pack better
    resources:
        mem_mb=motion_mem_mb,
        runtime=motion_runtime,
    params:
        motion=config["motion"],
    script:
        "../scripts/motion.py"


rule summary:
    """Streaming mean, max, std, local-correlation and PNR images of the corrected movie."""
    input:
        "results/{session}/motion.zarr",
    output:
        store=directory("results/{session}/summary.zarr"),
        plots=report(
            directory("results/{session}/plots/summary"),
            patterns=["{name}.png"],
            caption="../report/summary.rst",
            category="Summary images",
            subcategory="{session}",
            labels={"session": "{session}", "figure": "{name}"},
        ),
    log:
        "results/logs/summary/{session}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=summary_mem_mb,
        runtime=summary_runtime,
    params:
        summary=config["summary"],
    script:
        "../scripts/summary.py"
