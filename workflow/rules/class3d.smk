# 3D classification, repeated with different seeds, and the particles whose
# class assignment all runs agree on (class consensus).

CLASS3D_RUNS = [f"run{i + 1}" for i in range(config["class3d"]["runs"])]


rule class3d:
    input:
        cluster=cluster_file(),
        particles=rules.select.output.particles,
        reference=rules.initial_model.output.model,
    output:
        data=result("class3d", "{run}", "run_data.star"),
        model=result("class3d", "{run}", "run_model.star"),
    wildcard_constraints:
        run="run[0-9]+",
    log:
        log_file("class3d_{run}"),
    benchmark:
        benchmark_file("class3d_{run}")
    threads: em_threads()
    resources:
        mem_mb=4000,
        runtime=240,
        dask_workers=dask_workers(),
    params:
        outdir=lambda w, output: os.path.dirname(output.data),
        classes=config["class3d"]["classes"],
        iters=config["class3d"]["iter"],
        offsets=config["class3d"]["offset_range"],
        consensus=config["class3d"]["consensus_iter"],
        sym=config["symmetry"],
        diameter=option("--particle-diameter", config["particle_diameter"]),
        common=lambda w: spa_common(seed=config["seed"] + 1000 * int(w.run[3:]), em=True),
        split=em_split(),
    shell:
        "spa class3d --particles {input.particles} --reference {input.reference} "
        "--classes {params.classes} --iter {params.iters} --offset-range {params.offsets} --consensus-iter {params.consensus} --sym {params.sym} {params.diameter} "
        "--output-dir {params.outdir} {params.split} {params.common} --workers {resources.dask_workers} --resume > {log} 2>&1"


rule class3d_consensus:
    input:
        runs=expand(result("class3d", "{run}", "run_data.star"), run=CLASS3D_RUNS),
    output:
        particles=result("class3d", "consensus", "particles.star"),
        table=result("class3d", "consensus", "consensus_classes.star"),
    log:
        log_file("class3d_consensus"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        outdir=lambda w, output: os.path.dirname(output.particles),
        min_posterior=config["class3d"]["min_class_posterior"],
        common=spa_common(),
    shell:
        "spa consensus classes --runs {input.runs} --min-class-posterior {params.min_posterior} "
        "--output-dir {params.outdir} {params.common} > {log} 2>&1"
