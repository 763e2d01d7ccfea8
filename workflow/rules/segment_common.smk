# Helpers of workflow/rules/segment.smk: which sessions train the segmenter, which model is used.
from calflow.params import role_keys
from calflow.segment.params import SegmentParams

SEG = config["segment"]
# inference and evaluation keys (role "infer" in calflow.segment.params): left out of the training
# rule's params, so changing them re-runs segment, not training
SEGMENT_INFER_KEYS = role_keys(SegmentParams, "infer")
# the generalist segmenter shipped in resources/ (calflow.segment.pretrain), unless the config names another
GENERALIST = SEG.get("generalist_model") or workdir_relative(
    Path(workflow.basedir) / "resources" / "segmenter_pretrained.pt"
)


def sessions_with_masks():
    return [
        s for s in SESSION_NAMES if isinstance(SESSIONS.loc[s, "masks"], str) and SESSIONS.loc[s, "masks"]
    ]


def segment_train_sessions():
    """segment.train_sessions if given, else every session with masks except segment.heldout_sessions."""
    with_masks = sessions_with_masks()
    if SEG["train_sessions"]:
        bad = [s for s in SEG["train_sessions"] if s not in with_masks]
        if bad:
            sys.exit(
                f"calflow: {CONFIG_FILE}: field 'segment.train_sessions': {', '.join(bad)} "
                "not in the sessions sheet or without masks. Fix: list sessions whose 'masks' column is set"
            )
        return list(SEG["train_sessions"])
    return [s for s in with_masks if s not in SEG["heldout_sessions"]]


# segment.init: generalist trains nothing: the generalist segments every session, the masks only score it
SEGMENT_TRAIN = [] if SEG["pretrained"] or SEG["init"] == "generalist" else segment_train_sessions()
# Which model segments the sessions - a given file (segment.pretrained), one trained in the run on the
# annotated sessions (fine-tuned from the generalist with segment.init: pretrained), or, with
# segment.init: generalist or when no session has masks to train on, the generalist itself (the
# report says which and why).
if SEG["pretrained"]:
    SEGMENT_MODEL_SOURCE, SEGMENT_USE_MODEL = "given", SEG["pretrained"]
elif SEGMENT_TRAIN:
    SEGMENT_MODEL_SOURCE, SEGMENT_USE_MODEL = "trained", ""
else:
    SEGMENT_MODEL_SOURCE, SEGMENT_USE_MODEL = "generalist", GENERALIST
SEGMENT_GENERALIST_CHOSEN = SEGMENT_MODEL_SOURCE == "generalist" and SEG["init"] == "generalist"
SEGMENT_INIT = GENERALIST if SEGMENT_MODEL_SOURCE == "trained" and SEG["init"] == "pretrained" else ""
_GENERALIST_USED = SEGMENT_MODEL_SOURCE == "generalist" or SEGMENT_INIT
if SEG["method"] == "network" and _GENERALIST_USED and not Path(GENERALIST).is_file():
    sys.exit(
        f"calflow: {CONFIG_FILE}: field 'segment.generalist_model': segmenter file {GENERALIST} not found. "
        "Fix: give an existing calflow segmenter file, rebuild it (python -m calflow.segment.pretrain), or give "
        "sessions with masks and set segment.init: scratch"
    )


def train_inputs(wildcards):
    if SEGMENT_USE_MODEL:
        return {"pretrained": SEGMENT_USE_MODEL}
    return {
        "summary": expand("results/{session}/summary.zarr", session=SEGMENT_TRAIN),
        "keyframes": expand("results/{session}/keyframes.zarr", session=SEGMENT_TRAIN),
        "masks": [SESSIONS.loc[s, "masks"] for s in SEGMENT_TRAIN],
        **({"init": SEGMENT_INIT} if SEGMENT_INIT else {}),
    }


def segment_inputs(wildcards):
    """network: the session's summary + keyframes and the model; corr_pnr: the corrected movie + summary."""
    if SEG["method"] == "corr_pnr":
        return {
            "summary": f"results/{wildcards.session}/summary.zarr",
            "movie": f"results/{wildcards.session}/motion.zarr",
        }
    return {
        "summary": f"results/{wildcards.session}/summary.zarr",
        "keyframes": f"results/{wildcards.session}/keyframes.zarr",
        "model": "results/models/segmenter.pt",
    }
