# motion.split_frames = 0: rule motion, one job per session. N > 0: motion_template (a checkpoint: the
# template and how many chunks), one motion_chunk job per N frames, and motion_gather, which writes the
# same motion.zarr and figures (docs/motion.md "Long sessions").
if MOTION_SPLIT:

    ruleorder: motion_gather > motion

else:

    ruleorder: motion > motion_gather


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
        motion=MOTION_PARAMS,
    script:
        "../scripts/motion.py"


checkpoint motion_template:
    """Split runs: the template (as rule motion builds it) and the chunk plan of a session."""
    input:
        "results/{session}/raw.zarr",
    output:
        store=directory("results/{session}/motion_split/template.zarr"),
    log:
        "results/logs/motion_template/{session}.log",
    priority: 5
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=motion_template_mem_mb,
        runtime=motion_template_runtime,
    params:
        motion=MOTION_PARAMS,
        split_frames=MOTION_SPLIT,
    script:
        "../scripts/motion_template.py"


rule motion_chunk:
    """Split runs: one time chunk of a session registered to its template -> a part store (temporary)."""
    input:
        raw="results/{session}/raw.zarr",
        template="results/{session}/motion_split/template.zarr",
    output:
        store=temp(directory("results/{session}/motion_split/part{chunk}.zarr")),
    log:
        "results/logs/motion_chunk/{session}_chunk{chunk}.log",
    wildcard_constraints:
        chunk=r"\d+",
    priority: 5
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=motion_chunk_mem_mb,
        runtime=motion_chunk_runtime,
    params:
        motion=MOTION_PARAMS,
    script:
        "../scripts/motion_chunk.py"


rule motion_gather:
    """Split runs: check every part, then motion.zarr (parts' chunks linked, not copied) + figures."""
    input:
        raw="results/{session}/raw.zarr",
        template="results/{session}/motion_split/template.zarr",
        parts=motion_parts,
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
        "results/logs/motion_gather/{session}.log",
    priority: 5
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=motion_gather_mem_mb,
        runtime=motion_gather_runtime,
    params:
        motion=MOTION_PARAMS,
    script:
        "../scripts/motion_gather.py"


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
