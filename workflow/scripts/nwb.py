"""Thin wrapper: snakemake rule `nwb` -> calflow.cnmf.nwb.export_nwb."""
from calflow.cnmf.nwb import export_nwb
from calflow.runner import run_script

_STORES = ("raw", "motion", "summary", "stim_log", "targets", "gradcam", "classifier_metrics")


def main(smk):
    stores = {k: smk.input.get(k) for k in _STORES}
    return export_nwb(smk.input.cnmf, smk.output[0], session=smk.wildcards.session, condition=smk.params.condition,
                      fps=smk.params.fps, animal=smk.params.animal, group=smk.params.group or None,
                      metadata=smk.params.metadata, options=smk.params.nwb, **stores)


run_script(snakemake, main)  # noqa: F821 - injected by snakemake
