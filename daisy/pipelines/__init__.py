"""Pipeline planners: each module's ``plan(run)`` fills ``run.jobs``, ``run.inputs`` and ``run.targets``."""
