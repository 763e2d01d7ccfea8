# What rule `report` (report.smk) reads. The HTML report is results/report/index.html (calflow.report).
# A stage that adds to the report lists what it reads below; its section in calflow/report/sections/
# leaves itself out when those outputs are absent, so these inputs only order the jobs and make
# the report rerun when a stage's results change.

# Per-session outputs the report reads ({session} is filled in for every row of the sheet).
REPORT_SESSION_INPUTS = [
    "results/{session}/motion.zarr",
    "results/{session}/plots/motion",
    "results/{session}/summary.zarr",
    "results/{session}/plots/summary",
    "results/{session}/footprints.zarr",
    "results/{session}/cnmf.zarr",
]
# Run-level outputs (models, comparisons, ...): plain paths or functions of the wildcards.
REPORT_RUN_INPUTS = [
    lambda w: expand("results/{session}/segment_eval.json", session=sessions_with_masks()),
    lambda w: ["results/models/segmenter_metrics.json"] if SEG["method"] == "network" else [],  # model source
    lambda w: decode_targets(),  # decode.json of sessions with a stim log (decode.smk)
    lambda w: virtual_stain_targets(),  # metrics.json of every virtual_stain dataset (virtual_stain.smk)
    # classify / gradcam / compare (only sessions with a stim log and targets)
    lambda w: expand("results/classifier/{group}/metrics.json", group=list(CLASSIFY_GROUPS)),
    lambda w: expand("results/{session}/gradcam.zarr", session=CLASSIFY_SESSIONS),
    lambda w: expand("results/{session}/plots/gradcam", session=CLASSIFY_SESSIONS),
    lambda w: [f"results/compare/{a}_vs_{b}.{ext}" for a, b in COMPARE_PAIRS for ext in ("json", "png")],
    # cross-session tracking of every animal with two or more sessions (tracking.smk)
    lambda w: tracking_targets(),
    # simulated sessions against their ground truth (evaluate.smk)
    lambda w: expand("results/{session}/truth_eval.{ext}", session=SIMULATED_SESSIONS, ext=("json", "npz")),
]


def report_inputs(wildcards):
    files = expand(REPORT_SESSION_INPUTS, session=SESSION_NAMES)
    for item in REPORT_RUN_INPUTS:
        files.extend([item] if isinstance(item, str) else item(wildcards))
    return files


def report_sessions(wildcards):
    """The sessions sheet as plain records (NaN -> '') for the report's navigation and tables."""
    return SESSIONS.drop(columns="session", errors="ignore").reset_index().fillna("").to_dict("records")
