# CT pipeline: raw projections -> reconstructed volume, in sinogram slabs.
# Stages, their step chains and outputs: daisy/pipelines/ct.py (the plan owns every path and resource).

rule ct_rows:
    input:
        unpack(STAGE["ct_rows"].input),
    output:
        **STAGE["ct_rows"].output,
    log:
        STAGE["ct_rows"].log,
    container:
        STAGE["ct_rows"].container
    threads: STAGE["ct_rows"].threads
    resources:
        **STAGE["ct_rows"].resources,
    wildcard_constraints:
        **STAGE["ct_rows"].wildcard_constraints,
    shell:
        JOB_SHELL


rule ct_center:
    input:
        unpack(STAGE["ct_center"].input),
    output:
        **STAGE["ct_center"].output,
    log:
        STAGE["ct_center"].log,
    container:
        STAGE["ct_center"].container
    threads: STAGE["ct_center"].threads
    resources:
        **STAGE["ct_center"].resources,
    wildcard_constraints:
        **STAGE["ct_center"].wildcard_constraints,
    shell:
        JOB_SHELL


rule ct_slab:
    input:
        unpack(STAGE["ct_slab"].input),
    output:
        **STAGE["ct_slab"].output,
    log:
        STAGE["ct_slab"].log,
    container:
        STAGE["ct_slab"].container
    threads: STAGE["ct_slab"].threads
    resources:
        **STAGE["ct_slab"].resources,
    wildcard_constraints:
        **STAGE["ct_slab"].wildcard_constraints,
    shell:
        JOB_SHELL


rule ct_gather:
    input:
        unpack(STAGE["ct_gather"].input),
    output:
        **STAGE["ct_gather"].output,
    log:
        STAGE["ct_gather"].log,
    container:
        STAGE["ct_gather"].container
    threads: STAGE["ct_gather"].threads
    resources:
        **STAGE["ct_gather"].resources,
    wildcard_constraints:
        **STAGE["ct_gather"].wildcard_constraints,
    shell:
        JOB_SHELL


# One slab job and the gather in one process (the plan's choice when the slabs fit one job).
rule ct_volume:
    input:
        unpack(STAGE["ct_volume"].input),
    output:
        **STAGE["ct_volume"].output,
    log:
        STAGE["ct_volume"].log,
    container:
        STAGE["ct_volume"].container
    threads: STAGE["ct_volume"].threads
    resources:
        **STAGE["ct_volume"].resources,
    wildcard_constraints:
        **STAGE["ct_volume"].wildcard_constraints,
    shell:
        JOB_SHELL
