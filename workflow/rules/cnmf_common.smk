# Helpers of workflow/rules/cnmf.smk: the config section and resources scaled to the movie.
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
    return _runtime_min(t * h * w / 1e7, attempt)  # ~1.5e7 px/s measured on one core (docs/cnmf.md)


# ---- inputs and params of the nwb rule in cnmf.smk (docs/nwb.md) ----
NWB = config["nwb"]


def nwb_inputs(wildcards):
    """The session's stores and files for its NWB file: stim log/targets where the sheet has them,
    the classifier metrics and Grad-CAM maps where the session is classified."""
    s = wildcards.session
    files = {
        "cnmf": f"results/{s}/cnmf.zarr",
        "raw": f"results/{s}/raw.zarr",
        "motion": f"results/{s}/motion.zarr",
        "summary": f"results/{s}/summary.zarr",
    }
    for col in ("stim_log", "targets"):
        if isinstance(SESSIONS.loc[s, col], str) and SESSIONS.loc[s, col]:
            files[col] = SESSIONS.loc[s, col]
    if s in CLASSIFY_SESSIONS:
        files["gradcam"] = f"results/{s}/gradcam.zarr"
        files["classifier_metrics"] = f"results/classifier/{classifier_group(s)}/metrics.json"
    if NWB["movie"] == "link":
        files["movie"] = movie_files(wildcards)  # the linked files must exist
    return files


def nwb_session_metadata(wildcards):
    """The session's metadata cells (sheet, else nwb.defaults), as the NWB export parses them."""
    return raw_metadata(SESSIONS.loc[wildcards.session].to_dict(), NWB["defaults"])


def nwb_group(wildcards):
    g = SESSIONS.loc[wildcards.session, "group"]
    return g if isinstance(g, str) else ""


def nwb_runtime(wildcards, input, attempt):
    t, h, w = store_shape(input.motion)  # the corrected movie is compressed at ~50 MB/s
    return _runtime_min(t * h * w * 4 * (2 if NWB["corrected_movie"] else 1) / 5e7, attempt)
