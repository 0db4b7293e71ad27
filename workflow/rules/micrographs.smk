# From the selected micrographs (workflow/rules/ctf.smk: CTF by two estimators -> consensus and
# selection) to particles: LoG picking -> extraction.  Runs when the workflow starts from movies or
# micrographs (workflow/rules/preprocess.smk); the particle stages use its particles when config
# pick.use_for_particles is true.


rule pick:
    input:
        micrographs=rules.ctf_consensus.output.selected,
    output:
        index=result("pick", "autopick.star"),
    log:
        log_file("pick"),
    params:
        outdir=lambda w, output: os.path.dirname(output.index),
        dmin=config["pick"]["diameter_min"],
        dmax=config["pick"]["diameter_max"],
        threshold=config["pick"]["threshold"],
        common=spa_common(),
    shell:
        "spa pick --micrographs {input.micrographs} --method log --diameter-min {params.dmin} "
        "--diameter-max {params.dmax} --threshold {params.threshold} --output-dir {params.outdir} "
        "{params.common} > {log} 2>&1"


rule extract:
    input:
        micrographs=rules.ctf_consensus.output.selected,
        coordinates=rules.pick.output.index,
    output:
        particles=result("extract", "particles.star"),
    log:
        log_file("extract"),
    params:
        outdir=lambda w, output: os.path.dirname(output.particles),
        box=config["extract"]["box"],
        rescale=option("--rescale", config["extract"]["rescale"]),
        stack=lambda w: " ".join([f"--format {config['extract']['format']} --chunk {config['extract']['chunk']}",
                                  f"--dust {config['extract']['dust']}",
                                  option("--bg-radius", config["extract"]["bg_radius"]),
                                  "--phase-flip" if config["extract"]["phase_flip"] else "",
                                  "--float16" if config["extract"]["float16"] else ""]),
        common=spa_common(),
    shell:
        "spa extract --micrographs {input.micrographs} --coordinates {input.coordinates} --box {params.box} "
        "{params.rescale} {params.stack} --output-dir {params.outdir} {params.common} > {log} 2>&1"


if PICKED_TRUTH:

    rule picked_truth:
        """The truth of particles picked from simulated movies or micrographs: each extracted particle matched
        to the true particle it was picked from (its pose, the picking offset as origin), the true map at the
        particles' sampling, and the pickers' precision and recall against the true centres."""
        input:
            particles=rules.extract.output.particles,
            simulated=result("simulate_movies", "movies.star") if SIMULATED_MOVIES
            else result("simulate_micrographs", "micrographs.star"),
        output:
            particles=result("picked_truth", "particles.star"),
            map=result("picked_truth", "class001.mrc"),
            summary=result("picked_truth", "picking_truth.json"),
        log:
            log_file("picked_truth"),
        params:
            outdir=lambda w, output: os.path.dirname(output.particles),
            truth=simulated_truth_dir(),
            diameter=option("--diameter", config["pick"]["diameter_max"]),
            common=spa_common(),
        shell:
            "spa truth --particles {input.particles} --truth-dir {params.truth} {params.diameter} "
            "--output-dir {params.outdir} {params.common} > {log} 2>&1"
