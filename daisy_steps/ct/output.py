"""Output steps: save a reconstructed slab, gather slabs into one virtual volume (HDF5 VDS,
NXdata) with an optional TIFF stack and PNG previews, and a PNG of one sinogram.

Only numpy, h5py, hdf5plugin, tifffile and zlib: these run in the base image too (ct.gather
not in the pyfai image, which has no tifffile).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from pathlib import Path

import h5py
import numpy as np

from ..core import Step, now
from ..errors import StepError
from ..h5 import compression_options, get_dataset, nx_group, open_file
from ..nxprocess import own_process, processes, read_records, write_processes
from ..png import to_uint8, write_png
from ..ports import Port

SLAB_DATASET = "/entry/recon/data"
VOLUME_DATASET = "/entry/data/data"
CHUNK_BYTES = 4 << 20


#: what an OSError's errno, or the text HDF5 puts in its message, means for the person running the job
_OS_REASONS = ((errno.ENOSPC, "No space left on device", "no space left on the device"),
               (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded"),
               (errno.EROFS, "Read-only file system", "the file system is read-only"),
               (errno.EACCES, "Permission denied", "permission denied"))


def os_reason(exc: OSError) -> str:
    """An OSError as a short reason (h5py's write errors carry no errno, only HDF5's text)."""
    text = str(exc)
    for number, words, reason in _OS_REASONS:
        if exc.errno == number or words.lower() in text.lower():
            return reason
    return exc.strerror or " ".join(text.split())[:300]


@contextlib.contextmanager
def writing(step: str, path):
    """Turn an OSError while writing output ``path`` (its final name) into a StepError naming the
    file and the reason (disk full, read-only, ...); the runner then removes every temporary."""
    try:
        yield
    except OSError as exc:
        raise StepError(f"{step}: cannot write {path}: {os_reason(exc)}") from None


#: room for HDF5's metadata beyond an output's data when deciding how to write it
METADATA_BYTES = 4 << 20


def free_bytes(folder) -> int:
    """Bytes free for this user in ``folder``'s file system (huge if it cannot be told)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def hdf5_output(step: str, final, temporary, estimate: int, **kwargs):
    """An HDF5 output to fill (yields the open ``h5py.File``); a failed write is a StepError
    naming ``final`` and the reason (:func:`writing`).

    HDF5 cannot recover from a full disk: h5py keeps the file open, retries the flush when the
    interpreter exits and may crash, burying the job's one line under tracebacks. So when the
    file system has less room than ``estimate`` (the uncompressed data) plus metadata, the file
    is built in memory (HDF5's core driver) and written with plain file I/O, which fails
    cleanly; a compressed output that does fit is still written. With room to spare, HDF5
    writes the file directly (no copy in memory)."""
    temporary = Path(temporary)
    with writing(step, final):
        if free_bytes(temporary.parent) >= estimate + METADATA_BYTES:
            with h5py.File(temporary, "w", **kwargs) as handle:
                yield handle
            return
        with h5py.File(f"{temporary}.core", "w", driver="core", backing_store=False, **kwargs) as handle:
            yield handle
            handle.flush()
            image = handle.id.get_file_image()
        with open(temporary, "wb") as out:
            out.write(image)


def open_part(step: str, ctx, slot: str, rows, file_rows, nbytes: int) -> tuple[h5py.File, bool]:
    """The temporary file of output ``slot`` opened for one part of it, detector rows ``rows``
    of the file's ``file_rows`` (a job of several slabs): created by the part that starts the
    file, opened for writing by the others, which follow it in the same job. Refused, naming the
    file, when the rows are not the file's or the disk has no room for the part's ``nbytes``
    (HDF5 cannot recover from a full disk mid-file). Returns (file, whether it was created)."""
    final = ctx.final_output(slot).path
    if not file_rows[0] <= rows[0] < rows[1] <= file_rows[1]:
        raise StepError(f"{step}: rows {rows[0]}:{rows[1]} are not rows of {final} "
                        f"(file_rows {file_rows[0]}:{file_rows[1]})")
    path = ctx.output(slot).path
    free = free_bytes(path.parent)
    if free < nbytes + METADATA_BYTES:
        raise StepError(f"{step}: cannot write {final}: no space left on the device (rows {rows[0]}:{rows[1]} "
                        f"need {(nbytes + METADATA_BYTES) >> 20} MiB, {free >> 20} MiB free)")
    first = rows[0] == file_rows[0]
    with writing(step, final):
        return h5py.File(path, "w" if first else "r+", track_order=False), first


