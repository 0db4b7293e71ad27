# Validation of the refinement: angular distribution and Fourier-space sampling (`spa validate`).


rule validate:
    input:
        particles=result("refine3d", "run_data.star"),
    output:
        summary=result("validate", "validation.json"),
    log:
        log_file("validate"),
    params:
        outdir=lambda w, output: os.path.dirname(output.summary),
        sym=config["symmetry"],
        common=spa_common(),
    shell:
        "spa validate --particles {input.particles} --sym {params.sym} --reslog --output-dir {params.outdir} "
        "{params.common} > {log} 2>&1"
