# Direct Fourier reconstruction from the true poses (config reconstruct section): the two
# gold-standard halves (rlnRandomSubset 1 and 2) and the full set of ALL simulated particles —
# by hand (`snakemake results/reconstruct/full.mrc`); the comparison with the refined map uses
# rule true_poses below, which is made like the refined map.


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


# The like-with-like yardstick of the refined map: the same particles and halves as refine3d's
# run_data.star, their TRUE poses, reconstructed as refine3d reconstructs its final map (same
# particle diameter, symmetry and regularisation); compared with the truth exactly as the refined map
# is (fsc.smk: "ideal" vs "truth").
if particles_with_poses():

    rule true_poses:
        input:
            cluster=cluster_file(),
            particles=result("refine3d", "run_data.star"),
            poses=particles_with_poses(),
        output:
            map=result("true_poses", "run_class001.mrc"),
            half1=result("true_poses", "run_half1_class001_unfil.mrc"),
            half2=result("true_poses", "run_half2_class001_unfil.mrc"),
            summary=result("true_poses", "true_poses.json"),
        log:
            log_file("true_poses"),
        benchmark:
            benchmark_file("true_poses")
        threads: em_threads()
        resources:
            mem_mb=4000,
            runtime=30,
            dask_workers=dask_workers(),
        params:
            outdir=lambda w, output: os.path.dirname(output.map),
            sym=config["symmetry"],
            diameter=option("--particle-diameter", config["particle_diameter"]),
            common=spa_common(em=True),
            split=em_split(lanes=False),
            skip="--skip-missing" if PICKED_TRUTH else "",  # false picks have no true pose
        shell:
            "spa reconstruct --particles {input.particles} --poses-from {input.poses} --like-refine3d {params.skip} "
            "--sym {params.sym} {params.diameter} --output-dir {params.outdir} "
            "{params.split} {params.common} --workers {resources.dask_workers} > {log} 2>&1"