def slice_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of one slice along the first axis (whole slice up to 4 MiB, else row bands)."""
    _, ny, nx = shape
    rows = max(1, min(ny, CHUNK_BYTES // max(1, nx * itemsize)))
    return (1, rows, nx)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def slab_dataset(handle, dataset: str, shape, dtype, compression: str, gzip_level: int, data=None):
    """The NXdata of a slab file (``/entry/recon/data`` unless ``dataset`` names another): one
    slice per chunk, compressed; filled with ``data`` if given, else written later (ct.recon
    writes its blocks as they are done)."""
    handle.attrs["default"] = "entry"
    entry = nx_group(handle, "/entry", "NXentry")
    group = nx_group(handle, dataset.rsplit("/", 1)[0] or "/", "NXdata")
    group.attrs["signal"] = dataset.rsplit("/", 1)[1]
    entry.attrs["default"] = group.name.rsplit("/", 1)[1]
    return group.create_dataset(dataset.rsplit("/", 1)[1], shape=tuple(shape), dtype=dtype, data=data,
                                chunks=slice_chunks(tuple(shape), np.dtype(dtype).itemsize), track_times=False,
                                **compression_options(compression, gzip_level))


def slab_attributes(dset, rows, detector_rows: int, info: dict) -> None:
    """``row_offset`` (the slab's first detector row), ``detector_rows`` and the reconstruction settings."""
    dset.attrs["row_offset"] = int(rows[0])
    dset.attrs["detector_rows"] = int(detector_rows)
    for key, value in info.items():
        if value is not None:
            dset.attrs[key] = value


def write_slab(step: str, ctx, data: np.ndarray, rows, detector_rows: int, info: dict, compression: str,
               gzip_level: int) -> None:
    """The slab file of output slot ``slab``, written whole (the full-disk fallback of
    :func:`hdf5_output` applies)."""
    ref = ctx.output("slab")
    with hdf5_output(step, ctx.final_output("slab").path, ref.path, data.nbytes, track_order=False) as handle:
        dset = slab_dataset(handle, ref.dataset or SLAB_DATASET, data.shape, data.dtype, compression, gzip_level,
                            data=data)
        slab_attributes(dset, rows, detector_rows, info)


class SaveSlab(Step):
    """Write the reconstructed slab (``recon``) to HDF5 with its first detector row as attribute
    ``row_offset``; chunked by slice, compressed. Output slot ``slab`` (dataset
    ``/entry/recon/data`` unless the slot names one)."""

    name = "ct.save_slab"
    version = "1.0.0"
    images = ("tomopy", "base", "pyfai")  # numpy, h5py, hdf5plugin
    libraries = ("numpy", "h5py", "hdf5plugin")
    requires = {"{key}": Port("ndarray", "the 3D slab to write, under the key named by parameter 'key'"),
                "rows": Port("tuple", "(start, stop): its first detector row becomes row_offset "
                                      "(default 0)", optional=True),
                "detector_rows": Port("int", "the detector's total row count, saved as an attribute",
                                      optional=True),
                "recon_info": Port("dict", "reconstruction settings, saved as attributes", optional=True)}
    provides: dict[str, Port] = {}

    def execute(self) -> None:
        p = self.params
        data = np.asarray(self.store.require(p["key"]))
        if data.ndim != 3:
            raise StepError(f"{self.name}: '{p['key']}' has shape {data.shape}, not a 3D slab")
        rows = self.store.get("rows", (0, data.shape[0]))
        info = self.store.get("recon_info", {})
        write_slab(self.name, self.ctx, data, rows, int(self.store.get("detector_rows", rows[1])), info,
                   p["compression"], p["gzip_level"])
        self.ctx.results.update(row_offset=int(rows[0]), shape=list(data.shape), peak_rss_mib=peak_rss_mib())


STAGE_DATASET = "/entry/data/data"
#: save.stages name -> (the stage its values are at, what made them)
SAVED_STAGES = {"normalized": ("normalized", "ct.normalize"), "attenuation": ("attenuation", "ct.minus_log"),
                "destriped": ("attenuation", "ct.stripe")}


class SaveStage(Step):
    """Write the projections in the store (``proj``) at an intermediate stage as one slab of a
    stage file, in sinogram order (rows, angles, columns) so that slabs stack along the first
    axis like the volume's; with the angles (``theta``, radians) beside them. Output slot
    ``slab``: NXdata ``/entry/data/data`` with attributes ``row_offset``, ``detector_rows``,
    ``daisy_stage`` (normalized or attenuation: what a later run's input.stage reads),
    ``saved_stage`` and ``stripe_removed``; ``/entry/data/rotation_angle`` (rad). ct.gather
    joins the slabs into one file that ct.load_processed reads (layout ``stage``). With
    ``file_rows`` the slab is one part of the file (a job of several slabs)."""

    name = "ct.save_stage"
    version = "1.1.0"
    images = ("tomopy", "base", "pyfai")  # numpy, h5py, hdf5plugin
    libraries = ("numpy", "h5py", "hdf5plugin")
    requires = {"proj": Port("ndarray", "projections (angles, rows, columns) float32 at the stage saved"),
                "theta": Port("ndarray", "rotation angles, radians (ct.angles)"),
                "rows": Port("tuple", "(start, stop): its first detector row becomes row_offset", optional=True),
                "detector_rows": Port("int", "the detector's total row count", optional=True)}
    provides: dict[str, Port] = {}

    def execute(self) -> None:
        p = self.params
        proj = self.store.require("proj")
        theta = np.asarray(self.store.require("theta"), dtype=np.float32)
        if proj.ndim != 3 or theta.size != proj.shape[0]:
            raise StepError(f"{self.name}: projections {proj.shape} and {theta.size} angles do not fit")
        stage, made_by = SAVED_STAGES[p["stage"]]
        sino = np.ascontiguousarray(proj.transpose(1, 0, 2))
        rows = tuple(self.store.get("rows", (0, sino.shape[0])))
        ref = self.ctx.output("slab")
        final = self.ctx.final_output("slab").path
        file_rows = p["file_rows"]
        if file_rows is None:
            output = hdf5_output(self.name, final, ref.path, sino.nbytes, track_order=False)
        else:                            # one slab of a job's file
            output = contextlib.closing(open_part(self.name, self.ctx, "slab", rows, file_rows, sino.nbytes)[0])
        with output as handle, writing(self.name, final):
            if "/entry/data/data" in handle:    # a later part: its rows only
                dset = handle["/entry/data/data"]
                offset = rows[0] - file_rows[0]
                if dset.shape[1:] != sino.shape[1:]:
                    raise StepError(f"{self.name}: projections {sino.shape[1:]} do not fit {final}'s {dset.shape[1:]}")
                dset[offset:offset + sino.shape[0]] = sino
                self.ctx.results.update(stage=p["stage"], row_offset=int(rows[0]), shape=list(sino.shape))
                return
            handle.attrs["default"] = "entry"
            entry = nx_group(handle, "/entry", "NXentry")
            group = nx_group(handle, "/entry/data", "NXdata")
            entry.attrs["default"] = "data"
            write_stage_axes(group, theta)
            whole = file_rows is None
            shape = sino.shape if whole else (file_rows[1] - file_rows[0], *sino.shape[1:])
            dset = group.create_dataset("data", shape=shape, dtype=sino.dtype, data=sino if whole else None,
                                        chunks=slice_chunks(shape, sino.dtype.itemsize), track_times=False,
                                        **compression_options(p["compression"], p["gzip_level"]))
            if not whole:
                dset[:sino.shape[0]] = sino
            rows = file_rows or rows
            dset.attrs["row_offset"] = int(rows[0])
            dset.attrs["detector_rows"] = int(self.store.get("detector_rows", rows[1]))
            dset.attrs["daisy_stage"] = stage
            dset.attrs["saved_stage"] = p["stage"]
            dset.attrs["made_by"] = made_by
            dset.attrs["stripe_removed"] = p["stripe_method"] if p["stage"] == "destriped" else "none"
            dset.attrs["units"] = "1"
            dset.attrs["long_name"] = {"normalized": "transmission (flat-field corrected)",
                                       "attenuation": "attenuation -log(transmission)"}[stage]
            if p["source_provenance"]:
                dset.attrs["provenance"] = p["source_provenance"]
        self.ctx.results.update(stage=p["stage"], row_offset=int(rows[0]), shape=list(sino.shape))


def write_stage_axes(group: h5py.Group, theta: np.ndarray) -> None:
    """NXdata axes of a stage file: (detector row, rotation_angle, detector column)."""
    group.attrs["signal"] = "data"
    group.attrs["axes"] = np.array([".", "rotation_angle", "."], dtype=h5py.string_dtype())
    group.attrs["rotation_angle_indices"] = 1
    angle = group.create_dataset("rotation_angle", data=np.asarray(theta, dtype=np.float32), track_times=False)
    angle.attrs["units"] = "rad"
    angle.attrs["long_name"] = "rotation angle"


def _slab_inputs(ctx, dataset: str) -> list[dict]:
    """The slab files of a gather job (input slots named ``slab*``), ordered by row offset."""
    names = ctx.input_slots()
    slots = sorted(s for s in names if s.startswith("slab"))
    if not slots:
        raise StepError("ct.gather: no slab inputs (input slots named slab_0000, slab_0001, ...)")
    slabs = []
    for slot in slots:
        ref = ctx.input(slot)
        name = ctx.input_name(slot).path if hasattr(ctx, "input_name") else ref.path   # the final name
        path = ref.dataset or dataset
        with open_file(ref.path) as handle:
            dset = get_dataset(handle, path, ref.path)
            if dset.ndim != 3:
                raise StepError(f"{ref.path}: slab {path} has shape {dset.shape}, not 3D")
            if "row_offset" not in dset.attrs:
                raise StepError(f"{ref.path}: slab {path} has no 'row_offset' attribute (write it with ct.save_slab)")
            attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dset.attrs.items()}
            slabs.append({"slot": slot, "path": ref.path, "name": name, "dataset": path, "shape": dset.shape,
                          "dtype": dset.dtype, "offset": int(dset.attrs["row_offset"]), "attrs": attrs})
    slabs.sort(key=lambda s: s["offset"])
    first = slabs[0]
    pos = first["offset"]
    for slab in slabs:
        if slab["shape"][1:] != first["shape"][1:] or slab["dtype"] != first["dtype"]:
            raise StepError(f"ct.gather: slab {slab['name']} has slices {slab['shape'][1:]} {slab['dtype']} but "
                            f"{first['name']} has {first['shape'][1:]} {first['dtype']}")
        if slab["offset"] != pos:
            what = "gap" if slab["offset"] > pos else "overlap"
            raise StepError(f"ct.gather: {what} before slab {slab['name']}: it starts at row {slab['offset']}, "
                            f"the slabs before it end at row {pos}")
        pos += slab["shape"][0]
    return slabs


