# Helpers of workflow/rules/tracking.smk (docs/tracking.md): which animals are tracked, their sessions.
TRACKING = config["tracking"]


def tracked_animals():
    """animal -> its sessions in sheet order, for every animal with two or more sessions (none when
    tracking.enabled is false)."""
    if not TRACKING["enabled"]:
        return {}
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
    return out + crossday_targets()


def crossday_pairs():
    """Condition pairs (a, b) of compare.pairs with at least one tracked animal recorded in both."""
    out = []
    for a, b in COMPARE_PAIRS:
        if any(crossday_sessions(ss, a) and crossday_sessions(ss, b) for ss in TRACKED.values()):
            out.append((a, b))
    return out


def crossday_sessions(sessions, condition):
    """The animal's sessions in ``condition`` that have a stim log and targets (sheet order)."""
    return [
        s
        for s in sessions
        if SESSIONS.loc[s, "condition"] == condition
        and all(isinstance(SESSIONS.loc[s, c], str) and SESSIONS.loc[s, c] for c in ("stim_log", "targets"))
    ]


def crossday_animals(a, b):
    """animal -> its tracking store and, per condition, the first session's traces, stim log, targets."""
    out = {}
    for animal, ss in TRACKED.items():
        sa, sb = crossday_sessions(ss, a), crossday_sessions(ss, b)
        if not (sa and sb):
            continue
        out[animal] = {"tracking": f"results/tracking/{animal}/tracking.zarr"}
        for cond, s in ((a, sa[0]), (b, sb[0])):
            out[animal][cond] = {
                "session": s,
                "traces": f"results/tracking/{animal}/{s}/traces.zarr",
                "stim_log": SESSIONS.loc[s, "stim_log"],
                "targets": SESSIONS.loc[s, "targets"],
            }
    return out


def crossday_inputs(wildcards):
    files = []
    for entry in crossday_animals(wildcards.a, wildcards.b).values():
        files.append(entry["tracking"])
        for cond in (wildcards.a, wildcards.b):
            files += [entry[cond]["traces"], entry[cond]["stim_log"], entry[cond]["targets"]]
    return files


def crossday_targets():
    return [f"results/tracking/crossday_{a}_vs_{b}.json" for a, b in crossday_pairs()]
