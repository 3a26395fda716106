# XRD pipeline: detector frames -> integrated patterns with pyFAI, in frame blocks.
# Stages, their step chains and outputs: daisy/pipelines/xrd.py (the plan owns every path and resource).

rule xrd_block:
    input:
        unpack(stage("xrd_block").input),
    output:
        **stage("xrd_block").output,
    log:
        stage("xrd_block").log,
    container:
        stage("xrd_block").container
    threads: stage("xrd_block").threads
    resources:
        **stage("xrd_block").resources,
    wildcard_constraints:
        **stage("xrd_block").wildcard_constraints,
    shell:
        JOB_SHELL


rule xrd_gather:
    input:
        unpack(stage("xrd_gather").input),
    output:
        **stage("xrd_gather").output,
    log:
        stage("xrd_gather").log,
    container:
        stage("xrd_gather").container
    threads: stage("xrd_gather").threads
    resources:
        **stage("xrd_gather").resources,
    wildcard_constraints:
        **stage("xrd_gather").wildcard_constraints,
    shell:
        JOB_SHELL
