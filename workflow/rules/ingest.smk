rule ingest:
    """Any supported raw movie -> results/{session}/raw.zarr (zarr v3, time-chunked, Blosc-zstd)."""
    input:
        movie_files,
    output:
        directory("results/{session}/raw.zarr"),
    log:
        "results/logs/ingest/{session}.log",
    priority: 5  # upstream of classifier training (the longest chain: training -> gradcam -> compare -> report)
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=ingest_mem_mb,
        runtime=ingest_runtime,
    params:
        ingest=config["ingest"],
        spec=lambda w: SESSIONS.loc[w.session, "movie"],
        fps=lambda w: float(SESSIONS.loc[w.session, "fps"]),
    script:
        "../scripts/ingest.py"
