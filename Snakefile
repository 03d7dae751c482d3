# Root Snakefile: the workflow lives in workflow/ (config, schema, rules); the default target is defined here
# because Snakemake 9.27 ignores `default_target` on a rule that comes from an included file.
include: "workflow/Snakefile"


rule all:
    default_target: True
    input:
        all_outputs(),
