# Ab-initio initial model from the selected particles; candidates are compared
# with the 2D class averages and the best one is kept.


rule initial_model:
    input:
        cluster=cluster_file(),
        particles=rules.select.output.particles,
        averages=rules.class2d.output.classes,
    output:
        model=result("initial_model", "initial_model.mrc"),
        data=result("initial_model", "run_data.star"),
    log:
        log_file("initial_model"),
    benchmark:
        benchmark_file("initial_model")
    threads: em_threads()
    resources:
        mem_mb=4000,
        runtime=120,
        dask_workers=dask_workers(),
    params:
        outdir=lambda w, output: os.path.dirname(output.model),
        iters=config["initial_model"]["iter"],
        candidates=config["initial_model"]["candidates"],
        initial_resolution=config["initial_model"]["initial_resolution"],
        final_resolution=config["initial_model"]["final_resolution"],
        sym=config["symmetry"],
        diameter=option("--particle-diameter", config["particle_diameter"]),
        common=spa_common(em=True),
    shell:
        "spa initial-model --particles {input.particles} --class-averages {input.averages} "
        "--iter {params.iters} --candidates {params.candidates} --initial-resolution {params.initial_resolution} "
        "--final-resolution {params.final_resolution} "
        "--sym {params.sym} {params.diameter} "
        "--output-dir {params.outdir} {params.common} --workers {resources.dask_workers} > {log} 2>&1"
