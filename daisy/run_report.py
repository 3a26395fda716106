"""What the person running DAISY must see at the end of a run: the warnings of its jobs.

Steps report what makes a result doubtful but not meaningless (dead pixels below the limit, NaN
values replaced, a centre accepted on the edge of its search range) with
``JobContext.warn``; the runner keeps them in the job record (``warnings``, ``"<step>: <text>"``),
the provenance copies the records (``provenance.json``: ``jobs.<job>.warnings``), and
:func:`print_warnings` prints them on the console when the run ends (``onsuccess``/``onerror``).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

#: at most this many warning lines are printed; the rest are counted (all stay in the records)
MAX_LINES = 40


def run_warnings(run) -> list[tuple[str, str]]:
    """``(job, warning)`` of every planned job that has a record (completed or failed), in plan order."""
    from .provenance import read_record

    found = []
    for name in getattr(run, "jobs", {}) or {}:
        record: dict[str, Any] | None = read_record(run.record_file(name))
        if not record:
            continue
        for line in record.get("warnings") or []:
            found.append((name, str(line)))
    return found


def print_warnings(run, stream: TextIO | None = None, limit: int = MAX_LINES) -> int:
    """Print the warnings of the run's job records (``daisy: warning: JOB: STEP: TEXT``, at most
    ``limit`` lines) and where they are kept; return how many there are. Never raises: a report
    must not turn a finished run into a failed one."""
    stream = stream or sys.stderr
    try:
        found = run_warnings(run)
        if not found:
            return 0
        print(f"daisy: {len(found)} warning{'s' if len(found) != 1 else ''} "
              f"(kept in {run.provenance_file()}, jobs.<job>.warnings):", file=stream)
        for job, line in found[:limit]:
            print(f"daisy: warning: {job}: {line}", file=stream)
        if len(found) > limit:
            print(f"daisy: ... and {len(found) - limit} more (see the job records under {run.path('records')})",
                  file=stream)
        stream.flush()
        return len(found)
    except Exception as exc:  # noqa: BLE001 - a report never fails the run
        print(f"daisy: could not read the run's warnings: {exc}", file=stream)
        return 0
