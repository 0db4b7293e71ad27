"""Write the config's cluster section as a ``spa --config`` file (``{"cluster": {...}}``), atomically.

Run by Snakemake's ``script:`` directive (rule cluster_config, workflow/rules/cluster.smk); the EM rules
pass the file to their command, which validates it against config/schema.yaml.
"""

import yaml

from spa.io.atomic import atomic_path

with atomic_path(snakemake.output[0]) as tmp:  # noqa: F821  (Snakemake's script global)
    tmp.write_text(yaml.safe_dump({"cluster": dict(snakemake.params.cluster)}, sort_keys=True))  # noqa: F821
with open(snakemake.log[0], "w") as log:  # noqa: F821
    log.write(f"wrote {snakemake.output[0]}\n")  # noqa: F821
