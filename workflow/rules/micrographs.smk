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
        common=spa_common(),
    shell:
        "spa extract --micrographs {input.micrographs} --coordinates {input.coordinates} --box {params.box} "
        "{params.rescale} --output-dir {params.outdir} {params.common} > {log} 2>&1"
