# Gold-standard auto-refinement: half maps, the final map and the poses.


rule refine3d:
    input:
        cluster=cluster_file(),
        particles=refine3d_particles(),
        reference=rules.initial_model.output.model,
    output:
        map=result("refine3d", "run_class001.mrc"),
        half1=result("refine3d", "run_half1_class001_unfil.mrc"),
        half2=result("refine3d", "run_half2_class001_unfil.mrc"),
        data=result("refine3d", "run_data.star"),
        model=result("refine3d", "run_model.star"),
    log:
        log_file("refine3d"),
    benchmark:
        benchmark_file("refine3d")
    threads: em_threads()
    resources:
        mem_mb=8000,
        runtime=480,
        dask_workers=dask_workers(),
    params:
        outdir=lambda w, output: os.path.dirname(output.map),
        sym=config["symmetry"],
        max_iter=config["refine3d"]["max_iter"],
        ini_high=config["refine3d"]["ini_high"],
        offsets=config["refine3d"]["offset_range"],
        max_order=config["refine3d"]["max_healpix_order"],
        diameter=option("--particle-diameter", config["particle_diameter"]),
        common=spa_common(em=True),
        split=em_split(),
    shell:
        "spa refine3d --particles {input.particles} --reference {input.reference} --sym {params.sym} "
        "--max-iter {params.max_iter} --ini-high {params.ini_high} --offset-range {params.offsets} --max-healpix-order {params.max_order} {params.diameter} "
        "--output-dir {params.outdir} {params.split} {params.common} --workers {resources.dask_workers} --resume > {log} 2>&1"
