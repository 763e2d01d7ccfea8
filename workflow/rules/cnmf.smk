# Seeded CNMF (calflow's own, torch) or CaImAn's (cnmf.backend: caiman, conda env envs/caiman.yaml),
# then the NWB export. Exactly one of the two cnmf rules can make cnmf.zarr: the other's session
# wildcard matches nothing. Helpers are in cnmf_common.smk.


rule cnmf:
    """Seeded CNMF (HALS + OASIS) of the corrected movie from the segmenter's footprints -> cnmf.zarr."""
    input:
        movie="results/{session}/motion.zarr",
        footprints="results/{session}/footprints.zarr",
        summary="results/{session}/summary.zarr",
    output:
        directory("results/{session}/cnmf.zarr"),
    log:
        "results/logs/cnmf/{session}.log",
    wildcard_constraints:
        session=".+" if CNMF["backend"] == "calflow" else _NO_SESSION,
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=cnmf_mem_mb,
        runtime=cnmf_runtime,
    params:
        cnmf=CNMF,
        fps=lambda w: float(SESSIONS.loc[w.session, "fps"]),
        seed=config["seed"],
    script:
        "../scripts/cnmf.py"


rule cnmf_caiman:
    """cnmf.backend: caiman: CaImAn's seeded CNMF (conda-forge caiman, --sdm conda) -> the same cnmf.zarr."""
    input:
        movie="results/{session}/motion.zarr",
        footprints="results/{session}/footprints.zarr",
    output:
        directory("results/{session}/cnmf.zarr"),
    log:
        "results/logs/cnmf/{session}.log",
    wildcard_constraints:
        session=".+" if CNMF["backend"] == "caiman" else _NO_SESSION,
    conda:
        "../../envs/caiman.yaml"
    threads: 1
    resources:
        mem_mb=cnmf_mem_mb,
    params:
        cnmf=CNMF,
        fps=lambda w: float(SESSIONS.loc[w.session, "fps"]),
    script:
        "../scripts/cnmf_caiman.py"


rule nwb:
    """NWB file of the whole session (docs/nwb.md): metadata and Subject, the linked movie, motion
    correction, summary images, CNMF cells and traces, photostimulation, classifier and Grad-CAM."""
    input:
        unpack(nwb_inputs),
    output:
        "results/{session}/{session}.nwb",
    log:
        "results/logs/nwb/{session}.log",
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=nwb_runtime,
    params:
        condition=lambda w: str(SESSIONS.loc[w.session, "condition"]),
        fps=lambda w: float(SESSIONS.loc[w.session, "fps"]),
        animal=lambda w: str(SESSIONS.loc[w.session, "animal"]),
        group=nwb_group,
        metadata=nwb_session_metadata,
        nwb={k: v for k, v in NWB.items() if k != "defaults"},
    script:
        "../scripts/nwb.py"
