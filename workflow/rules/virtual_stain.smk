# Virtual staining (calflow.virtual_stain): its own sheet (virtual_stain.sheet, one row per pair of
# label-free + fluorescence images) -> results/virtual_stain/{dataset}/. The demo's pairs are
# simulated by simulate_virtual_stain_demo. virtual_stain.sheet: "" turns the branch off.


rule simulate_virtual_stain_demo:
    """A simulated pair: phase-contrast-like label-free image + fluorescence of marker-positive cells."""
    output:
        label_free="results/demo/virtual_stain/{pair}_label_free.tif",
        fluorescence="results/demo/virtual_stain/{pair}_fluorescence.tif",
    log:
        "results/logs/simulate_virtual_stain_demo/{pair}.log",
    priority: 5  # early, beside simulate/ingest/motion: left last, a 1-thread job holds up 2-thread compare
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=500,
    params:
        demo=VS["demo"],
        seed=lambda w: config["seed"] * 7919 + _stable_seed(w.pair),
    script:
        "../scripts/simulate_virtual_stain_demo.py"


rule virtual_stain:
    """Block labels from fluorescence, optuna-searched CNN on label-free blocks, held-out metrics and maps."""
    input:
        label_free=lambda w: [r["label_free"] for r in virtual_stain_rows(w)],
        fluorescence=lambda w: [r["fluorescence"] for r in virtual_stain_rows(w)],
    output:
        metrics="results/virtual_stain/{dataset}/metrics.json",
        maps=directory("results/virtual_stain/{dataset}/maps.zarr"),
        model="results/virtual_stain/{dataset}/model.pt",
        plots=report(
            directory("results/virtual_stain/{dataset}/plots"),
            patterns=["{name}.png"],
            caption="../report/virtual_stain.rst",
            category="Virtual staining",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "{name}"},
        ),
    log:
        "results/logs/virtual_stain/{dataset}.log",
    priority: 5  # as simulate_virtual_stain_demo
    conda:
        "../../envs/torch.yaml"
    threads: 1  # profiles/slurm sets more (set-threads)
    resources:
        mem_mb=3000,
    params:
        virtual_stain=VS_PARAMS,
        images=virtual_stain_rows,
    script:
        "../scripts/virtual_stain.py"
