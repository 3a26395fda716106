"""What a job that runs under Slurm writes into its record (``record["slurm"]``).

Only the standard library: this runs in every image.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

#: SLURM_* variables a job record keeps -> their key in ``record["slurm"]`` (the Slurm profile's
#: apptainer-args pass them through ``--cleanenv``; docs/slurm.md)
SLURM_VARIABLES = {"SLURM_JOB_ID": "job_id", "SLURM_ARRAY_JOB_ID": "array_job_id",
                   "SLURM_ARRAY_TASK_ID": "array_task_id", "SLURMD_NODENAME": "node",
                   "SLURM_JOB_PARTITION": "partition", "SLURM_JOB_ACCOUNT": "account",
                   "SLURM_CLUSTER_NAME": "cluster", "SLURM_RESTART_COUNT": "restarts"}


def add(record: dict[str, Any]) -> None:
    """``record["slurm"]`` when the job runs under Slurm: its job id, node, partition (SLURM_*
    variables), what it asked for (CPUs, memory) and what it used: the CPUs it may run on, this
    process's peak RSS and CPU time (getrusage: no accounting database needed), wall seconds, and
    the image file Apptainer ran. Nothing outside Slurm."""
    import resource

    env = os.environ
    if not env.get("SLURM_JOB_ID"):
        return
    info: dict[str, Any] = {key: env[name] for name, key in SLURM_VARIABLES.items() if env.get(name)}
    number = lambda name: int(env[name]) if env.get(name, "").isdigit() else None  # noqa: E731
    cpus = number("SLURM_CPUS_PER_TASK")
    # the nested srun of snakemake-executor-plugin-slurm-jobstep drops SLURM_MEM_PER_NODE (and the
    # container sees no memory cgroup): the rule's shell passes the memory asked of sbatch
    mem = number("SLURM_MEM_PER_NODE") or ((number("SLURM_MEM_PER_CPU") or 0) * (cpus or 1)) or \
        number("DAISY_JOB_MEM_MB")
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        elapsed = round((datetime.now(timezone.utc) - datetime.fromisoformat(record["started"])).total_seconds(), 3)
    except (KeyError, TypeError, ValueError):
        elapsed = None
    info["requested"] = {"cpus": cpus, "mem_mb": mem}
    from .core import usable_cores

    info["used"] = {"cpus": usable_cores(), "max_rss_mb": round(max(own.ru_maxrss, children.ru_maxrss) / 1024, 1),
                    "cpu_seconds": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3),
                    "elapsed_seconds": elapsed}
    if env.get("APPTAINER_CONTAINER"):
        info["image_file"] = env["APPTAINER_CONTAINER"]
    record["slurm"] = info
