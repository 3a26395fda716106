"""daisy run defers pandas (imported by the Slurm executor plugin at Snakemake's start, used only
in its efficiency report): it loads on first use, in full, and Snakemake still runs."""

from __future__ import annotations

import subprocess
import sys

from tests.workflow_helpers import REPO

CHECK = """
import sys
from daisy.lazy_modules import defer_all
assert defer_all() == ["pandas"]
import snakemake.cli                                   # imports the Slurm plugin, which imports pandas
import pandas as pd
assert "pandas.core" not in sys.modules, "pandas was loaded at import"
assert pd.isna(None) and pd.DataFrame({"a": [1, 2]}).shape == (2, 1)
assert type(sys.modules["pandas"]).__name__ == "module"          # the real module from now on
from pandas.api.types import is_numeric_dtype
assert is_numeric_dtype(pd.Series([1.0]))
assert defer_all() == []                               # loaded: nothing left to defer
print("ok")
"""


def test_pandas_loads_on_first_use_not_at_snakemakes_import():
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
