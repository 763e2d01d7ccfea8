# Helpers of workflow/rules/tracking.smk (docs/tracking.md): which animals are tracked, their sessions.
TRACKING = config["tracking"]


def tracked_animals():
    """animal -> its sessions in sheet order, for every animal with two or more sessions."""
    groups = {}
    for s in SESSION_NAMES:
        groups.setdefault(str(SESSIONS.loc[s, "animal"]), []).append(s)
    return {a: ss for a, ss in groups.items() if len(ss) >= 2}


TRACKED = tracked_animals()


def tracking_inputs(wildcards):
    ss = TRACKED[wildcards.animal]
    return {
        "summary": [f"results/{s}/summary.zarr" for s in ss],
        "cnmf": [f"results/{s}/cnmf.zarr" for s in ss],
    }


def tracking_targets():
    """Every tracked animal's tracking.zarr, figure and per-session re-extracted traces."""
    out = []
    for a, ss in TRACKED.items():
        out += [f"results/tracking/{a}/tracking.zarr", f"results/tracking/{a}/tracking.png"]
        out += [f"results/tracking/{a}/{s}/traces.zarr" for s in ss]
    return out
