# Fourier shell correlation between two maps (names in FSC_PAIRS, common.smk):
# "halves" is the gold-standard FSC (read at 0.143), "truth" compares the
# final map with the simulated ground truth (read at 0.5), "ideal" the map
# from the true poses (made as the final map is) with the same truth, alike.


rule fsc:
    input:
        map1=lambda w: FSC_PAIRS[w.pair]()[0],
        map2=lambda w: FSC_PAIRS[w.pair]()[1],
    output:
        table=fsc_table("{pair}"),
        plot=result("fsc", "{pair}", "fsc.png"),
    log:
        log_file("fsc_{pair}"),
    benchmark:
        benchmark_file("fsc_{pair}")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        outdir=lambda w, output: os.path.dirname(output.table),
        mask=option("--mask", config["fsc"]["mask"]),
        # an ab-initio map lives in its own frame (and hand): align it to the truth first; the true-pose
        # map ("ideal") goes through the same alignment, so that the two are compared alike
        align=lambda w: "--align" if w.pair in ("truth", "ideal") else "",
        title=lambda w: FSC_TITLES.get(w.pair, w.pair),
        common=spa_common(),
    shell:
        "spa fsc --map1 {input.map1} --map2 {input.map2} --output-dir {params.outdir} "
        "{params.mask} {params.align} --title '{params.title}' {params.common} > {log} 2>&1"
