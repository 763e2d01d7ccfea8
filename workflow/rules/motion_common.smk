# Helpers of the motion rules (motion.smk). The resources of the one-job path (motion_mem_mb,
# motion_runtime) are in common.smk with ingest's and summary's.
from calflow.motion.params import MotionParams
from calflow.motion.split import read_plan
from calflow.params import workflow_keys

# The rules' params: the section without the keys the workflow reads itself (motion.split_frames), so
# turning the split on or off does not re-run the one-job path, and motion.zarr's motion_params are the same.
MOTION_PARAMS = {k: v for k, v in config["motion"].items() if k not in workflow_keys(MotionParams)}
# frames per chunk job (0: one motion job per session; docs/motion.md "Long sessions")
MOTION_SPLIT = config["motion"]["split_frames"]


def motion_parts(wildcards):
    """The part stores of a split session, one per chunk job; how many is known once its template job
    (a checkpoint) has written the plan. None without the split."""
    if not MOTION_SPLIT:
        return []
    template = checkpoints.motion_template.get(session=wildcards.session).output.store
    n = read_plan(template).n_chunks
    return [f"results/{wildcards.session}/motion_split/part{k}.zarr" for k in range(n)]


def _frame_mb(input):
    t, h, w = store_shape(input[0])
    return t, h * w * 4 / 1e6


def motion_template_mem_mb(wildcards, input, attempt):
    # torch + buffers, the template's sample frames and their registration batches
    t, frame_mb = _frame_mb(input)
    batch_mb = min(30 * config["motion"]["batch_size"] * frame_mb, 800)
    return int(attempt * (1000 + batch_mb + 3 * config["motion"]["template_frames"] * frame_mb))


def motion_template_runtime(wildcards, input, attempt):
    t, frame_mb = _frame_mb(input)
    n = min(t, config["motion"]["template_frames"]) * (config["motion"]["iterations"] + 2)
    return _runtime_min(n * frame_mb * 1e6 / 4 / 2.5e6, attempt)


def motion_chunk_mem_mb(wildcards, input, attempt):
    # as the one-job path without the template's sample: torch + buffers + a batch's working set
    t, frame_mb = _frame_mb(input)
    return int(attempt * (1000 + min(30 * config["motion"]["batch_size"] * frame_mb, 800)))


def motion_chunk_runtime(wildcards, input, attempt):
    t, frame_mb = _frame_mb(input)
    return _runtime_min(min(t, MOTION_SPLIT) * frame_mb * 1e6 / 4 / 2.5e6, attempt)  # ~2.5 Mpx/s


def motion_gather_mem_mb(wildcards, input, attempt):
    # per-frame arrays, float64 sums and one chunk file at a time
    t, frame_mb = _frame_mb(input)
    return int(attempt * (1000 + 4 * frame_mb * 2 + 100 * frame_mb))


def motion_gather_runtime(wildcards, input, attempt):
    t, frame_mb = _frame_mb(input)
    return _runtime_min(t * frame_mb / 500, attempt)  # reading every chunk file once (checksums)
