# XRD pipeline: detector frames -> integrated patterns with pyFAI, in frame blocks.
# Stages, their step chains and outputs: daisy/pipelines/xrd.py (the plan owns every path and resource).

rule xrd_block:
    input:
        unpack(STAGE["xrd_block"].input),
    output:
        **STAGE["xrd_block"].output,
    log:
        STAGE["xrd_block"].log,
    container:
        STAGE["xrd_block"].container
    threads: STAGE["xrd_block"].threads
    resources:
        **STAGE["xrd_block"].resources,
    wildcard_constraints:
        **STAGE["xrd_block"].wildcard_constraints,
    shell:
        JOB_SHELL


rule xrd_gather:
    input:
        unpack(STAGE["xrd_gather"].input),
    output:
        **STAGE["xrd_gather"].output,
    log:
        STAGE["xrd_gather"].log,
    container:
        STAGE["xrd_gather"].container
    threads: STAGE["xrd_gather"].threads
    resources:
        **STAGE["xrd_gather"].resources,
    wildcard_constraints:
        **STAGE["xrd_gather"].wildcard_constraints,
    shell:
        JOB_SHELL
