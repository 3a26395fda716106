"""``daisy demo``: generate sample data, then run the CT and XRD pipelines on it.

Sample data is made by DAISY's own sample steps inside the images (tomopy's 3D Shepp-Logan
phantom for CT; pyFAI's CeO2 calibrant on an Eiger 4M for XRD), so the demo needs nothing
but the images. Data already generated is kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

SIZES = {
    "small": {"ct": {"size": 128, "n_angles": 181}, "xrd": {"n_frames": 8, "frames_per_file": 4, "binning": 2}},
    "medium": {"ct": {"size": 256, "n_angles": 361}, "xrd": {"n_frames": 40, "frames_per_file": 20, "binning": 1}},
}


def make_ct_data(data_dir: Path, size: str = "small", layouts=("nxtomo",), seed: int = 0) -> dict[str, Path]:
    """Phantom scans, one file per layout, made in the tomopy image."""
    from .workflow import run_job_in_image

    data_dir = Path(data_dir)
    files = {layout: data_dir / f"ct-{layout}.h5" for layout in layouts}
    missing = [layout for layout, path in files.items() if not path.exists()]
    if missing:
        steps = [{"step": "sample.ct_phantom", "outputs": {"raw": str(files[layout].resolve())},
                  "params": {**SIZES[size]["ct"], "layout": layout, "seed": seed}} for layout in missing]
        run_job_in_image("tomopy", {"job": "sample_ct", "threads": 2, "steps": steps,
                                    "record": str((data_dir / "records" / "sample_ct.json").resolve())},
                         data_dir / "jobs" / "sample_ct.json", data_dir)
    return files


def make_xrd_data(data_dir: Path, size: str = "small", seed: int = 0, scan: int = 1) -> tuple[Path, Path]:
    """An Eiger master file with linked bitshuffle/LZ4 data files (CeO2 rings), and the PONI
    file of its geometry, made in the pyfai image."""
    from .workflow import run_job_in_image

    data_dir = Path(data_dir)
    master = data_dir / "xrd" / f"scan_{scan:05d}_master.h5"
    poni = data_dir / "xrd" / f"scan_{scan:05d}.poni"
    if not (master.exists() and poni.exists()):
        steps = [{"step": "sample.xrd_eiger", "outputs": {"scan": str(master.resolve()), "poni": str(poni.resolve())},
                  "params": {**SIZES[size]["xrd"], "seed": seed}}]
        run_job_in_image("pyfai", {"job": "sample_xrd", "threads": 2, "steps": steps,
                                   "record": str((data_dir / "records" / "sample_xrd.json").resolve())},
                         data_dir / "jobs" / "sample_xrd.json", data_dir)
    return master, poni


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by daisy demo\n" + yaml.safe_dump(config, sort_keys=False))
    return path


def main(out: Path, size: str = "small", pipelines=("ct", "xrd"), profile: str = "workstation") -> int:
    from .cli import run_pipeline

    out = Path(out)
    data = out / "data"
    configs = {}
    started = time.perf_counter()
    if "ct" in pipelines:
        print(f"daisy demo: CT sample data (phantom, {size}) in {data}", flush=True)
        raw = make_ct_data(data, size)["nxtomo"]
        configs["ct"] = write_config(out / "configs" / "ct.yaml", {
            "config_version": 1, "pipeline": "ct", "outdir": str(out / "ct"), "threads": 2,
            "input": {"file": str(raw)}, "stripe": {"method": "fw"}, "slabs": {"count": 2}})
    if "xrd" in pipelines:
        print(f"daisy demo: XRD sample data (CeO2 on Eiger 4M, {size}) in {data / 'xrd'}", flush=True)
        master, poni = make_xrd_data(data, size)
        configs["xrd"] = write_config(out / "configs" / "xrd.yaml", {
            "config_version": 1, "pipeline": "xrd", "outdir": str(out / "xrd"), "threads": 2,
            "input": {"file": str(master)}, "blocks": {"count": 2},
            "integrate": {"geometry": {"poni": str(poni)}, "npt": 2000, "integrate_2d": True}})
    if "copy" in pipelines:
        raw = make_ct_data(data, size)["nxtomo"]
        configs["copy"] = write_config(out / "configs" / "copy.yaml", {
            "config_version": 1, "pipeline": "copy", "outdir": str(out / "copy"),
            "input": f"{raw}:/entry/instrument/detector/data"})
    for name, config in configs.items():
        run_pipeline(name, config, profile=profile)
    print(f"\ndaisy demo: done in {time.perf_counter() - started:.0f} s")
    for name, config in configs.items():
        outdir = yaml.safe_load(config.read_text())["outdir"]
        prov = Path(outdir) / "provenance.json"
        summary = _summary(name, json.loads(prov.read_text())) if prov.exists() else ""
        print(f"  {name:4s} outputs: {outdir}/   provenance: {prov}   {summary}")
    return 0


def _summary(name: str, prov: dict) -> str:
    for key, result in prov.get("results", {}).items():
        if name == "ct" and key.endswith("ct.find_center") and "center" in result:
            return f"(rotation centre {result['center']:.2f} px)"
    return ""
