# The end of the workflow: one HTML page (results/report/index.html) with a summary of the run and every
# stage's figures (`spa report`). It waits for the final outputs of every stage present in this config
# (stage_outputs() in common.smk, which a stage extends with add_stage_outputs).

import yaml as _yaml


rule report_config:
    output:
        result("report", "config.yaml"),
    params:
        # the validated config (defaults filled in); a change rewrites the file and remakes the report
        text=_yaml.safe_dump(config, sort_keys=False),
    log:
        log_file("report_config"),
    script:
        "../scripts/write_config.py"


rule report:
    input:
        # a function: evaluated once every .smk is read, so stages added after this file count too
        stages=lambda wildcards: stage_outputs(),
        config=rules.report_config.output[0],
    output:
        page=report_page(),
    log:
        log_file("report"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        results=lambda w, output: os.path.dirname(os.path.dirname(output.page)),
        outdir=lambda w, output: os.path.dirname(output.page),
    shell:
        "spa report --results {params.results} --output-dir {params.outdir} --config {input.config} > {log} 2>&1"
