"""Write the workflow's validated config (defaults filled in) as YAML, for the report.

Run by Snakemake's ``script:`` directive (rule report_config): params.text is the YAML; the file is
written atomically.
"""

from spa.io.atomic import atomic_path

sm = snakemake  # noqa: F821 - injected by Snakemake's script directive
with atomic_path(str(sm.output[0])) as tmp:
    tmp.write_text(sm.params.text)
with open(str(sm.log[0]), "w") as log:
    print(f"workflow config written to {sm.output[0]}", file=log)
