# Direct Fourier reconstruction from the poses in a STAR file: the two
# gold-standard halves (rlnRandomSubset 1 and 2) and the full set.


if particles_with_poses():  # only where the true poses are known (the demo, or input.truth_particles)

    rule reconstruct:
        input:
            cluster=cluster_file(),
            particles=particles_with_poses(),
        output:
            map=result("reconstruct", "{part}.mrc"),
        log:
            log_file("reconstruct_{part}"),
        benchmark:
            benchmark_file("reconstruct_{part}")
        threads: em_threads()
        resources:
            mem_mb=4000,
            runtime=30,
            dask_workers=dask_workers(),
        params:
            subset=lambda w: {"half1": "--subset 1", "half2": "--subset 2", "full": ""}[w.part],
            sym=config["reconstruct"]["sym"],
            ctf="" if config["reconstruct"]["ctf"] else "--no-ctf",
            maxres=option("--maxres", config["reconstruct"]["maxres"]),
            common=spa_common(em=True),
            split=em_split(lanes=False),
        shell:
            "spa reconstruct --particles {input.particles} --output {output.map} "
            "{params.subset} --sym {params.sym} {params.ctf} {params.maxres} "
            "{params.split} {params.common} --workers {resources.dask_workers} > {log} 2>&1"
