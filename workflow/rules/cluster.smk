# Where the EM stages' Dask workers run: the config's cluster section as a file the EM commands read
# (`--config`), only when they run elsewhere than the job itself (SLURM jobs, a running scheduler).


rule cluster_config:
    output:
        result("cluster.yaml"),
    log:
        log_file("cluster_config"),
    params:
        cluster=CLUSTER,
    localrule: True
    script:
        "../scripts/cluster_config.py"
