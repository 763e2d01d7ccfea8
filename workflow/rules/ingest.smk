rule ingest:
    """Any supported raw movie -> results/{session}/raw.zarr (zarr v3, time-chunked, Blosc-zstd)."""
    input:
        movie_files,
    output:
        directory("results/{session}/raw.zarr"),
    params:
        ingest=config["ingest"],
        spec=lambda w: SESSIONS.loc[w.session, "movie"],
        fps=lambda w: float(SESSIONS.loc[w.session, "fps"]),
    conda:
        "../../envs/io.yaml"
    log:
        "results/logs/ingest/{session}.log",
    threads: 1
    resources:
        mem_mb=ingest_mem_mb,
        runtime=ingest_runtime,
    script:
        "../scripts/ingest.py"
