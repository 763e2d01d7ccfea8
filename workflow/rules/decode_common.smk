# Helpers of workflow/rules/decode.smk: which sessions are decoded.


def sessions_with_stim():
    return [
        s
        for s in SESSION_NAMES
        if isinstance(SESSIONS.loc[s, "stim_log"], str) and SESSIONS.loc[s, "stim_log"]
    ]


def decode_targets():
    """decode.json of every session with a stim log."""
    return expand("results/{session}/decode.json", session=sessions_with_stim())
