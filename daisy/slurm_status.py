"""How often a Slurm run asks for its jobs' status: bounded.

snakemake-executor-plugin-slurm (2.8) checks first ``init_seconds_before_status_checks`` after a
submission, then adds 10 s to the interval at every check that finds no job finished, up to
180 s; one finished job resets it. Made for accounting queries (``sacct``) on a busy cluster,
this costs a run whose jobs last a minute up to 50 s per job between its end and the next job's
submission: a job that runs 32 s is seen finished at 52 s (checks at 2, 14, 36, 68 ... s after
it started). DAISY's profile asks ``squeue`` for the run's own jobs (one query per check, by the
run's name; docs/slurm.md), so it keeps the interval at most ``DAISY_SLURM_MAX_STATUS_SECONDS``
(default 3 s): the plugin's growth still applies below that bound.
"""

from __future__ import annotations

import os

ENV = "DAISY_SLURM_MAX_STATUS_SECONDS"
DEFAULT_MAX_SECONDS = 3.0


def max_seconds() -> float | None:
    """The bound (``DAISY_SLURM_MAX_STATUS_SECONDS``; 0 or less: the plugin's own growth)."""
    try:
        value = float(os.environ.get(ENV, DEFAULT_MAX_SECONDS))
    except ValueError:
        raise ValueError(f"environment variable {ENV}={os.environ[ENV]!r} is not a number of seconds") from None
    return value if value > 0 else None


def bound_status_checks() -> bool:
    """Bound the Slurm executor's interval between status checks (see the module's text);
    False when the plugin is not installed or the bound is off. Changes only the plugin's class,
    in this process (the Snakemake that submits jobs)."""
    bound = max_seconds()
    try:
        from snakemake_executor_plugin_slurm import Executor
    except ImportError:
        return False
    if bound is None:
        if "_daisy_status_bound" in Executor.__dict__:
            Executor._daisy_status_bound = None          # the plugin's own growth again
        return False
    if "_daisy_status_bound" not in Executor.__dict__:
        inherited = next(c.__dict__["next_seconds_between_status_checks"]
                         for c in Executor.__mro__ if "next_seconds_between_status_checks" in c.__dict__)

        def set_bounded(self, value):
            limit = type(self)._daisy_status_bound
            inherited.fset(self, value if value is None or limit is None else min(value, limit))

        Executor.next_seconds_between_status_checks = property(inherited.fget, set_bounded)
    Executor._daisy_status_bound = bound
    return True
