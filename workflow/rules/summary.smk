# One JSON file that says where the final map is and how good it is.


rule summary:
    input:
        unpack(summary_inputs),
        map=final_map(),
    output:
        result("summary.json"),
    log:
        log_file("summary"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/summary.py"
