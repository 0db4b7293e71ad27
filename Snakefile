# spa: cryo-EM single-particle analysis as a Snakemake workflow.
#
#   snakemake --profile profiles/local                   # the built-in demo
#   snakemake --profile profiles/local --configfile my.yaml
#
# The defaults in config/config.yaml always load first; a --configfile or
# --config given on the command line is merged over them, then the result is
# validated against config/schema.yaml (which also fills in defaults).
# Every rule is a thin call to one `spa` command (see docs/stages.md); the
# plumbing (paths, targets, common options) lives in workflow/rules/common.smk.

from snakemake.utils import min_version, validate

min_version("8.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, os.path.join(workflow.basedir, "config", "schema.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/ctf.smk"
include: "workflow/rules/micrographs.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/class2d.smk"
include: "workflow/rules/initial_model.smk"
include: "workflow/rules/class3d.smk"
include: "workflow/rules/refine3d.smk"
include: "workflow/rules/fsc.smk"
include: "workflow/rules/postprocess.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/report.smk"


# tiny steps run where snakemake runs, not as cluster jobs
localrules:
    all,
    summary,
    cluster_config,
    select,
    fsc,
    class3d_consensus,
    ctf_consensus,
    report_config,
    report,


rule all:
    input:
        final_targets(),
    default_target: True
