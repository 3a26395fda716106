# Config validation, planning, image digests, job files and provenance: shared by all pipelines.

import sys

sys.path.insert(0, workflow.basedir)

from daisy import workflow as daisy_workflow  # noqa: E402


if not config:
    raise WorkflowError(
        "no config given: pass --configfile FILE (examples in .test/*/config.yaml) or use 'daisy run'"
    )

# Validates the config (defaults filled in), plans the jobs, checks every image's sha256
# against containers/images.lock.json and sets the container binds: nothing runs otherwise.
try:
    RUN = daisy_workflow.setup(config)
except daisy_workflow.SETUP_ERRORS as exc:  # one clear line: the field, file or image at fault
    raise WorkflowError(f"DAISY: {exc}") from None


rule job_file:
    output:
        RUN.path("jobs", "{job}.json"),
    params:
        document=lambda wildcards: RUN.job_document(wildcards.job),
    log:
        RUN.path("logs", "jobs", "{job}.log"),
    localrule: True
    run:
        daisy_workflow.write_job(output[0], params.document)


rule provenance:
    input:
        records=[RUN.record_file(name) for name in RUN.jobs],
        targets=RUN.targets,
    output:
        RUN.path("provenance.json"),
    log:
        RUN.path("logs", "provenance.log"),
    localrule: True
    run:
        from daisy import provenance

        provenance.write(RUN, output[0])


# While a run lasts its images stay mounted, so that jobs start on warm pages
# (daisy/containers.py: ImageHolders); at the end, stop them and do not wait for Snakemake's
# 1 s scheduler timer (daisy/workflow.py: release_scheduler_timers).
onstart:
    daisy_workflow.start_run(RUN, workflow)


onsuccess:
    daisy_workflow.finish_run()


onerror:
    daisy_workflow.finish_run()
