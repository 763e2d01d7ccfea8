# The HTML report: results/report/index.html, one self-contained page (calflow.report).
# Its inputs (and how a stage adds its outputs to them) are in report_inputs.smk.


include: "report_inputs.smk"


localrules:
    report,


rule report:
    """One self-contained HTML page with every stage's figures, tables and the run's provenance."""
    input:
        report_inputs,
    output:
        "results/report/index.html",
    log:
        "results/logs/report/report.log",
    conda:
        "../../envs/report.yaml"
    threads: 2  # the sessions' sections are built in parallel (forked workers); it runs last
    resources:
        mem_mb=2000,
    params:
        sessions=report_sessions,
        config=config,
        workflow_dir=workdir_relative(workflow.basedir),
    script:
        "../scripts/report.py"
