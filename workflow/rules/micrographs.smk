# From the selected micrographs (workflow/rules/ctf.smk: CTF by two estimators -> consensus and
# selection) to particles: several pickers (LoG; template matching when config pick.template names class
# averages or a map; a learned scorer trained on what the others agree on) -> their consensus -> micrograph
# cleaning (carbon, contamination, aggregates) -> extraction.  Runs when the workflow starts from movies or
# micrographs (workflow/rules/preprocess.smk); the particle stages use its particles when config
# pick.use_for_particles is true.


rule pick:
    """LoG picking (needs only the particle size)."""
    input:
        micrographs=rules.ctf_consensus.output.selected,
    output:
        index=result("pick", "autopick.star"),
    log:
        log_file("pick"),
    benchmark:
        benchmark_file("pick")
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


if AUTO_TEMPLATES:

    localrules:
        template_select,

    rule template_extract:
        """LoG's particles, extracted for the templates' 2D classification."""
        input:
            micrographs=rules.ctf_consensus.output.selected,
            coordinates=rules.pick.output.index,
        output:
            particles=result("template_extract", "particles.star"),
        log:
            log_file("template_extract"),
        params:
            outdir=lambda w, output: os.path.dirname(output.particles),
            options=extract_options(),
            common=spa_common(),
        shell:
            "spa extract --micrographs {input.micrographs} --coordinates {input.coordinates} {params.options} "
            "--output-dir {params.outdir} {params.common} > {log} 2>&1"

    rule template_class2d:
        """2D classes of LoG's particles: the template picker's templates once selected."""
        input:
            particles=rules.template_extract.output.particles,
        output:
            data=result("template_class2d", "run_data.star"),
        log:
            log_file("template_class2d"),
        benchmark:
            benchmark_file("template_class2d")
        threads: em_threads()
        resources:
            mem_mb=4000,
            runtime=60,
            dask_workers=dask_workers(),
        params:
            outdir=lambda w, output: os.path.dirname(output.data),
            classes=config["pick"]["template_classes"],
            iters=config["class2d"]["iter"],
            diameter=option("--particle-diameter", config["particle_diameter"]),
            common=spa_common(em=True),
        shell:
            "spa class2d --particles {input.particles} --classes {params.classes} --iter {params.iters} "
            "{params.diameter} --output-dir {params.outdir} {params.common} --workers {resources.dask_workers} "
            "--resume > {log} 2>&1"

    rule template_select:
        """The class averages a practitioner would pick as templates: spa select --auto (junk, edges and
        noise classes rejected), recentred."""
        input:
            data=rules.template_class2d.output.data,
            particles=rules.template_extract.output.particles,
        output:
            templates=result("template_select", "class_averages.star"),
        log:
            log_file("template_select"),
        params:
            class2d_dir=lambda w, input: os.path.dirname(input.data),
            outdir=lambda w, output: os.path.dirname(output.templates),
            diameter=lambda w: " ".join([option("--mask-diameter", config["particle_diameter"]),
                                         option("--particle-diameter", config["particle_diameter"])]),
            thresholds=selection_thresholds(),
            common=spa_common(),
            classes=config["pick"]["template_classes"],
        # where --auto keeps no class (sparse or odd data) every class average is a template rather than the run
        # stopping: the consensus with LoG and the learned picker still weeds out what they do not agree on
        shell:
            "spa select --class2d-dir {params.class2d_dir} --auto {params.thresholds} {params.diameter} "
            "--particles {input.particles} --output-dir {params.outdir} {params.common} > {log} 2>&1 || "
            "(echo 'template_select: select --auto kept no class: every class average is a template' >> {log}; "
            "spa select --class2d-dir {params.class2d_dir} --classes 1-{params.classes} --particles "
            "{input.particles} --output-dir {params.outdir} {params.common} >> {log} 2>&1)"


if PICK_TEMPLATE:

    rule pick_template:
        """Template matching with 2D class averages (an .mrcs stack or a class-averages STAR: the user's, or with
        pick.template "auto" the selected classes of LoG's particles) or the projections of a map (.mrc)."""
        input:
            micrographs=rules.ctf_consensus.output.selected,
            templates=template_source(),
        output:
            index=result("pick_template", "autopick.star"),
        log:
            log_file("pick_template"),
        benchmark:
            benchmark_file("pick_template")
        params:
            outdir=lambda w, output: os.path.dirname(output.index),
            source=lambda w, input: ("--templates " if str(input.templates).endswith((".mrcs", ".star"))
                                     else "--reference ") + str(input.templates),
            diameter=pick_diameter(),
            threshold=config["pick"]["template_threshold"],
            lowpass=option("--lowpass", config["pick"]["template_lowpass"]),
            common=spa_common(),
        shell:
            "spa pick --micrographs {input.micrographs} --method template --diameter {params.diameter} "
            "{params.source} --threshold {params.threshold} {params.lowpass} "
            "--output-dir {params.outdir} {params.common} > {log} 2>&1"


