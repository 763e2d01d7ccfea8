# calflow: raw calcium-imaging movies -> motion-corrected stores -> ... -> report.
# Every stage is one rule file under workflow/rules; tunables come from config/config.yaml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/motion_common.smk"
include: "workflow/rules/motion.smk"
include: "workflow/rules/segment_common.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/cnmf_common.smk"
include: "workflow/rules/cnmf.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/decode_common.smk"
include: "workflow/rules/decode.smk"
include: "workflow/rules/virtual_stain_common.smk"
include: "workflow/rules/virtual_stain.smk"
include: "workflow/rules/classify_common.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/tracking_common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        expand("results/{session}/summary.zarr", session=SESSION_NAMES),
        expand("results/{session}/plots/motion", session=SESSION_NAMES),
        "results/report/index.html",
        expand("results/{session}/footprints.zarr", session=SESSION_NAMES),
        expand("results/{session}/cnmf.zarr", session=SESSION_NAMES),
        expand("results/{session}/truth_eval.json", session=SIMULATED_SESSIONS),
        expand("results/{session}/{session}.nwb", session=SESSION_NAMES),
        ["results/models/segmenter_metrics.json"] if SEG["method"] == "network" else [],
        ["results/models/segment_evaluation.json"] if sessions_with_masks() else [],
        decode_targets(),
        virtual_stain_targets(),
        expand("results/classifier/{group}/metrics.json", group=list(CLASSIFY_GROUPS)),
        expand("results/{session}/gradcam.zarr", session=CLASSIFY_SESSIONS),
        expand("results/{session}/gradcam_shuffled.zarr", session=CLASSIFY_SESSIONS)
        if CLS.get("shuffle_control", True)
        else [],
        expand("results/{session}/stim_maps.zarr", session=CLASSIFY_SESSIONS),
        [f"results/compare/{a}_vs_{b}.json" for a, b in COMPARE_PAIRS],
        tracking_targets(),


onsuccess:
    # results/DONE: what this run made (rule all's inputs), the report's path last.
    done = [
        f"calflow: done. Results for {len(SESSION_NAMES)} session(s) are in {Path('results').resolve()}/"
    ]
    done += [f"  {f}" for f in rules.all.input if Path(f).exists()]
    if Path("results/report/index.html").exists():
        done.append(f"calflow: report: {Path('results/report/index.html').resolve()}")
    Path("results").mkdir(exist_ok=True)
    Path("results/DONE").write_text("\n".join(done) + "\n")
    print(done[0], done[-1], sep="\n")
