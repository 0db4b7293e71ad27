# One JSON file that says where the final map is and how good it is, and every FSC curve on one figure.


rule summary:
    input:
        unpack(summary_inputs),
        map=final_map(),
    output:
        result("summary.json"),
        figure=result("summary", "fsc_curves.png"),
    log:
        log_file("summary"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/summary.py"
