"""Errors a step raises for bad input: one clear line naming the file, dataset or field."""


class StepError(Exception):
    """Bad input or configuration; the message names what is wrong. Exit code 2."""

    exit_code = 2


class ParamError(StepError):
    """A parameter violates its schema; the message names the field and what is allowed."""
