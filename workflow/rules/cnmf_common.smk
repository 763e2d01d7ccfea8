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
