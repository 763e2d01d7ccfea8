# Helpers of workflow/rules/segment.smk: which sessions train the segmenter.
SEG = config["segment"]
SEGMENT_INFER_KEYS = ("tta", "iou_threshold", "centroid_max_distance", "prob_threshold", "cue_threshold", "min_size")


def sessions_with_masks():
    return [s for s in SESSION_NAMES if isinstance(SESSIONS.loc[s, "masks"], str) and SESSIONS.loc[s, "masks"]]


def segment_train_sessions():
    """segment.train_sessions if given, else every session with masks except segment.heldout_sessions."""
    with_masks = sessions_with_masks()
    if SEG["train_sessions"]:
        bad = [s for s in SEG["train_sessions"] if s not in with_masks]
        if bad:
            sys.exit(f"calflow: {CONFIG_FILE}: field 'segment.train_sessions': {', '.join(bad)} "
                     "not in the sessions sheet or without masks. Fix: list sessions whose 'masks' column is set")
        return list(SEG["train_sessions"])
    return [s for s in with_masks if s not in SEG["heldout_sessions"]]


SEGMENT_TRAIN = [] if SEG["pretrained"] else segment_train_sessions()
if not SEG["pretrained"] and not SEGMENT_TRAIN:
    sys.exit(f"calflow: {CONFIG_FILE}: field 'segment': no session to train the segmenter on. Fix: give sessions "
             "with masks (the sheet's 'masks' column), or set segment.pretrained to a segmenter file")


def train_inputs(wildcards):
    if SEG["pretrained"]:
        return {"pretrained": SEG["pretrained"]}
    return {
        "summary": expand("results/{session}/summary.zarr", session=SEGMENT_TRAIN),
        "keyframes": expand("results/{session}/keyframes.zarr", session=SEGMENT_TRAIN),
        "masks": [SESSIONS.loc[s, "masks"] for s in SEGMENT_TRAIN],
    }
