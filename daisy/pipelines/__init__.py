"""Pipeline planners. Each module declares its ``STAGES`` (one Snakemake rule each: image and step
chain) and a ``plan(run)`` that adds the stages' outputs and the jobs to a :class:`daisy.plan.Run`."""
