# Seeded CNMF (calflow's own, torch) or CaImAn's (cnmf.backend: caiman, conda env envs/caiman.yaml),
# then the NWB export. Exactly one of the two cnmf rules can make cnmf.zarr: the other's session
# wildcard matches nothing.
CNMF = config["cnmf"]
_NO_SESSION = "(?!)"  # a regex that matches no string


def cnmf_mem_mb(wildcards, input, attempt):
    # torch + buffers (~500 MB) + a chunk in float32 (x3 working copies) + dense maps and the float64
    # spatial statistics for up to ~500 components (~6 arrays of 500 x P) + ~6 (K, T) trace arrays
    t, h, w = store_shape(input.movie)
    chunk_mb = 3 * CNMF["chunk_frames"] * h * w * 4 / 1e6
    return int(attempt * (1000 + chunk_mb + 6 * 500 * h * w * 8 / 1e6 + 6 * 500 * t * 4 / 1e6))


def cnmf_runtime(wildcards, input, attempt):
    t, h, w = store_shape(input.movie)
    return _runtime_min(t * h * w / 2e7, attempt)  # >2e7 px/s measured on 2 cores (docs/cnmf.md)


rule cnmf:
    """Seeded CNMF (HALS + OASIS) of the corrected movie from the segmenter's footprints -> cnmf.zarr."""
    input:
        movie="results/{session}/motion.zarr",
        footprints="results/{session}/footprints.zarr",
        summary="results/{session}/summary.zarr",
    output:
        directory("results/{session}/cnmf.zarr"),
    wildcard_constraints:
        session=".+" if CNMF["backend"] == "calflow" else _NO_SESSION,
    params:
        cnmf=CNMF,
        fps=lambda w: float(SESSIONS.loc[w.session, "fps"]),
        seed=config["seed"],
    conda:
        "../../envs/torch.yaml"
    log:
        "results/logs/cnmf/{session}.log",
    threads: 1
    resources:
        mem_mb=cnmf_mem_mb,
        runtime=cnmf_runtime,
    script:
        "../scripts/cnmf.py"


rule cnmf_caiman:
    """cnmf.backend: caiman: CaImAn's seeded CNMF (conda-forge caiman, --sdm conda) -> the same cnmf.zarr."""
    input:
        movie="results/{session}/motion.zarr",
        footprints="results/{session}/footprints.zarr",
    output:
        directory("results/{session}/cnmf.zarr"),
    wildcard_constraints:
        session=".+" if CNMF["backend"] == "caiman" else _NO_SESSION,
    params:
        cnmf=CNMF,
        fps=lambda w: float(SESSIONS.loc[w.session, "fps"]),
    conda:
        "../../envs/caiman.yaml"
    log:
        "results/logs/cnmf/{session}.log",
    threads: 1
    resources:
        mem_mb=cnmf_mem_mb,
    script:
        "../scripts/cnmf_caiman.py"


rule nwb:
    """NWB ophys export of cnmf.zarr: PlaneSegmentation, Fluorescence, DfOverF (pynwb)."""
    input:
        "results/{session}/cnmf.zarr",
    output:
        "results/{session}/{session}.nwb",
    params:
        condition=lambda w: str(SESSIONS.loc[w.session, "condition"]),
        fps=lambda w: float(SESSIONS.loc[w.session, "fps"]),
    conda:
        "../../envs/io.yaml"
    log:
        "results/logs/nwb/{session}.log",
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/nwb.py"
