# Validation of the refinement (`spa validate`): angular distribution and E_od, class averages against
# reprojections, ResLog, noise substitution, noise particles, alignability, and the hand where a map of
# known hand (the truth) exists. Numbers in validation.json, figures listed in figures.json.


rule validate:
    input:
        unpack(validate_inputs),
    output:
        summary=result("validate", "validation.json"),
    log:
        log_file("validate"),
    benchmark:
        benchmark_file("validate")
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        outdir=lambda w, output: os.path.dirname(output.summary),
        sym=config["symmetry"],
        truth=lambda w, input: f"--truth {input.truth}" if "truth" in input.keys() else "",
        checks=",".join(config["validate"]["checks"]),
        subset=config["validate"]["subset"],
        reslog=config["validate"]["reslog_steps"],
        order=config["validate"]["search_order"],
        final=config["validate"]["final_order"] or config["refine3d"]["max_healpix_order"],
        substitution=config["validate"]["noise_substitution"],
        common=spa_common(),
    shell:
        "spa validate --particles {input.particles} --map {input.map} --half1 {input.half1} "
        "--half2 {input.half2} --classes {input.classes} {params.truth} --sym {params.sym} "
        "--checks {params.checks} --subset {params.subset} --reslog-steps {params.reslog} "
        "--search-order {params.order} --final-order {params.final} "
        "--noise-substitution-mode {params.substitution} --output-dir {params.outdir} "
        "{params.common} > {log} 2>&1"
