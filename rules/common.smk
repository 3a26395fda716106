# The plan, job files, provenance (+ RO-Crate) and the run's lifecycle: shared by all pipelines.
# Every path, image and resource of a job comes from the plan (daisy/plan.py, daisy/pipelines/);
# a stage's rule takes them through daisy.workflow.rule_spec.

import sys

sys.path.insert(0, workflow.basedir)

from daisy import workflow as daisy_workflow  # noqa: E402


if not config:
    raise WorkflowError(
        "no config given: pass --configfile FILE (examples in .test/*/config.yaml) or use 'daisy run'"
    )

# Validates the config (defaults filled in) and plans the jobs; nothing runs otherwise.
# Image digests are checked in onstart, when jobs will run (not for --lint or --dry-run).
try:
    RUN = daisy_workflow.setup(config)
except daisy_workflow.SETUP_ERRORS as exc:  # one clear line: the field, file or image at fault
    raise WorkflowError(f"DAISY: {exc}") from None


# Through Slurm: a job's end is seen within a few seconds, however long it ran (daisy/slurm_status.py).
from daisy import slurm_status  # noqa: E402

slurm_status.bound_status_checks()


# The directives of each stage's rule (patterns, image, inputs, resources), from the plan.
# A cluster job also holds the executor's own Snakemake processes: they get WRAPPER_MB on top
# (in the submitting Snakemake, and in the job's own, which formats the shell command).
STAGE = daisy_workflow.rule_specs(
    RUN, wrapper_mb=lambda: 0 if workflow.local_exec and workflow.is_main_process else daisy_workflow.WRAPPER_MB)


# Every step job: its chain of steps runs in one process in the stage's pinned image. The memory
# asked for (the plan's, times the attempt) goes into a Slurm job's record (daisy_steps/slurm_record.py).
JOB_SHELL = "DAISY_JOB_MEM_MB={resources.mem_mb} python3 -m daisy_steps run --job {input.job:q} > {log:q} 2>&1"


rule job_file:
    output:
        RUN.job_file("{job}"),
    params:
        document=lambda wildcards: RUN.job_document(wildcards.job),
    log:
        RUN.log_file("jobs/{job}"),
    localrule: True
    run:
        daisy_workflow.write_job(output[0], params.document)


rule provenance:
    input:
        records=[RUN.record_file(name) for name in RUN.jobs],
        targets=RUN.targets,
    output:
        RUN.provenance_file(),
        RUN.crate_file(),
    log:
        RUN.log_file("provenance"),
    localrule: True
    run:
        daisy_workflow.write_provenance(RUN)


# While jobs run: the outdir locked, images verified against the lock, held mounted and warm
# (daisy/images/execute.py); at the end, warnings printed (and a failed run's provenance written),
# holders stopped without waiting for Snakemake's 1 s scheduler timer (daisy/workflow.py).
onstart:
    try:
        daisy_workflow.start_run(RUN, workflow)
    except daisy_workflow.SETUP_ERRORS as exc:
        raise WorkflowError(f"DAISY: {exc}") from None


onsuccess:
    daisy_workflow.end_run(RUN)


onerror:
    daisy_workflow.end_run(RUN, failed=True)
