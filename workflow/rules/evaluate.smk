# The simulated (demo) sessions against the simulator's ground truth (calflow.truth_eval, docs/report.md):
# results/{session}/truth_eval.json + .npz, which the report reads. One job evaluates every simulated
# session (a job costs ~1 s of interpreter start-up); without a simulated session there is no rule.
# SIMULATED_SESSIONS is in common.smk.


if SIMULATED_SESSIONS:

    rule evaluate_truth:
        """Motion shifts and CNMF traces of every simulated session against its ground truth -> truth_eval.json."""
        input:
            truth=expand("results/demo/{session}/ground_truth.npz", session=SIMULATED_SESSIONS),
            motion=expand("results/{session}/motion.zarr", session=SIMULATED_SESSIONS),
            cnmf=expand("results/{session}/cnmf.zarr", session=SIMULATED_SESSIONS),
            footprints=expand("results/{session}/footprints.zarr", session=SIMULATED_SESSIONS),
        output:
            json=expand("results/{session}/truth_eval.json", session=SIMULATED_SESSIONS),
            npz=expand("results/{session}/truth_eval.npz", session=SIMULATED_SESSIONS),
        log:
            "results/logs/evaluate_truth/evaluate_truth.log",
        conda:
            "../../envs/report.yaml"
        threads: 1
        resources:
            mem_mb=1000,
        params:
            sessions=SIMULATED_SESSIONS,
        script:
            "../scripts/evaluate_truth.py"
