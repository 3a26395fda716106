#!/usr/bin/env python3
"""A plain tomopy script doing what the DAISY CT slab jobs do, in one process, on the whole scan.

It is the reference for the test "the pipeline's volume is bit-identical to a direct tomopy
script in the same image" and the baseline of the benchmark. It uses only h5py, numpy and tomopy
(not daisy_steps): read the raw file, flat/dark normalize with the same guard, minus-log,
optional stripe removal, reconstruct, optional circular mask, write the float32 volume.

    python3 tests/reference/direct_tomopy.py raw.h5 volume.h5 --center 49.5 [--algorithm gridrec] ...

Prints a JSON line with the time of each phase (seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import h5py
import numpy as np
import tomopy

try:
    import hdf5plugin  # noqa: F401  (compressed raw files)
except ImportError:
    pass

LAYOUTS = {  # projections, flats, darks, angles (degrees unless units say radians)
    "nxtomo": ("/entry/instrument/detector/data", None, None, "/entry/sample/rotation_angle"),
    "dxchange": ("/exchange/data", "/exchange/data_white", "/exchange/data_dark", "/exchange/theta"),
    "daisy": ("/entry/tomo", "/entry/flat", "/entry/dark", "/entry/angles"),
}


def read_raw(path, rows=None):
    with h5py.File(path, "r") as f:
        layout = next(name for name, paths in LAYOUTS.items() if paths[0] in f)
        data_path, flat_path, dark_path, angle_path = LAYOUTS[layout]
        r0, r1 = rows or (0, f[data_path].shape[1])
        if layout == "nxtomo":
            keys = f["/entry/instrument/detector/image_key"][()]
            data = f[data_path]
            proj, flat, dark = (data[np.flatnonzero(keys == k), r0:r1, :] for k in (0, 1, 2))
        else:
            proj, flat, dark = (f[p][:, r0:r1, :] for p in (data_path, flat_path, dark_path))
        theta = None
        if angle_path in f:
            angles = f[angle_path][()].astype(np.float64)
            if layout == "nxtomo":
                angles = angles[keys == 0]
            units = f[angle_path].attrs.get("units", "deg")
            units = units.decode() if isinstance(units, bytes) else str(units)
            theta = (angles if units.lower() in ("rad", "radian", "radians") else np.deg2rad(angles)).astype(np.float32)
    return proj, flat, dark, theta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw")
    ap.add_argument("out")
    ap.add_argument("--center", required=True, help="rotation centre (number) or a ct.find_center JSON file")
    ap.add_argument("--algorithm", default="gridrec", choices=["gridrec", "fbp", "sirt", "mlem"])
    ap.add_argument("--filter", default="parzen")
    ap.add_argument("--num-iter", type=int, default=50)
    ap.add_argument("--stripe", default="none", choices=["none", "fw", "ti", "sf"])
    ap.add_argument("--circ-mask", type=float, default=None)
    ap.add_argument("--rows", type=int, nargs=2, default=None, help="detector rows start stop")
    ap.add_argument("--angles", type=float, nargs=2, default=None,
                    help="start end degrees (end excluded unless --endpoint) instead of the file's angles")
    ap.add_argument("--endpoint", action="store_true", help="include the end angle (as tomopy.angles)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    ncore = args.threads
    try:
        center = float(args.center)
    except ValueError:
        with open(args.center) as handle:
            center = float(json.load(handle)["center"])

    t = {"start": time.perf_counter()}
    proj, flat, dark, theta = read_raw(args.raw, args.rows)
    if args.angles is not None:
        theta = np.linspace(np.deg2rad(args.angles[0]), np.deg2rad(args.angles[1]), proj.shape[0],
                            endpoint=args.endpoint).astype(np.float32)
    t["read"] = time.perf_counter()

    # normalize; guard: dead pixels (mean flat - mean dark < 1e-6) -> 1, non-finite -> 1, < 1e-6 -> 1e-6
    proj = tomopy.normalize(proj, flat, dark, ncore=ncore)
    denom = np.mean(flat, axis=0, dtype=np.float32) - np.mean(dark, axis=0, dtype=np.float32)
    proj[:, ~(denom >= np.float32(1e-6))] = np.float32(1.0)
    proj[~np.isfinite(proj)] = np.float32(1.0)
    proj[proj < np.float32(1e-6)] = np.float32(1e-6)
    del flat, dark
    proj = tomopy.minus_log(proj, ncore=ncore, out=proj)
    if args.stripe == "fw":
        level = int(np.ceil(np.log2(max(proj.shape[0], proj.shape[2]))))  # sinogram size, as ct.stripe
        proj = tomopy.remove_stripe_fw(proj, level=level, wname="db5", sigma=2, pad=True, ncore=ncore)
    elif args.stripe == "ti":
        proj = tomopy.remove_stripe_ti(proj, nblock=0, alpha=1.5, ncore=ncore)
    elif args.stripe == "sf":
        proj = tomopy.remove_stripe_sf(proj, size=5, ncore=ncore)
    t["prep"] = time.perf_counter()

    if args.algorithm == "mlem":  # as ct.recon's clip_negative 'auto'
        np.maximum(proj, np.float32(0), out=proj)
    # gridrec reconstructs slices in pairs: give each thread an even number of slices
    per_thread = math.ceil(proj.shape[1] / ncore)
    kwargs = ({"filter_name": args.filter} if args.algorithm in ("gridrec", "fbp") else {"num_iter": args.num_iter})
    rec = tomopy.recon(proj, theta, center=center, algorithm=args.algorithm, ncore=ncore,
                       nchunk=max(2, per_thread + per_thread % 2), **kwargs)
    if args.algorithm == "gridrec":
        # tomopy 1.15.2 gridrec reads one float past its correction table when the columns are a
        # power of two >= 16: these two lines are uninitialised memory; blank them (as DAISY does)
        n = rec.shape[-1]
        if n >= 16 and n & (n - 1) == 0:
            rec[:, 0, :] = 0
            rec[:, :, -1] = 0
    if args.circ_mask is not None:
        rec = tomopy.circ_mask(rec, axis=0, ratio=args.circ_mask, val=0.0, ncore=ncore)
    rec = np.asarray(rec, dtype=np.float32)
    t["recon"] = time.perf_counter()

    with h5py.File(args.out, "w") as handle:
        handle.create_dataset("/entry/data/data", data=rec, chunks=(1,) + rec.shape[1:], track_times=False)
    t["write"] = time.perf_counter()
    names = ["read", "prep", "recon", "write"]
    times = {n: round(t[n] - t[p], 4) for p, n in zip(["start"] + names, names)}
    print(json.dumps({"shape": list(rec.shape), "center": center, "seconds": times,
                      "total": round(t["write"] - t["start"], 4)}))


if __name__ == "__main__":
    main()
