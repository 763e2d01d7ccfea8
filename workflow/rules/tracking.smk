# Cross-session cell tracking (docs/tracking.md): per animal, register the sessions' summary images,
# match the CNMF footprints, unite them (rule track); then CNMF of every session seeded by the union
# (rule track_traces). Helpers are in tracking_common.smk.


rule track:
    """Register an animal's sessions to its reference session, match cells across sessions, union."""
    input:
        unpack(tracking_inputs),
    output:
        store=directory("results/tracking/{animal}/tracking.zarr"),
        figure="results/tracking/{animal}/tracking.png",
    log:
        "results/logs/track/{animal}.log",
    wildcard_constraints:
        animal="|".join(map(re.escape, TRACKED)) or "(?!)",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        tracking=TRACKING,
        sessions=lambda w: TRACKED[w.animal],
        seed=config["seed"],
    script:
        "../scripts/track.py"


rule track_traces:
    """CNMF of one session seeded by its animal's union footprints: a trace for every tracked cell."""
    input:
        tracking="results/tracking/{animal}/tracking.zarr",
        movie="results/{session}/motion.zarr",
        summary="results/{session}/summary.zarr",
    output:
        seeds=directory("results/tracking/{animal}/{session}/seeds.zarr"),
        traces=directory("results/tracking/{animal}/{session}/traces.zarr"),
    log:
        "results/logs/track_traces/{animal}/{session}.log",
    wildcard_constraints:
        animal="|".join(map(re.escape, TRACKED)) or "(?!)",
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
        "../scripts/track_traces.py"


rule track_crossday:
    """Per-cell cross-day statistics of the tracked cells; animals as units, cells nested (sign-flip test)."""
    input:
        crossday_inputs,
    output:
        "results/tracking/crossday_{a}_vs_{b}.json",
    log:
        "results/logs/track_crossday/{a}_vs_{b}.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        animals=lambda w: crossday_animals(w.a, w.b),
        seed=config["seed"],
    script:
        "../scripts/track_crossday.py"
