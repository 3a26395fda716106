# DAISY: containerized analysis pipelines for synchrotron X-ray experiments.
#
#   snakemake --workflow-profile profiles/workstation --configfile .test/ct-nxtomo/config.yaml
#   daisy run ct --config my-ct.yaml     (resolves the config into the outdir, then the same)
#
# The config names its pipeline (ct, xrd or copy); its schema is schemas/<pipeline>.schema.json.
# Only that pipeline's rules are included; the plan (daisy/pipelines/<pipeline>.py) owns every
# job's files, image and resources.

include: "rules/common.smk"
include: f"rules/{RUN.pipeline}.smk"


rule all:
    input:
        RUN.targets,
        RUN.provenance_file(),
        RUN.crate_file(),
    default_target: True
