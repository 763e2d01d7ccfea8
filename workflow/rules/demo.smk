rule simulate_demo:
    """Simulated two-photon session with ground truth (the bundled demo; needs no data)."""
    output:
        movie="results/demo/{session}/movie.tif",
        stim_log="results/demo/{session}/stim_log.csv",
        targets="results/demo/{session}/targets.csv",
        masks="results/demo/{session}/masks.tif",
        truth="results/demo/{session}/ground_truth.npz",
    log:
        "results/logs/simulate_demo/{session}.log",
    priority: 5  # upstream of classifier training (the longest chain: training -> gradcam -> compare -> report)
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        sim=config["demo"]["sim"],
        w_gain=lambda w: config["demo"]["w_gain"].get(SESSIONS.loc[w.session, "condition"], 1.0),
        fps=lambda w: float(SESSIONS.loc[w.session, "fps"]),
        seed=lambda w: config["seed"] * 7919 + _stable_seed(w.session),
        anatomy_seed=lambda w: config["seed"] * 7919 + _stable_seed(demo_animal(w.session)),
        trials_per_pattern=config["demo"]["trials_per_pattern"],
        nuisance=config["demo"]["nuisance"],
        nuisance_seed=lambda w: config["seed"] * 7919 + _stable_seed(f"nuisance {w.session}"),
    script:
        "../scripts/simulate_demo.py"
