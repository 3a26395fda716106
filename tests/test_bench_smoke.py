"""Smoke runs of every benchmark script at a tiny size, so they cannot rot (benchmarks are not
tests: the full sizes are run by hand, see docs/benchmarks.md). DAISY_BENCH_NO_RECORD=1 keeps
docs/benchmarks.md and bench/results/ untouched; data goes to a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO, require_image

pytestmark = [pytest.mark.apptainer]
BENCH = REPO / "bench"


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
    for name in ("base", "tomopy", "pyfai"):
        require_image(name)
    data = tmp_path_factory.mktemp("bench-data")
    return {**os.environ, "DAISY_BENCH_NO_RECORD": "1", "DAISY_BENCH_DATA": str(data)}


def bench(env, script, *args, timeout=240):
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=BENCH, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_ct_vs_tomopy_tiny(bench_env):
    out = bench(bench_env, "ct_vs_tomopy.py", "--size", "tiny", "--repeats", "1")
    assert "difference" in out and "volumes bit-identical: True" in out
    assert "cores" in out


def test_xrd_vs_pyfai_tiny(bench_env):
    out = bench(bench_env, "xrd_vs_pyfai.py", "--frames", "4", "--per-file", "2", "--binning", "8",
                "--repeats", "1")
    assert "ratio" in out and "patterns equal: True" in out


def test_step_start_tiny(bench_env):
    out = bench(bench_env, "step_start.py", "--repeats", "1", "--images", "base")
    assert "difference" in out
    if os.geteuid() == 0:  # the native baseline: the image's own files run with chroot
        assert "step_start_base_native" in out


def test_noop_rerun_tiny(bench_env):
    out = bench(bench_env, "noop_rerun.py", "--size", "tiny", "--repeats", "1")
    assert "difference" in out


def test_engine_floor(bench_env):
    out = bench(bench_env, "engine_floor.py", "--repeats", "1")
    assert "difference" in out and "import snakemake.cli alone" in out


def test_peak_memory_tiny(bench_env):
    out = bench(bench_env, "peak_memory.py", "--size", "tiny")
    assert "ratio" in out and "peak RSS" in out


def test_out_of_core_tiny(bench_env):
    out = bench(bench_env, "out_of_core.py", "--size", "tiny", "--slab-height", "4", "--no-control")
    assert "bit-identical to the in-memory run: True" in out and "ratio" in out


def test_make_ct_data_is_cheap_and_reused(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import make_ct_data
    finally:
        sys.path.remove(str(BENCH))
    import h5py

    path = make_ct_data.make(tmp_path / "scan.h5", angles=10, rows=8, cols=32, quiet=True)
    mtime = path.stat().st_mtime_ns
    assert make_ct_data.make(path, angles=10, rows=8, cols=32, quiet=True).stat().st_mtime_ns == mtime
    with h5py.File(path) as handle:
        assert handle["/exchange/data"].shape == (10, 8, 32) and handle["/exchange/data"].dtype == "uint16"
        assert handle["/exchange/data"].chunks == (1, 8, 32) and handle["/exchange/data"].compression is None
        assert handle["/exchange/theta"].attrs["units"] == "deg"


def test_bench_uses_the_tests_reference_scripts():
    """The B side (the direct tomopy / pyFAI scripts) lives in tests/reference, the tests' oracles;
    the benchmarks point there, and no copy of them is left in bench/ to drift apart."""
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    assert common.REFERENCE == REPO / "tests" / "reference"
    for name in ("direct_tomopy.py", "direct_pyfai.py"):
        assert (common.REFERENCE / name).is_file()
        assert not (BENCH / name).exists()
