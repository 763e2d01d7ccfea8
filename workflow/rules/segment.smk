# Keyframes, segmenter training (GPU in profiles/slurm, CPU here), inference and evaluation.
# Helpers (training sessions, inputs) are in segment_common.smk.


rule keyframes:
    """K representative frames of the corrected movie (activity-ranked or k-means medoids) -> keyframes.zarr."""
    input:
        "results/{session}/motion.zarr",
    output:
        directory("results/{session}/keyframes.zarr"),
    log:
        "results/logs/keyframes/{session}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=summary_mem_mb,
    params:
        keyframes=config["keyframes"],
        seed=config["seed"],
    script:
        "../scripts/keyframes.py"


rule train_segmenter:
    """Train the U-Net/DCN cell segmenter on the annotated sessions (fine-tuning the generalist), or take
    segment.pretrained, or the bundled generalist (segment.init: generalist, or no masks to train on)."""
    input:
        unpack(train_inputs),
    output:
        model="results/models/segmenter.pt",
        metrics="results/models/segmenter_metrics.json",
    log:
        "results/logs/train_segmenter/train_segmenter.log",
    priority: 20  # on the critical path: segment, cnmf, gradcam and compare wait for it
    conda:
        "../../envs/torch.yaml"
    threads: 1  # profiles/slurm sets more (set-threads)
    resources:
        mem_mb=4000,
    params:
        # inference and evaluation keys are left out: changing them re-runs segment, not training
        train={k: v for k, v in SEG.items() if k not in SEGMENT_INFER_KEYS},
        sessions=SEGMENT_TRAIN,
        use_model=SEGMENT_USE_MODEL,
        model_source=SEGMENT_MODEL_SOURCE,
        generalist_chosen=SEGMENT_GENERALIST_CHOSEN,
        init_weights=SEGMENT_INIT,
        seed=config["seed"],
        checkpoint_dir="results/models/segmenter_checkpoints",
    script:
        "../scripts/train_segmenter.py"


rule segment:
    """Cell probability + distance cue -> watershed instances -> sparse footprints.zarr (segment.method:
    network), or correlation x peak-to-noise seeds of the corrected movie (segment.method: corr_pnr)."""
    input:
        unpack(segment_inputs),
    output:
        directory("results/{session}/footprints.zarr"),
    log:
        "results/logs/segment/{session}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        method=SEG["method"],
        corr_pnr=SEG["corr_pnr"],
        device=SEG["device"],
        tta=SEG["tta"],
        post={k: SEG[k] for k in ("prob_threshold", "cue_threshold", "min_size")},
    script:
        "../scripts/segment.py"


rule evaluate_segment:
    """Precision / recall / F1 of a session's footprints against its masks (IoU >= 0.5 and centroids)."""
    input:
        footprints="results/{session}/footprints.zarr",
        masks=lambda w: SESSIONS.loc[w.session, "masks"],
    output:
        "results/{session}/segment_eval.json",
    log:
        "results/logs/evaluate_segment/{session}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        heldout=lambda w: w.session not in SEGMENT_TRAIN,
        iou_threshold=SEG["iou_threshold"],
        max_distance=SEG["centroid_max_distance"],
    script:
        "../scripts/evaluate_segment.py"


rule segment_evaluation:
    """Mean F1 over held-out and training sessions."""
    input:
        expand("results/{session}/segment_eval.json", session=sessions_with_masks()),
    output:
        "results/models/segment_evaluation.json",
    log:
        "results/logs/segment_evaluation/segment_evaluation.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=500,
    script:
        "../scripts/segment_evaluation.py"
