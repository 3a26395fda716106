# The minimal pipeline: load one dataset and save it again, in the base image.


rule copy:
    input:
        job=RUN.job_file("copy"),
        data=RUN.inputs,
    output:
        data=RUN.targets[0],
        record=RUN.record_file("copy"),
    log:
        RUN.log_file("copy"),
    container:
        RUN.image("base")
    threads: RUN.config["threads"]
    shell:
        "python3 -m daisy_steps run --job {input.job} > {log} 2>&1"
