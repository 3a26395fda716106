# XRD pipeline: detector frames -> integrated patterns with pyFAI, in frame blocks (daisy/pipelines/xrd.py).

from daisy.pipelines import xrd as xrd_plan


rule xrd_block:
    input:
        job=RUN.path("jobs", "xrd_block_{block}.json"),
        data=RUN.inputs,
    output:
        block=RUN.path("xrd", "blocks", "block_{block}.h5"),
        record=RUN.path("records", "xrd_block_{block}.json"),
    log:
        RUN.path("logs", "xrd_block_{block}.log"),
    container:
        RUN.image("pyfai")
    threads: RUN.config["threads"]
    resources:
        mem_mb=2048,
    wildcard_constraints:
        block=r"\d{4}",
    shell:
        "python3 -m daisy_steps run --job {input.job} > {log} 2>&1"


rule xrd_gather:
    input:
        job=RUN.job_file("xrd_gather"),
        blocks=[xrd_plan.block_file(RUN, i) for i in range(len(RUN.blocks))],
    output:
        result=xrd_plan.result_file(RUN),
        previews=list(xrd_plan.preview_files(RUN).values()) if RUN.config["save"]["previews"] else [],
        xy=[directory(xrd_plan.xy_dir(RUN))] if RUN.config["save"]["xy"] else [],
        record=RUN.record_file("xrd_gather"),
    log:
        RUN.log_file("xrd_gather"),
    container:
        RUN.image("pyfai")
    shell:
        "python3 -m daisy_steps run --job {input.job} > {log} 2>&1"
