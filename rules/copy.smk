# The minimal pipeline: load one dataset and save it again, in the base image (daisy/pipelines/copy.py).

rule copy:
    input:
        unpack(STAGE["copy"].input),
    output:
        **STAGE["copy"].output,
    log:
        STAGE["copy"].log,
    container:
        STAGE["copy"].container
    threads: STAGE["copy"].threads
    resources:
        **STAGE["copy"].resources,
    wildcard_constraints:
        **STAGE["copy"].wildcard_constraints,
    shell:
        JOB_SHELL