def _virtual_dataset(group: h5py.Group, name: str, shape, dtype, mapping) -> h5py.Dataset:
    """A virtual dataset stacking slab datasets along axis 0, built with the low-level API so
    that it carries no time stamp (h5py's create_virtual_dataset keeps HDF5's default,
    track_times on, in some versions, which makes the file differ from run to run)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dcpl.set_fill_value(np.array(np.nan, dtype=dtype))
    for pos, rel, slab in mapping:
        vspace = h5py.h5s.create_simple(tuple(shape))
        vspace.select_hyperslab((pos, 0, 0), tuple(slab["shape"]))
        dcpl.set_virtual(vspace, rel.encode(), slab["dataset"].encode(), h5py.h5s.create_simple(tuple(slab["shape"])))
    h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype)), h5py.h5s.create_simple(tuple(shape)),
                    dcpl=dcpl).close()
    return group[name]


class Gather(Step):
    """Join slab files into one volume without copying: an HDF5 virtual dataset (NXdata) whose
    sources are the slab files by *relative* path, so the folder can be moved. Optionally a
    multi-page TIFF and PNG previews of the three central orthogonal slices. The volume carries
    one NeXus NXprocess per step that made it (``/entry/process_NN_<step>``), from the records
    of the jobs that made the slabs, and one for itself (``daisy_steps.nxprocess``).

    Inputs ``slab*`` and ``record_<job>`` (the records of the centre and slab jobs; optional);
    outputs ``volume`` (required), ``tiff``, ``preview_xy``, ``preview_xz``, ``preview_yz``
    (optional). Reads one slice at a time (memory: one slab slice)."""

    name = "ct.gather"
    version = "1.0.0"
    images = ("base", "tomopy")  # numpy, h5py, tifffile (not in the pyfai image)
    libraries = ("numpy", "h5py", "tifffile")
    requires: dict[str, Port] = {}
    provides: dict[str, Port] = {}

    def execute(self) -> None:
        p = self.params
        started = now()
        made_by = processes(read_records(self.ctx))  # read before anything is written
        slabs = _slab_inputs(self.ctx, p["dataset"])
        nz = sum(s["shape"][0] for s in slabs)
        ny, nx = slabs[0]["shape"][1:]
        dtype = slabs[0]["dtype"]
        final = self.ctx.final_output("volume")
        ref = self.ctx.output("volume")
        dataset = ref.dataset or VOLUME_DATASET
        mapping = []
        pos = 0
        for slab in slabs:
            rel = os.path.relpath(Path(slab["name"]).resolve(), final.path.resolve().parent)
            mapping.append((pos, rel, slab))
            pos += slab["shape"][0]
        sources = [rel for _, rel, _ in mapping]
        with hdf5_output(self.name, final.path, ref.path, 1 << 20) as handle:
            handle.attrs["default"] = "entry"
            entry = nx_group(handle, "/entry", "NXentry")
            group = nx_group(handle, dataset.rsplit("/", 1)[0] or "/", "NXdata")
            name = dataset.rsplit("/", 1)[1]
            group.attrs["signal"] = name
            group.attrs["axes"] = np.array([".", ".", "."], dtype=h5py.string_dtype())
            entry.attrs["default"] = group.name.rsplit("/", 1)[1]
            dset = _virtual_dataset(group, name, (nz, ny, nx), dtype, mapping)
            for key, value in slabs[0]["attrs"].items():
                if key not in ("row_offset",):
                    dset.attrs[key] = value
            if "daisy_stage" in slabs[0]["attrs"]:      # a stage file: its angles and axes too
                with open_file(slabs[0]["path"]) as first:
                    theta = first[slabs[0]["dataset"].rsplit("/", 1)[0] + "/rotation_angle"][()]
                write_stage_axes(group, theta)
            dset.attrs["row_offset"] = slabs[0]["offset"]
            dset.attrs["slab_files"] = np.array(sources, dtype=h5py.string_dtype())
            dset.attrs["slab_row_offsets"] = np.array([s["offset"] for s in slabs], dtype=np.int64)
            write_processes(entry, made_by, own_process(self, started))
        with writing(self.name, f"the TIFF or previews beside {final.path}"):
            self._extras(slabs, (nz, ny, nx))
        self.ctx.results.update(shape=[nz, ny, nx], slabs=len(slabs), slab_files=sources,
                              row_offset=slabs[0]["offset"])

    def _slices(self, slabs):
        """Every slice of the volume in order, read from the slab files one at a time."""
        for slab in slabs:
            with h5py.File(slab["path"], "r") as handle:
                dset = handle[slab["dataset"]]
                for z in range(dset.shape[0]):
                    yield dset[z]

    def _extras(self, slabs, shape) -> None:
        p = self.params
        nz, ny, nx = shape
        if self.ctx.has_output("tiff"):
            import tifffile

            itemsize = np.dtype(slabs[0]["dtype"]).itemsize
            big = nz * ny * nx * itemsize > 2**31
            with tifffile.TiffWriter(self.ctx.output("tiff").path, bigtiff=big) as tif:
                for image in self._slices(slabs):
                    tif.write(image, contiguous=True, photometric="minisblack")
        wanted = [s for s in ("preview_xy", "preview_xz", "preview_yz") if self.ctx.has_output(s)]
        if not wanted:
            return
        xy = xz = yz = None
        z_mid, y_mid, x_mid = nz // 2, ny // 2, nx // 2
        xz = np.empty((nz, nx), dtype=np.float32)
        yz = np.empty((nz, ny), dtype=np.float32)
        for z, image in enumerate(self._slices(slabs)):
            if z == z_mid:
                xy = np.array(image, dtype=np.float32)
            xz[z] = image[y_mid, :]
            yz[z] = image[:, x_mid]
        images = {"preview_xy": xy, "preview_xz": xz, "preview_yz": yz}
        for slot in wanted:
            write_png(self.ctx.output(slot).path, to_uint8(images[slot], p["preview_low"], p["preview_high"]))


class PreviewSinogram(Step):
    """PNG of one sinogram (angles x columns) of ``proj`` at detector row ``row``. Output slot ``png``."""

    name = "ct.preview_sinogram"
    version = "1.0.0"
    images = ("tomopy", "base", "pyfai")  # numpy and zlib
    libraries = ("numpy",)
    requires = {"{key}": Port("ndarray", "projections (angles, rows, columns), under the key named by "
                                         "parameter 'key'"),
                "rows": Port("tuple", "(start, stop): the detector rows held (default: all)", optional=True)}
    provides: dict[str, Port] = {}

    def execute(self) -> None:
        p = self.params
        proj = self.store.require(p["key"])
        r0, r1 = self.store.get("rows", (0, proj.shape[1]))
        row = (r0 + r1) // 2 if p["row"] is None else p["row"]
        if not r0 <= row < r1:
            raise StepError(f"{self.name}: row {row} is not among the loaded detector rows {r0}:{r1}")
        with writing(self.name, self.ctx.final_output("png").path):
            write_png(self.ctx.output("png").path, to_uint8(np.asarray(proj[:, row - r0, :]), p["low"], p["high"]))
        self.ctx.results.update(row=row, key=p["key"])
