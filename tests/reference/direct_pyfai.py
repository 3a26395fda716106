#!/usr/bin/env python3
"""Direct pyFAI integration of a scan, without DAISY: the reference for tests and benchmarks.

Reads frames with plain h5py (an Eiger master's /entry/data/data_NNNNNN links, or one dataset),
takes the mask from the master's pixel_mask (nonzero = bad), builds the integrator from a PONI
file or Fit2D parameters and calls ``integrate1d`` once per frame. Writes ``.npz`` (radial,
intensity[frames, npt]) and prints one JSON line with the timing.

    python3 tests/reference/direct_pyfai.py scan_00001_master.h5 --poni scan.poni --npt 1000 --out ref.npz
    python3 tests/reference/direct_pyfai.py scan.h5 --dataset /entry/data/data \\
        --fit2d '{"directDist":169,"centerX":1049.967,"centerY":1063.892,"tilt":0.3753,
                  "tiltPlanRotation":64.66877,"pixelX":75,"pixelY":75}' --wavelength 0.7293
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import h5py
import hdf5plugin  # noqa: F401  (bitshuffle/LZ4 filter)
import numpy as np


def frame_datasets(handle: h5py.File, dataset: str | None):
    """The 3D datasets holding the frames, in order."""
    if dataset:
        return [handle[dataset]]
    names = sorted(n for n in handle["/entry/data"] if n.startswith("data_"))
    return [handle[f"/entry/data/{n}"] for n in names]


def read_frames(path: str, dataset: str | None = None, start: int = 0, stop: int | None = None):
    """Yield the frames ``start:stop`` of a scan, one at a time."""
    with h5py.File(path, "r") as handle:
        offset = 0
        for dset in frame_datasets(handle, dataset):
            n = dset.shape[0]
            for i in range(max(start - offset, 0), n):
                if stop is not None and offset + i >= stop:
                    return
                yield dset[i]
            offset += n


def pixel_mask(path: str) -> np.ndarray | None:
    with h5py.File(path, "r") as handle:
        for where in ("/entry/instrument/detector/pixel_mask",
                      "/entry/instrument/detector/detectorSpecific/pixel_mask"):
            if where in handle:
                return (handle[where][()] != 0).astype(np.uint8)
    return None


def make_integrator(shape, poni: str | None = None, fit2d: dict | None = None, wavelength: float | None = None):
    import pyFAI
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    if poni:
        ai = pyFAI.load(poni)
        if wavelength:
            ai.wavelength = wavelength * 1e-10
        return ai
    det = Detector(pixel1=fit2d["pixelY"] * 1e-6, pixel2=fit2d["pixelX"] * 1e-6, max_shape=tuple(shape))
    ai = AzimuthalIntegrator(detector=det)
    ai.setFit2D(fit2d["directDist"], fit2d["centerX"], fit2d["centerY"], tilt=fit2d.get("tilt", 0.0),
                tiltPlanRotation=fit2d.get("tiltPlanRotation", 0.0), pixelX=fit2d["pixelX"],
                pixelY=fit2d["pixelY"], wavelength=wavelength)
    return ai


def integrate(path: str, *, dataset=None, poni=None, fit2d=None, wavelength=None, npt=1000, unit="2th_deg",
              method=("full", "csr", "cython"), radial_range=None, azimuth_range=None,
              polarization_factor=None, error_model=None, mask="master", start=0, stop=None):
    """Integrate every frame; return (radial, intensity[frames, npt], timing dict)."""
    if isinstance(mask, str) and mask == "master":
        mask = pixel_mask(path)
    clock = time.perf_counter()
    ai = None
    radial, rows, first = None, [], None
    for frame in read_frames(path, dataset, start, stop):
        if ai is None:
            ai = make_integrator(frame.shape, poni, fit2d, wavelength)
        res = ai.integrate1d(frame, npt, unit=unit, method=tuple(method), mask=mask,
                             radial_range=radial_range, azimuth_range=azimuth_range,
                             polarization_factor=polarization_factor, error_model=error_model)
        rows.append(res.intensity)
        if radial is None:
            radial, first = res.radial, time.perf_counter() - clock
    seconds = time.perf_counter() - clock
    n = len(rows)
    timing = {"frames": n, "seconds": round(seconds, 4), "seconds_first_frame": round(first or 0, 4),
              "frames_per_second_after_first": round((n - 1) / (seconds - first), 2) if n > 1 and seconds > first else None}
    return np.asarray(radial), np.asarray(rows), timing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="Eiger master file or HDF5 stack")
    ap.add_argument("--dataset", help="dataset of the frames (default: the master's data_NNNNNN links)")
    ap.add_argument("--poni")
    ap.add_argument("--fit2d", type=json.loads, help="JSON object of Fit2D parameters (mm, pixels, µm, deg)")
    ap.add_argument("--wavelength", type=float, help="wavelength in Å")
    ap.add_argument("--npt", type=int, default=1000)
    ap.add_argument("--unit", default="2th_deg", choices=["2th_deg", "q_nm^-1"])
    ap.add_argument("--method", default="full,csr,cython")
    ap.add_argument("--radial-range", type=float, nargs=2)
    ap.add_argument("--azimuth-range", type=float, nargs=2)
    ap.add_argument("--polarization-factor", type=float)
    ap.add_argument("--no-mask", action="store_true", help="ignore the master's pixel_mask")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--stop", type=int)
    ap.add_argument("--out", help="write radial and intensity to this .npz")
    args = ap.parse_args(argv)
    if not args.poni and not args.fit2d:
        ap.error("give --poni or --fit2d")
    radial, intensity, timing = integrate(
        args.source, dataset=args.dataset, poni=args.poni, fit2d=args.fit2d, wavelength=args.wavelength,
        npt=args.npt, unit=args.unit, method=args.method.split(","), radial_range=args.radial_range,
        azimuth_range=args.azimuth_range, polarization_factor=args.polarization_factor,
        mask=None if args.no_mask else "master", start=args.start, stop=args.stop)
    if args.out:
        np.savez(args.out, radial=radial, intensity=intensity)
    print(json.dumps(timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
