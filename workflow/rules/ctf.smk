# CTF estimation by two estimators (spa ctf --method ctffind|zeros) and their consensus, which selects the
# micrographs (spa consensus ctf).  Runs when the workflow starts from movies, micrographs, or simulated
# micrographs (simulate.micrographs); picking (workflow/rules/micrographs.smk) reads the selected ones.
# Resumable per micrograph: a rerun skips micrographs already estimated, a new one is estimated alone.


rule ctf:
    """One estimator over every micrograph (Dask workers, batches of ctf.batch_size micrographs)."""
    input:
        cluster=cluster_file(),
        micrographs=micrographs_for_ctf(),
    output:
        star=result("ctf", "{method}", "micrographs_ctf.star"),
    log:
        log_file("ctf_{method}"),
    benchmark:
        benchmark_file("ctf_{method}")
    wildcard_constraints:
        method="ctffind|zeros",
    threads: em_threads()
    resources:
        mem_mb=4000,
        runtime=120,
        dask_workers=dask_workers(),
    params:
        outdir=lambda w, output: os.path.dirname(output.star),
        options=ctf_options,
        common=spa_common(em=True),
    shell:
        "spa ctf --micrographs {input.micrographs} --method {wildcards.method} {params.options} "
        "--output-dir {params.outdir} {params.common} --workers {resources.dask_workers} > {log} 2>&1"


rule ctf_consensus:
    """Agreement of the two estimates (Marabini et al. 2015) and the selection rules of the ctf section."""
    input:
        a=result("ctf", "ctffind", "micrographs_ctf.star"),
        b=result("ctf", "zeros", "micrographs_ctf.star"),
    output:
        selected=result("ctf", "consensus", "micrographs_selected.star"),
        rejected=result("ctf", "consensus", "micrographs_rejected.star"),
    log:
        log_file("ctf_consensus"),
    benchmark:
        benchmark_file("ctf_consensus")
    params:
        outdir=lambda w, output: os.path.dirname(output.selected),
        rules=ctf_selection_options(),
        common=spa_common(),
    shell:
        "spa consensus ctf --a {input.a} --b {input.b} {params.rules} --output-dir {params.outdir} "
        "{params.common} > {log} 2>&1"
