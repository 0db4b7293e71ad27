# From micrographs to particles: CTF by two estimators -> consensus and selection -> LoG picking ->
# extraction.  Runs when the workflow starts from movies or micrographs (workflow/rules/preprocess.smk);
# the particle stages use its particles when config pick.use_for_particles is true.


rule ctf:
    input:
        micrographs=micrographs_for_ctf(),
    output:
        star=result("ctf", "{method}", "micrographs_ctf.star"),
    log:
        log_file("ctf_{method}"),
    wildcard_constraints:
        method="ctffind|zeros",
    params:
        outdir=lambda w, output: os.path.dirname(output.star),
        options=" ".join(option(f"--{k.replace('_', '-')}", v) for k, v in config["ctf"].items()
                         if k not in ("max_fit_resolution", "max_astigmatism", "max_consensus_resolution", "max_drift",
                                      "selection_defocus_min", "selection_defocus_max")),
        common=spa_common(),
    shell:
        "spa ctf --micrographs {input.micrographs} --method {wildcards.method} {params.options} "
        "--output-dir {params.outdir} {params.common} > {log} 2>&1"


rule ctf_consensus:
    input:
        a=result("ctf", "ctffind", "micrographs_ctf.star"),
        b=result("ctf", "zeros", "micrographs_ctf.star"),
    output:
        selected=result("ctf", "consensus", "micrographs_selected.star"),
        rejected=result("ctf", "consensus", "micrographs_rejected.star"),
    log:
        log_file("ctf_consensus"),
    params:
        outdir=lambda w, output: os.path.dirname(output.selected),
        rules=" ".join(option(flag, config["ctf"].get(key)) for flag, key in [
            ("--max-fit-resolution", "max_fit_resolution"), ("--max-astigmatism", "max_astigmatism"),
            ("--max-consensus-resolution", "max_consensus_resolution"), ("--max-drift", "max_drift"),
            ("--defocus-min", "selection_defocus_min"), ("--defocus-max", "selection_defocus_max")]),
        common=spa_common(),
    shell:
        "spa consensus ctf --a {input.a} --b {input.b} {params.rules} --output-dir {params.outdir} "
        "{params.common} > {log} 2>&1"


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
        common=spa_common(),
    shell:
        "spa extract --micrographs {input.micrographs} --coordinates {input.coordinates} --box {params.box} "
        "{params.rescale} --output-dir {params.outdir} {params.common} > {log} 2>&1"
