# Preprocessing: movies (the user's, input.movies, or simulated ones, simulate.movies) -> import -> motion;
# or motion-corrected micrographs (input.micrographs) -> import.  Resumable: a new movie matching the
# glob re-runs import (its file list is this rule's input) and motion corrects that movie alone.

rule simulate_movies:
    """Demo movies with their truth (drift, local motion, damage, gain)."""
    output:
        star=result("simulate_movies", "movies.star"),
        gain=result("simulate_movies", "gain.mrc"),
    log:
        log_file("simulate_movies"),
    benchmark:
        benchmark_file("simulate_movies")
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        outdir=lambda w, output: os.path.dirname(output.star),
        preset=config["simulate"]["movies"]["preset"],
        overrides=" ".join(
            option(f"--{key.replace('_', '-')}", value)
            for key, value in config["simulate"]["movies"].items()
            if key not in ("enabled", "preset")
        ),
        common=spa_common(seed=config["simulate"]["seed"]),
    shell:
        "spa simulate --kind movies --output-dir {params.outdir} --preset {params.preset} {params.overrides} "
        "{params.common} > {log} 2>&1"


rule simulate_micrographs:
    """Micrographs with their truth (defocus, astigmatism, carbon, contaminants) for the CTF stages
    (simulate.micrographs.enabled, config/examples/micrographs_ctf.yaml)."""
    output:
        star=result("simulate_micrographs", "micrographs.star"),
        truth=result("simulate_micrographs", "truth", "micrographs_ctf.star"),
    log:
        log_file("simulate_micrographs"),
    benchmark:
        benchmark_file("simulate_micrographs")
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        outdir=lambda w, output: os.path.dirname(output.star),
        preset=config["simulate"]["micrographs"]["preset"],
        overrides=" ".join(
            option(f"--{key.replace('_', '-')}", value)
            for key, value in config["simulate"]["micrographs"].items()
            if key not in ("enabled", "preset")
        ),
        common=spa_common(seed=config["simulate"]["seed"]),
    shell:
        "spa simulate --kind micrographs --output-dir {params.outdir} --preset {params.preset} {params.overrides} "
        "{params.common} > {log} 2>&1"


rule import_data:
    """Movies (or micrographs) into RELION STAR files with optics groups; the gain oriented and checked."""
    input:
        import_inputs,
    output:
        result("import", "micrographs.star" if MICROGRAPHS else "movies.star"),
    log:
        log_file("import"),
    benchmark:
        benchmark_file("import")
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        outdir=lambda w, output: os.path.dirname(output[0]),
        source=import_source(),
        options=import_options(),
    shell:
        "spa import {params.source} {params.options} --output-dir {params.outdir} > {log} 2>&1"


rule motion:
    """Motion correction: gain, whole-frame and patch alignment, dose weighting; movies already done are kept."""
    input:
        cluster=cluster_file(),
        movies=result("import", "movies.star"),
    output:
        result("motion", "corrected_micrographs.star"),
    log:
        log_file("motion"),
    benchmark:
        benchmark_file("motion")
    threads: em_threads()
    resources:
        mem_mb=8000,
        runtime=240,
        dask_workers=dask_workers(),
    params:
        outdir=lambda w, output: os.path.dirname(output[0]),
        options=" ".join(
            option(f"--{key.replace('_', '-')}", value)
            for key, value in config["motion"].items()
            if not isinstance(value, bool)
        ),
        switches=" ".join(
            flag
            for key, flag in [("smooth", "--no-smooth"), ("dose_weighting", "--no-dose-weighting")]
            if not config["motion"].get(key, True)
        )
        + (" --float16" if config["motion"].get("float16") else ""),
        common=spa_common(em=True),
    shell:
        "spa motion --movies {input.movies} --output-dir {params.outdir} {params.options} {params.switches} "
        "{params.common} --workers {resources.dask_workers} > {log} 2>&1"
