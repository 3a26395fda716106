# CT pipeline: raw projections -> reconstructed volume, in sinogram slabs (daisy/pipelines/ct.py).

from daisy.pipelines import ct as ct_plan


rule ct_center:
    input:
        job=RUN.job_file("ct_center"),
        raw=RUN.inputs,
    output:
        center=ct_plan.center_file(RUN),
        record=RUN.record_file("ct_center"),
    log:
        RUN.log_file("ct_center"),
    container:
        RUN.image("tomopy")
    threads: RUN.config["threads"]
    resources:
        mem_mb=lambda wildcards: RUN.jobs["ct_center"].mem_mb,
    shell:
        "python3 -m daisy_steps run --job {input.job} > {log} 2>&1"


rule ct_slab:
    input:
        job=RUN.path("jobs", "ct_slab_{slab}.json"),
        raw=RUN.inputs,
        center=[ct_plan.center_file(RUN)] if "ct_center" in RUN.jobs else [],
    output:
        slab=RUN.path("ct", "slabs", "slab_{slab}.h5"),
        record=RUN.path("records", "ct_slab_{slab}.json"),
        previews=[ct_plan.sinogram_file(RUN, "{slab}")] if RUN.config["save"]["previews"] else [],
    log:
        RUN.path("logs", "ct_slab_{slab}.log"),
    container:
        RUN.image("tomopy")
    threads: RUN.config["threads"]
    resources:
        mem_mb=lambda wildcards: RUN.jobs[f"ct_slab_{wildcards.slab}"].mem_mb,
    wildcard_constraints:
        slab=r"\d{4}",
    shell:
        "python3 -m daisy_steps run --job {input.job} > {log} 2>&1"


rule ct_gather:
    input:
        job=RUN.job_file("ct_gather"),
        slabs=[ct_plan.slab_file(RUN, i) for i in range(len(RUN.slabs))],
    output:
        volume=ct_plan.volume_file(RUN),
        previews=list(ct_plan.preview_files(RUN).values()) if RUN.config["save"]["previews"] else [],
        tiff=[ct_plan.tiff_file(RUN)] if RUN.config["save"]["tiff"] else [],
        record=RUN.record_file("ct_gather"),
    log:
        RUN.log_file("ct_gather"),
    container:
        RUN.image("base")
    shell:
        "python3 -m daisy_steps run --job {input.job} > {log} 2>&1"
