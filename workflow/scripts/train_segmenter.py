"""Thin wrapper: snakemake rule `train_segmenter` -> calflow.segment.stage.train_from_sessions."""
from calflow.runner import run_script
from calflow.segment.stage import train_from_sessions


def main(smk):
    params = dict(smk.params.train)
    use_model = smk.params.use_model or None
    sessions = [
        {"session": s, "summary": smk.input.summary[i], "keyframes": smk.input.keyframes[i], "masks": smk.input.masks[i]}
        for i, s in enumerate(smk.params.sessions)
    ] if not use_model else []
    train_from_sessions(sessions, params, smk.output.model, smk.output.metrics,
                        checkpoint_dir=smk.params.checkpoint_dir, seed=int(params.get("seed", 0)) + int(smk.params.seed),
                        pretrained=use_model, source=smk.params.model_source,
                        generalist_chosen=bool(smk.params.generalist_chosen),
                        init_weights=smk.params.init_weights or None)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
