# Built-in demo data: particles with CTF and noise, plus the ground truth.


rule simulate:
    output:
        particles=result("simulate", "particles.star"),
        images=directory(result("simulate", "particles.zarr")),
        truth_particles=result("simulate", "truth", "particles.star"),
        truth_map=result("simulate", "truth", "class001.mrc"),
    log:
        log_file("simulate"),
    benchmark:
        benchmark_file("simulate")
    threads: config["workers"]
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        outdir=lambda w, output: os.path.dirname(output.particles),
        preset=config["simulate"]["preset"],
        overrides=" ".join(
            option(flag, config["simulate"].get(key))
            for flag, key in [
                ("--n-particles", "n_particles"),
                ("--box", "box"),
                ("--pixel-size", "pixel_size"),
                ("--snr", "snr"),
            ]
        ),
        common=spa_common(seed=config["simulate"]["seed"]),
    shell:
        "spa simulate --kind particles --output-dir {params.outdir} "
        "--preset {params.preset} {params.overrides} "
        "{params.common} --workers {threads} > {log} 2>&1"
