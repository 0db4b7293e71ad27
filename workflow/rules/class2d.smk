# 2D classification of the particles, then automatic class selection with
# recentring (the particles of good classes go on to the 3D stages).


rule class2d:
    input:
        cluster=cluster_file(),
        particles=input_particles(),
    output:
        data=result("class2d", "run_data.star"),
        model=result("class2d", "run_model.star"),
        classes=result("class2d", "run_classes.mrcs"),
    log:
        log_file("class2d"),
    benchmark:
        benchmark_file("class2d")
    threads: em_threads()
    resources:
        mem_mb=4000,
        runtime=120,
        dask_workers=dask_workers(),
    params:
        outdir=lambda w, output: os.path.dirname(output.data),
        classes=config["class2d"]["classes"],
        iters=config["class2d"]["iter"],
        diameter=option("--particle-diameter", config["particle_diameter"]),
        common=spa_common(em=True),
        split=em_split(),
    shell:
        "spa class2d --particles {input.particles} --classes {params.classes} --iter {params.iters} "
        "{params.diameter} --output-dir {params.outdir} {params.split} {params.common} --workers {resources.dask_workers} "
        "--resume > {log} 2>&1"


rule select:
    input:
        data=rules.class2d.output.data,
        particles=input_particles(),
    output:
        particles=result("select", "particles.star"),
        averages=result("select", "class_averages.star"),
    log:
        log_file("select"),
    benchmark:
        benchmark_file("select")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        class2d_dir=lambda w, input: os.path.dirname(input.data),
        outdir=lambda w, output: os.path.dirname(output.particles),
        diameter=lambda w: " ".join([option("--mask-diameter", config["particle_diameter"]),
                                     option("--particle-diameter", config["particle_diameter"])]),
        thresholds=selection_thresholds(),
        duplicates=option("--remove-duplicates", config["select"]["remove_duplicates"]),
        common=spa_common(),
    shell:
        "spa select --class2d-dir {params.class2d_dir} --auto {params.thresholds} {params.duplicates} "
        "{params.diameter} --particles {input.particles} --output-dir {params.outdir} {params.common} > {log} 2>&1"
