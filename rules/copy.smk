# The minimal pipeline: load one dataset and save it again, in the base image (daisy/pipelines/copy.py).

rule copy:
    input:
        unpack(stage("copy").input),
    output:
        **stage("copy").output,
    log:
        stage("copy").log,
    container:
        stage("copy").container
    threads: stage("copy").threads
    resources:
        **stage("copy").resources,
    wildcard_constraints:
        **stage("copy").wildcard_constraints,
    shell:
        JOB_SHELL
