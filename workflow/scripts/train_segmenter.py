"""Thin wrapper: snakemake rule `train_segmenter` -> calflow.segment.stage.train_from_sessions."""
from calflow.runner import run_script
from calflow.segment.stage import train_from_sessions


def main(smk):
    params = dict(smk.params.train)
    pretrained = params.pop("pretrained", "") or None
    sessions = [
        {"session": s, "summary": smk.input.summary[i], "keyframes": smk.input.keyframes[i], "masks": smk.input.masks[i]}
        for i, s in enumerate(smk.params.sessions)
    ] if not pretrained else []
    train_from_sessions(sessions, params, smk.output.model, smk.output.metrics,
                        checkpoint_dir=smk.params.checkpoint_dir, seed=int(params.get("seed", 0)) + int(smk.params.seed),
                        pretrained=pretrained)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
