"""ct.split_rows: read a raw scan once and hand each slab job its own rows.

Detector files keep one frame per chunk, so a job that reads a band of detector rows reads every
frame whole: N slab jobs would read the scan N times. This step streams the frames once, a
block of whole frames at a time, and writes each slab's rows (with the flats, darks and angles)
to a small raw file of the daisy layout that ct.load reads like the original, with the same
detector-row numbers (attributes ``row_offset``, ``detector_rows`` and ``rows_of`` on
``/entry/tomo``). The rows keep their type, uncompressed: half the bytes of float32 and no
decompression when the slab job reads them.
"""
from __future__ import annotations

import numpy as np

from ..core import Step
from ..errors import StepError
from ..ports import Port
from .layouts import (KEY_DARK, KEY_FLAT, KEY_PROJECTION, READ_BLOCK_BYTES, _field_stacks,
                      _image_key_selection, _read_angles, get_dataset, resolve_paths)
from .output import free_bytes, writing

PART_METADATA_BYTES = 64 << 10


class SplitRows(Step):
    """Raw file (input slot ``raw``) -> one daisy-layout raw file per output slot, holding the
    detector rows ``parts[slot]``; every frame is read once."""

    name = "ct.split_rows"
    version = "1.0.0"
    images = ("tomopy", "base", "pyfai")  # numpy, h5py, hdf5plugin
    libraries = ("numpy", "h5py", "hdf5plugin")
    requires: dict[str, Port] = {}
    provides: dict[str, Port] = {}

    def execute(self) -> None:
        import h5py

        from ..h5 import open_file

        p = self.params
        ref = self.ctx.input("raw")
        params = {k: p[k] for k in ("layout", "entry", "data_path", "flat_path", "dark_path", "image_key_path",
                                    "angles_path", "angle_units")}
        if ref.dataset and not params["data_path"]:
            params["data_path"] = ref.dataset
        label = str(ref.path)
        with open_file(ref.path) as handle:
            paths = resolve_paths(handle, params, label, stage="raw")
            data = get_dataset(handle, paths.data, label)
            frames, rows, cols = data.shape
            parts = {slot: tuple(bounds) for slot, bounds in p["parts"].items()}
            for slot, (r0, r1) in parts.items():
                if not 0 <= r0 < r1 <= rows:
                    raise StepError(f"{self.name}: part {slot} rows {r0}:{r1} are outside the {rows} detector "
                                    f"rows of {label}:{paths.data}")
                self.ctx.output(slot)                                # every part must be a declared output
            kind, fields = self._frame_kinds(handle, paths, label, data)
            theta = None
            if paths.angles in handle or paths.angles_required:
                theta, _ = _read_angles(handle, paths.angles, label, params["angle_units"])
                if paths.layout == "nxtomo":
                    theta = theta[kind == KEY_PROJECTION] if theta.size == frames else theta
            counts = {k: int(np.count_nonzero(kind == k)) for k in (KEY_PROJECTION, KEY_FLAT, KEY_DARK)}
            for key, stack in fields.items():                        # a 2D flat or dark is one frame
                counts[key] += stack.shape[0] if stack.ndim == 3 else 1
            names = {KEY_PROJECTION: "tomo", KEY_FLAT: "flat", KEY_DARK: "dark"}
            per_frame = rows * cols * data.dtype.itemsize
            step = p["frames_per_read"] or max(1, READ_BLOCK_BYTES // per_frame)
            first = self.ctx.final_output(next(iter(parts))).path
            needed = sum((r1 - r0) for r0, r1 in parts.values()) * cols * data.dtype.itemsize * sum(counts.values()) \
                + PART_METADATA_BYTES * len(parts)
            free = free_bytes(self.ctx.output(next(iter(parts))).path.parent)
            if free < needed:                  # refused before writing: HDF5 does not recover from a full disk
                raise StepError(f"{self.name}: cannot write {first} and the other row files: no space left on the "
                                f"device ({needed / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free)")
            buffer = np.empty((min(step, frames), rows, cols), dtype=data.dtype)
            files, written = {}, sum(s.size * s.dtype.itemsize for s in fields.values())
            with writing(self.name, first):          # an OSError names the file and the reason
                try:
                    for slot, (r0, r1) in parts.items():
                        out = h5py.File(self.ctx.output(slot).path, "w")
                        files[slot] = out
                        for key, name in names.items():
                            out.create_dataset(f"/entry/{name}", shape=(counts[key], r1 - r0, cols), dtype=data.dtype)
                        tomo = out["/entry/tomo"]
                        tomo.attrs.update(row_offset=r0, detector_rows=rows, rows_of=label, source_dataset=paths.data,
                                          source_layout=paths.layout)
                        if theta is not None:
                            out.create_dataset("/entry/angles", data=theta).attrs["units"] = "rad"
                    position = {k: 0 for k in names}
                    for key, stack in fields.items():                    # separate flat / dark datasets (small)
                        values = np.asarray(stack[()])
                        values = values[np.newaxis] if values.ndim == 2 else values
                        for slot, (r0, r1) in parts.items():
                            files[slot][f"/entry/{names[key]}"][:values.shape[0]] = values[:, r0:r1]
                        position[key] = values.shape[0]
                    for f0 in range(0, frames, step):
                        n = min(step, frames - f0)
                        data.read_direct(buffer, np.s_[f0:f0 + n], np.s_[0:n])
                        block_kind = kind[f0:f0 + n]
                        for key in names:
                            take = np.flatnonzero(block_kind == key)
                            if take.size == 0:
                                continue
                            frames_of = buffer[take] if take.size != n else buffer[:n]
                            at = position[key]
                            for slot, (r0, r1) in parts.items():
                                files[slot][f"/entry/{names[key]}"][at:at + take.size] = frames_of[:, r0:r1]
                            position[key] += take.size
                        written += n * per_frame
                finally:
                    for out in files.values():
                        out.close()
        row_bytes = sum((r1 - r0) for r0, r1 in parts.values()) * cols * data.dtype.itemsize
        self.ctx.results.update(bytes_read=int(written),
                                bytes_written=int(row_bytes * sum(counts.values())), frames=int(frames),
                                parts=len(parts), layout=paths.layout)
        self.log.info("%s: %d frames read once into %d parts", label, frames, len(parts))

    @staticmethod
    def _frame_kinds(handle, paths, label, data) -> tuple[np.ndarray, dict]:
        """Per frame of ``data``: projection, flat or dark (nxtomo: its image key; else all
        projections) and the separate flat/dark datasets (dxchange, daisy)."""
        if paths.layout == "nxtomo":
            sel = _image_key_selection(handle, paths, label, data)
            kind = np.full(data.shape[0], -1, dtype=np.int64)
            for key in (KEY_PROJECTION, KEY_FLAT, KEY_DARK):
                kind[sel[key]] = key
            return kind, {}
        stacks = _field_stacks(handle, paths, label, data)
        return np.full(data.shape[0], KEY_PROJECTION), {KEY_FLAT: stacks["flat fields"], KEY_DARK: stacks["dark fields"]}
