# Postprocessing of the refined map: solvent mask -> PostProcess (corrected FSC, B-factor, sharpened map) ->
# local resolution.  Thin calls to `spa mask`, `spa postprocess`, `spa locres`.


rule mask:
    input:
        map=final_map(),
    output:
        mask=result("postprocess", "mask.mrc"),
    log:
        log_file("mask"),
    params:
        lowpass=config["postprocess"]["mask_lowpass"],
        threshold=option("--threshold", config["postprocess"]["mask_threshold"]),
        extension=config["postprocess"]["mask_extend"],
        soft=config["postprocess"]["mask_soft_edge"],
        common=spa_common(),
    shell:
        "spa mask --map {input.map} --output {output.mask} --lowpass {params.lowpass} {params.threshold} "
        "--extend {params.extension} --soft-edge {params.soft} {params.common} > {log} 2>&1"


rule postprocess:
    input:
        halves=half_maps(),
        mask=rules.mask.output.mask,
    output:
        map=result("postprocess", "postprocess.mrc"),
        masked=result("postprocess", "postprocess_masked.mrc"),
        star=result("postprocess", "postprocess.star"),
        summary=result("postprocess", "postprocess.json"),
    log:
        log_file("postprocess"),
    params:
        outdir=lambda w, output: os.path.dirname(output.map),
        bfactor=option("--bfactor", config["postprocess"]["bfactor"]),
        mtf=option("--mtf", config["postprocess"]["mtf"]),
        common=spa_common(),
    shell:
        "spa postprocess --half1 {input.halves[0]} --half2 {input.halves[1]} --mask {input.mask} "
        "{params.bfactor} {params.mtf} --output-dir {params.outdir} {params.common} > {log} 2>&1"


rule locres:
    input:
        halves=half_maps(),
        mask=rules.mask.output.mask,
    output:
        map=result("locres", "relion_locres.mrc"),
        filtered=result("locres", "relion_locres_filtered.mrc"),
        summary=result("locres", "locres.json"),
    log:
        log_file("locres"),
    params:
        outdir=lambda w, output: os.path.dirname(output.map),
        window=option("--window", config["postprocess"]["locres_window"]),
        common=spa_common(),
    shell:
        "spa locres --half1 {input.halves[0]} --half2 {input.halves[1]} --mask {input.mask} {params.window} "
        "--output-dir {params.outdir} {params.common} > {log} 2>&1"
