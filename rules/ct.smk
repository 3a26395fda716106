# CT pipeline: raw projections -> reconstructed volume, in sinogram slabs.
# Stages, their step chains and outputs: daisy/pipelines/ct.py (the plan owns every path and resource).

rule ct_center:
    input:
        unpack(stage("ct_center").input),
    output:
        **stage("ct_center").output,
    log:
        stage("ct_center").log,
    container:
        stage("ct_center").container
    threads: stage("ct_center").threads
    resources:
        **stage("ct_center").resources,
    wildcard_constraints:
        **stage("ct_center").wildcard_constraints,
    shell:
        JOB_SHELL


rule ct_slab:
    input:
        unpack(stage("ct_slab").input),
    output:
        **stage("ct_slab").output,
    log:
        stage("ct_slab").log,
    container:
        stage("ct_slab").container
    threads: stage("ct_slab").threads
    resources:
        **stage("ct_slab").resources,
    wildcard_constraints:
        **stage("ct_slab").wildcard_constraints,
    shell:
        JOB_SHELL


rule ct_gather:
    input:
        unpack(stage("ct_gather").input),
    output:
        **stage("ct_gather").output,
    log:
        stage("ct_gather").log,
    container:
        stage("ct_gather").container
    threads: stage("ct_gather").threads
    resources:
        **stage("ct_gather").resources,
    wildcard_constraints:
        **stage("ct_gather").wildcard_constraints,
    shell:
        JOB_SHELL