if PICK_CONSENSUS:

    if PICK_TEMPLATE:

        rule pick_agreed:
            """What LoG and template matching agree on: the positives the learned picker learns from."""
            input:
                micrographs=rules.ctf_consensus.output.selected,
                picks=[rules.pick.output.index, rules.pick_template.output.index],
            output:
                index=result("pick_agreed", "autopick.star"),
            log:
                log_file("pick_agreed"),
            params:
                outdir=lambda w, output: os.path.dirname(output.index),
                diameter=pick_diameter(),
                distance=config["pick"]["consensus_distance"],
                common=spa_common(),
            shell:
                "spa consensus pick --micrographs {input.micrographs} --picks {input.picks} --mode and "
                "--diameter {params.diameter} --distance {params.distance} --output-dir {params.outdir} "
                "{params.common} > {log} 2>&1"

    else:

        rule pick_agreed:
            """With LoG the only picker: its confident picks (twice the threshold) are the positives."""
            input:
                micrographs=rules.ctf_consensus.output.selected,
            output:
                index=result("pick_agreed", "autopick.star"),
            log:
                log_file("pick_agreed"),
            params:
                outdir=lambda w, output: os.path.dirname(output.index),
                dmin=config["pick"]["diameter_min"],
                dmax=config["pick"]["diameter_max"],
                threshold=2 * config["pick"]["threshold"],
                common=spa_common(),
            shell:
                "spa pick --micrographs {input.micrographs} --method log --diameter-min {params.dmin} "
                "--diameter-max {params.dmax} --threshold {params.threshold} --output-dir {params.outdir} "
                "{params.common} > {log} 2>&1"

    rule pick_learned:
        """A scorer trained on these micrographs: positives from pick_agreed, negatives from background and
        single-picker picks."""
        input:
            micrographs=rules.ctf_consensus.output.selected,
            positives=rules.pick_agreed.output.index,
            negatives=picker_indexes(),
        output:
            index=result("pick_learned", "autopick.star"),
        log:
            log_file("pick_learned"),
        benchmark:
            benchmark_file("pick_learned")
        params:
            outdir=lambda w, output: os.path.dirname(output.index),
            diameter=pick_diameter(),
            min_score=config["pick"]["learned_min_score"],
            common=spa_common(),
        shell:
            "spa pick --micrographs {input.micrographs} --method learned --diameter {params.diameter} "
            "--positives {input.positives} --negatives {input.negatives} --min-score {params.min_score} "
            "--output-dir {params.outdir} {params.common} > {log} 2>&1"

    rule pick_consensus:
        """Picks at least pick.min_pickers of the pickers (LoG, template, learned) agree on."""
        input:
            micrographs=rules.ctf_consensus.output.selected,
            picks=[*picker_indexes(), rules.pick_learned.output.index],
        output:
            index=result("pick_consensus", "autopick.star"),
        log:
            log_file("pick_consensus"),
        params:
            outdir=lambda w, output: os.path.dirname(output.index),
            diameter=pick_diameter(),
            distance=config["pick"]["consensus_distance"],
            min_pickers=config["pick"]["min_pickers"],
            rescue="--rescue" if config["pick"]["rescue"] else "",
            common=spa_common(),
        shell:
            "spa consensus pick --micrographs {input.micrographs} --picks {input.picks} --mode at-least "
            "--min-pickers {params.min_pickers} {params.rescue} --diameter {params.diameter} "
            "--distance {params.distance} --output-dir {params.outdir} {params.common} > {log} 2>&1"


if config["clean"]["enabled"]:

    rule clean:
        """Drops the picks on carbon, ice contamination and aggregates."""
        input:
            micrographs=rules.ctf_consensus.output.selected,
            coordinates=picks_before_cleaning(),
        output:
            index=result("clean", "autopick.star"),
        log:
            log_file("clean"),
        benchmark:
            benchmark_file("clean")
        params:
            outdir=lambda w, output: os.path.dirname(output.index),
            diameter=pick_diameter(),
            margin=config["clean"]["margin"],
            kinds=config["clean"]["kinds"],
            thresholds=lambda w: (f"--contaminant-threshold {config['clean']['contaminant_threshold']} "
                                  f"--aggregate-threshold {config['clean']['aggregate_threshold']} "
                                  f"--carbon-threshold {config['clean']['carbon_threshold']}"),
            common=spa_common(),
        shell:
            "spa clean --micrographs {input.micrographs} --coordinates {input.coordinates} "
            "--diameter {params.diameter} --margin {params.margin} --kinds {params.kinds} {params.thresholds} "
            "--output-dir {params.outdir} {params.common} > {log} 2>&1"


rule extract:
    input:
        micrographs=rules.ctf_consensus.output.selected,
        coordinates=final_picks(),
    output:
        particles=result("extract", "particles.star"),
    log:
        log_file("extract"),
    params:
        outdir=lambda w, output: os.path.dirname(output.particles),
        options=extract_options(),
        common=spa_common(),
    shell:
        "spa extract --micrographs {input.micrographs} --coordinates {input.coordinates} {params.options} "
        "--output-dir {params.outdir} {params.common} > {log} 2>&1"


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
