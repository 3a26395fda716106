"""Raw tomography file layouts: where projections, flats, darks and angles live, and slab reads.

Three layouts are known (``LAYOUTS``): NeXus NXtomo (one frame stack with an ``image_key``),
Data Exchange (``/exchange``) and the original DAISY design (``/entry/tomo``). An NXtomo entry
is found the way NeXus defines it, by its attributes, wherever it is: a group of ``NX_class``
NXentry (or an NXsubentry in one) whose ``definition`` is NXtomo; inside it, the detector and
sample groups are found by their ``NX_class`` (NXdetector, NXsample, NXdata), not by name. A
file with several NXtomo entries needs ``entry`` to pick one. Only the requested detector rows
are read (h5py hyperslabs), so a slab job holds only its slab.

:func:`resolve_paths` also checks what the file's metadata can tell before any frame is read
(datasets present, 3D, not empty, numeric; flats and darks of the projections' frame shape;
one image key and one angle per frame): the pipeline calls it when it plans a run, so such a
file is refused before any job starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import StepError
from ..h5 import get_dataset
from .chunk_rows import ChunkRows

#: default dataset paths per layout; ``None`` where the layout has no such dataset
LAYOUTS: dict[str, dict[str, str | None]] = {
    "nxtomo": {
        "data": "/entry/instrument/detector/data",
        "image_key": "/entry/instrument/detector/image_key",
        "flat": None, "dark": None,
        "angles": "/entry/sample/rotation_angle",
    },
    "dxchange": {
        "data": "/exchange/data", "flat": "/exchange/data_white", "dark": "/exchange/data_dark",
        "image_key": None, "angles": "/exchange/theta",
    },
    "daisy": {
        "data": "/entry/tomo", "flat": "/entry/flat", "dark": "/entry/dark",
        "image_key": None, "angles": "/entry/angles",
    },
}
DETECT_ORDER = ("nxtomo", "dxchange", "daisy")
#: a DAISY stage file (``save.stages``): sinograms (rows, angles, columns) in NXdata, angles beside
STAGE_DATA = "/entry/data/data"
STAGE_ANGLES = "/entry/data/rotation_angle"
#: attribute of the projection dataset naming the processing stage of its values
STAGE_ATTR = "daisy_stage"
STAGES = ("raw", "normalized", "attenuation")


def _is_stage_file(handle: h5py.File) -> bool:
    obj = handle.get(STAGE_DATA)
    return isinstance(obj, h5py.Dataset) and _text(obj.attrs.get(STAGE_ATTR, "")) in STAGES
#: NXtomo image_key values
KEY_PROJECTION, KEY_FLAT, KEY_DARK = 0, 1, 2
NXTOMO = "NXtomo"


@dataclass
class Paths:
    layout: str
    data: str
    flat: str | None = None
    dark: str | None = None
    image_key: str | None = None
    angles: str | None = None
    angles_required: bool = False
    entry: str | None = None
    notes: list[str] = field(default_factory=list)


# -- NeXus: entries and groups found by their attributes ------------------------------------------

def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return str(value).strip()


def nx_class(obj) -> str:
    """The ``NX_class`` attribute of an HDF5 object ("" if none)."""
    try:
        return _text(obj.attrs.get("NX_class", ""))
    except (OSError, KeyError):
        return ""


def _members(group: h5py.Group):
    """``(name, object)`` of a group's members that can be opened (a broken link is skipped)."""
    for name in sorted(group):
        try:
            obj = group.get(name)
        except (OSError, KeyError):
            continue
        if obj is not None:
            yield name, obj


def _definition(group: h5py.Group) -> str:
    obj = group.get("definition") if "definition" in group else None
    if isinstance(obj, h5py.Dataset):
        try:
            return _text(obj[()])
        except (OSError, TypeError):
            return ""
    return _text(group.attrs.get("definition", ""))


def nxtomo_entries(handle: h5py.File) -> list[str]:
    """Paths of the file's NXtomo entries: top-level groups of NX_class NXentry (or NXsubentry
    groups in one) whose ``definition`` (a field, or an attribute) is NXtomo, in name order."""
    found = []
    for _, obj in _members(handle):
        if not isinstance(obj, h5py.Group) or nx_class(obj) != "NXentry":
            continue
        if _definition(obj).lower() == NXTOMO.lower():
            found.append(obj.name)
        for _, sub in _members(obj):
            if isinstance(sub, h5py.Group) and nx_class(sub) == "NXsubentry" and _definition(sub).lower() == NXTOMO.lower():
                found.append(sub.name)
    return found


def _children(group: h5py.Group, cls: str) -> list[h5py.Group]:
    return [obj for _, obj in _members(group) if isinstance(obj, h5py.Group) and nx_class(obj) == cls]


def _dataset_in(group: h5py.Group | None, name: str) -> str | None:
    if group is not None and isinstance(group.get(name), h5py.Dataset):
        return f"{group.name}/{name}"
    return None


def nxtomo_paths(handle: h5py.File, entry: str) -> dict[str, str | None]:
    """Projection, image-key and angle paths of an NXtomo entry: the NXdetector (in an
    NXinstrument) holding ``data``, its ``image_key`` (else the NXdata group's), the NXsample's
    ``rotation_angle`` (else the NXdata group's); groups found by NX_class, then by the names
    NXtomo uses (instrument/detector, sample, data)."""
    group = handle[entry]
    detectors = [d for inst in _children(group, "NXinstrument") for d in _children(inst, "NXdetector")]
    detectors = [d for d in detectors if isinstance(d.get("data"), h5py.Dataset)]
    detectors.sort(key=lambda d: "image_key" not in d)   # the detector with an image key first
    named = group.get("instrument/detector")
    detector = detectors[0] if detectors else (named if isinstance(named, h5py.Group) else None)
    nxdata = (_children(group, "NXdata") or [None])[0]
    samples = _children(group, "NXsample") or ([group["sample"]] if isinstance(group.get("sample"), h5py.Group) else [])
    data = _dataset_in(detector, "data") or _dataset_in(nxdata, "data") or f"{entry}/instrument/detector/data"
    key = _dataset_in(detector, "image_key") or _dataset_in(nxdata, "image_key") or f"{entry}/instrument/detector/image_key"
    angles = (next((p for s in samples if (p := _dataset_in(s, "rotation_angle"))), None)
              or _dataset_in(nxdata, "rotation_angle") or f"{entry}/sample/rotation_angle")
    return {"data": data, "image_key": key, "angles": angles}


def choose_entry(handle: h5py.File, wanted: str | None, data_path: str | None = None) -> str | None:
    """The NXtomo entry to read: ``wanted`` (a name or path), else the one holding ``data_path``
    (if given), else the only one; a file with several and none chosen is refused, naming them.
    None: the file has no NXtomo entry."""
    entries = nxtomo_entries(handle)
    listing = ", ".join(entries) or "none"
    if wanted:
        path = "/" + wanted.strip("/")
        if path in entries:
            return path
        group = handle.get(path)
        if isinstance(group, h5py.Group) and isinstance(group.get("instrument/detector/data"), h5py.Dataset):
            return path          # an entry without NeXus attributes, laid out as NXtomo
        what = "does not exist" if group is None else "is not an NXtomo entry (NX_class NXentry with definition NXtomo)"
        raise StepError(f"{handle.filename}: entry {path} (field 'entry', config field input.entry) {what}; "
                        f"the file's NXtomo entries: {listing}")
    if data_path and len(entries) > 1:
        holding = [e for e in entries if data_path.startswith(e + "/")]
        if len(holding) == 1:
            return holding[0]
    if len(entries) > 1:
        raise StepError(f"{handle.filename}: {len(entries)} NXtomo entries ({listing}): set 'entry' "
                        f"(config field input.entry) to the one to reconstruct")
    return entries[0] if entries else None


def detect_layout(handle: h5py.File) -> str:
    """NXtomo if the file has an NXtomo entry (by its attributes); else the first layout
    (NXtomo, Data Exchange, DAISY) whose projection dataset exists at its default path."""
    if nxtomo_entries(handle):
        return "nxtomo"
    for name in DETECT_ORDER:
        path = LAYOUTS[name]["data"]
        if path in handle and isinstance(handle[path], h5py.Dataset):
            return name
    tried = ", ".join(f"{LAYOUTS[n]['data']} ({n})" for n in DETECT_ORDER)
    raise StepError(f"{handle.filename}: cannot detect the raw layout: no NXtomo entry (NX_class NXentry with "
                    f"definition NXtomo) and none of {tried} exists; "
                    f"set 'layout' and the dataset paths (data_path, ...) explicitly")


def resolve_paths(handle: h5py.File, params: dict, label: str | None = None, check: bool = True,
                  stage: str = "raw") -> Paths:
    """Dataset paths for this file: the layout's (or the NXtomo entry's) with the ``*_path``
    overrides; with ``check``, the metadata checks of :func:`check_metadata` too. A DAISY stage
    file (``save.stages``: sinogram order, attribute ``daisy_stage``) has layout ``stage``."""
    layout = params["layout"]
    wanted = params.get("entry")
    if layout == "auto" and not wanted and _is_stage_file(handle):
        layout = "stage"
    if layout == "stage":
        paths = Paths(layout="stage", data=params.get("data_path") or STAGE_DATA,
                      angles=params.get("angles_path") or STAGE_ANGLES, angles_required=True)
        if check:
            check_metadata(handle, paths, label or handle.filename, stage)
        return paths
    if layout == "auto":
        named = wanted and ("/" + wanted.strip("/") in handle or nxtomo_entries(handle))
        layout = "nxtomo" if named else detect_layout(handle)
    if wanted and layout != "nxtomo":
        raise StepError(f"{handle.filename}: 'entry' (config field input.entry) applies to layout nxtomo only, "
                        f"not {layout}")
    default = dict(LAYOUTS[layout])
    entry = None
    if layout == "nxtomo":
        entry = choose_entry(handle, wanted, params.get("data_path"))
        if entry is not None:
            default.update(nxtomo_paths(handle, entry))
    paths = Paths(layout=layout, data=params.get("data_path") or default["data"], entry=entry)
    if layout == "nxtomo":
        paths.image_key = params.get("image_key_path") or default["image_key"]
        if params.get("image_key_path") is None and paths.image_key not in handle and "/entry/data/image_key" in handle:
            paths.image_key = "/entry/data/image_key"
        for name in ("flat_path", "dark_path"):
            if params.get(name):
                raise StepError(f"{handle.filename}: '{name}' does not apply to layout nxtomo "
                                f"(flats and darks are frames of {paths.data} chosen by {paths.image_key})")
    else:
        if params.get("image_key_path"):
            raise StepError(f"{handle.filename}: 'image_key_path' applies to layout nxtomo only, not {layout}")
        paths.flat = params.get("flat_path") or default["flat"]
        paths.dark = params.get("dark_path") or default["dark"]
    if params.get("angles_path"):
        paths.angles, paths.angles_required = params["angles_path"], True
    else:
        paths.angles = default["angles"]
    if check:
        check_metadata(handle, paths, label or handle.filename, stage)
    return paths


def _numeric(dset: h5py.Dataset, label, what: str) -> None:
    if dset.dtype.kind not in "biuf":
        raise StepError(f"{label}: {what} {dset.name} holds {dset.dtype} values, not numbers")


def _projections(handle, paths: Paths, label) -> h5py.Dataset:
    data = _frame_stack(handle, paths.data, label, "projection data")
    if data.ndim != 3:
        raise StepError(f"{label}: projection data {paths.data} must be 3D (frames, rows, columns), "
                        f"but has shape {data.shape}")
    if 0 in data.shape:
        what = "no frames" if data.shape[0] == 0 else "empty frames"
        raise StepError(f"{label}: projection data {paths.data} holds {what} (shape {data.shape})")
    _numeric(data, label, "projection data")
    return data


def _image_key_selection(handle, paths: Paths, label, data: h5py.Dataset,
                         need_fields: bool = True) -> dict[int, np.ndarray]:
    if not need_fields and paths.image_key not in handle:  # processed data: every frame a projection
        return {KEY_PROJECTION: np.arange(data.shape[0]), KEY_FLAT: np.arange(0), KEY_DARK: np.arange(0)}
    key_dset = get_dataset(handle, paths.image_key, label)
    keys = np.asarray(key_dset[()]).reshape(-1)
    if keys.size != data.shape[0]:
        raise StepError(f"{label}: image key {paths.image_key} has {keys.size} entries but "
                        f"{paths.data} holds {data.shape[0]} frames (shape {data.shape})")
    sel = {k: np.flatnonzero(keys == k) for k in (KEY_PROJECTION, KEY_FLAT, KEY_DARK)}
    for key, what in ((KEY_PROJECTION, "projections"), (KEY_FLAT, "flat fields"), (KEY_DARK, "dark fields")):
        if sel[key].size == 0 and (need_fields or key == KEY_PROJECTION):
            raise StepError(f"{label}: no {what} (image_key {key}) in {paths.image_key}")
    return sel


def _field_stacks(handle, paths: Paths, label, data: h5py.Dataset) -> dict[str, h5py.Dataset]:
    n_rows, n_cols = data.shape[1:]
    stacks = {}
    for what, dpath in (("flat fields", paths.flat), ("dark fields", paths.dark)):
        dset = _frame_stack(handle, dpath, label, what)
        if tuple(dset.shape[-2:]) != (n_rows, n_cols):
            raise StepError(f"{label}: {what} {dpath} have frames of shape {tuple(dset.shape[-2:])} "
                            f"(dataset shape {dset.shape}) but projections {paths.data} have frames "
                            f"of shape {(n_rows, n_cols)} (dataset shape {data.shape})")
        if dset.ndim == 3 and dset.shape[0] == 0:
            raise StepError(f"{label}: {what} {dpath} hold no frames (shape {dset.shape})")
        _numeric(dset, label, what)
        stacks[what] = dset
    return stacks


def check_metadata(handle: h5py.File, paths: Paths, label, stage: str = "raw") -> dict:
    """Refuse, before any frame is read, a file whose metadata already shows it cannot be
    reconstructed; every message names the file and the dataset. Returns what it learnt.
    ``stage`` other than raw: flats and darks are neither needed nor read."""
    data = _projections(handle, paths, label)
    info: dict = {}
    if paths.layout == "nxtomo":
        sel = _image_key_selection(handle, paths, label, data, need_fields=stage == "raw")
        n_proj = int(sel[KEY_PROJECTION].size)
    elif paths.layout == "stage":
        n_proj = data.shape[1]
    else:
        if stage == "raw":
            _field_stacks(handle, paths, label, data)
        n_proj = data.shape[0]
    if paths.angles in handle or paths.angles_required:
        dset = get_dataset(handle, paths.angles, label)
        _numeric(dset, label, "angles")
        expected = data.shape[0] if paths.layout == "nxtomo" and sel[KEY_FLAT].size + sel[KEY_DARK].size else n_proj
        what = "frames" if paths.layout == "nxtomo" else "projections"
        if dset.size != expected:
            raise StepError(f"{label}: angles {paths.angles} hold {dset.size} values but "
                            f"{paths.data} holds {expected} {what} (shapes {(dset.size,)} and {data.shape})")
    info["n_projections"] = n_proj
    return info


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs ``[(start, stop), ...]`` of sorted frame indices."""
    if indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [indices.size]])
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops)]


#: raw integer types that float32 holds exactly: ct.load hands them on as float32 counts
EXACT_IN_FLOAT32 = ("uint8", "int8", "uint16", "int16")
READ_BLOCK_BYTES = 64 << 20


def read_frames(dset: h5py.Dataset, indices: np.ndarray | None, rows: tuple[int, int],
                as_float32: bool = False) -> np.ndarray:
    """Frames ``indices`` (all if None) of a 3D stack, detector rows ``rows`` only; with
    ``as_float32`` integer counts that float32 holds exactly come as float32, converted a block of
    frames at a time (never a whole-slab copy in the file's type). Frames stored whole and
    unfiltered in their chunks are read row band by row band (:class:`ChunkRows`), not whole."""
    r0, r1 = rows
    convert = as_float32 and dset.dtype.name in EXACT_IN_FLOAT32
    frames = np.arange(dset.shape[0]) if indices is None else indices
    out = np.empty((frames.size, r1 - r0, dset.shape[2]), dtype=np.float32 if convert else dset.dtype)
    step = min(max(1, frames.size), max(1, READ_BLOCK_BYTES // max(1, (r1 - r0) * dset.shape[2] * dset.dtype.itemsize)))
    buffer = np.empty((step, r1 - r0, dset.shape[2]), dtype=dset.dtype) if convert else None
    direct = ChunkRows.open(dset, rows)
    pos = 0
    try:
        for a, b in _runs(frames):
            if not convert:
                _read(dset, direct, out, a, b, r0, r1, pos)
                pos += b - a
                continue
            for c in range(a, b, step):
                n = min(step, b - c)
                _read(dset, direct, buffer, c, c + n, r0, r1, 0)
                out[pos:pos + n] = buffer[:n]
                pos += n
    finally:
        if direct is not None:
            direct.close()
    return out


def _read(dset, direct: "ChunkRows | None", target: np.ndarray, a: int, b: int, r0: int, r1: int, pos: int) -> None:
    """Frames ``a:b``, rows ``r0:r1`` into ``target[pos:]``."""
    if direct is None:
        dset.read_direct(target, np.s_[a:b, r0:r1, :], np.s_[pos:pos + b - a])
    else:
        direct.read(a, b, target[pos:pos + b - a])


def bytes_touched(dset: h5py.Dataset, frames: int, rows: tuple[int, int]) -> int:
    """Bytes read (decompressed) for ``frames`` frames of detector rows ``rows``: the rows where
    :class:`ChunkRows` reads them, else whole chunks (HDF5 gives a frame-chunked detector file's
    every frame whole, whatever the rows)."""
    r0, r1 = rows
    if not dset.chunks or dset.ndim != 3 or (r1 - r0 < dset.shape[1] and ChunkRows.readable(dset)):
        return frames * (r1 - r0) * dset.shape[2] * dset.dtype.itemsize
    cf, cr, _ = dset.chunks
    row_chunks = (r1 - 1) // cr - r0 // cr + 1
    return -(-frames // cf) * cf * row_chunks * cr * dset.shape[2] * dset.dtype.itemsize


def _frame_stack(handle, path, label, what) -> h5py.Dataset:
    dset = get_dataset(handle, path, label)
    if dset.ndim not in (2, 3):
        raise StepError(f"{label}: {what} {path} must be a 2D frame or a 3D stack of frames, "
                        f"but has shape {dset.shape}")
    return dset


def _read_angles(handle, path, label, units_param) -> tuple[np.ndarray, str]:
    dset = get_dataset(handle, path, label)
    values = np.asarray(dset[()], dtype=np.float64).reshape(-1)
    units = units_param
    if units == "auto":
        text = dset.attrs.get("units", "")
        text = text.decode() if isinstance(text, bytes) else str(text)
        units = "rad" if text.strip().lower() in ("rad", "radian", "radians") else "deg"
    if units == "deg":
        values = np.deg2rad(values)
    return values.astype(np.float32), units


@dataclass
class Slab:
    proj: np.ndarray
    flat: np.ndarray
    dark: np.ndarray
    theta: np.ndarray | None
    rows: tuple[int, int]
    detector_rows: int
    paths: Paths
    info: dict


def declared_stage(handle: h5py.File, paths: Paths) -> tuple[str | None, str]:
    """The stage the file itself states, and where: attribute ``daisy_stage`` of the projection
    dataset (written by DAISY's save.stages), else None (NXtomo and Data Exchange have no such
    field; raw files are told by their flats and darks)."""
    obj = handle.get(paths.data)
    value = _text(obj.attrs.get(STAGE_ATTR, "")) if isinstance(obj, h5py.Dataset) else ""
    return (value, f"attribute {STAGE_ATTR} of {paths.data}") if value else (None, "")


def _has_fields(handle: h5py.File, paths: Paths) -> bool:
    if paths.layout == "stage":
        return False
    if paths.layout == "nxtomo":
        if paths.image_key not in handle:
            return False
        keys = np.asarray(handle[paths.image_key][()]).reshape(-1)
        return bool(np.any(keys == KEY_FLAT) and np.any(keys == KEY_DARK))
    return bool(paths.flat in handle and paths.dark in handle)


#: transmission above this counts as "far above 1" (noise of normalized data stays well below)
TRANSMISSION_LIMIT = 1.5
#: share of sampled values above TRANSMISSION_LIMIT that refuses a file asked to be normalized
TRANSMISSION_SHARE = 0.01


def check_values(values: np.ndarray, stage: str, label) -> None:
    """Refuse values that contradict ``stage``: integer counts for normalized or attenuation,
    transmission far above 1 for normalized."""
    if stage == "raw":
        return
    if values.dtype.kind in "biu":
        raise StepError(f"{label}: input.stage {stage} but the projections hold integer counts ({values.dtype}): "
                        f"raw data? (input.stage raw, with flats and darks)")
    if stage == "normalized" and values.size:
        finite = values[np.isfinite(values)]
        high = int(np.count_nonzero(finite > TRANSMISSION_LIMIT))
        if high > TRANSMISSION_SHARE * max(1, finite.size):
            raise StepError(f"{label}: input.stage normalized but {high} of {finite.size} sampled values "
                            f"({100.0 * high / max(1, finite.size):.3g}%) exceed {TRANSMISSION_LIMIT:g}, up to "
                            f"{float(finite.max()):.4g}: transmission lies in (0, 1]; raw counts (input.stage raw) "
                            f"or line integrals (input.stage attenuation)?")


def sample_values(handle: h5py.File, paths: Paths) -> np.ndarray:
    """The middle detector row of every projection (a cheap look at the values)."""
    dset = handle[paths.data]
    if paths.layout == "stage":
        return np.asarray(dset[dset.shape[0] // 2])
    return np.asarray(dset[:, dset.shape[1] // 2, :])


def resolve_stage(handle: h5py.File, paths: Paths, asked: str, label) -> tuple[str, str]:
    """The stage to read the file at: ``asked`` (raw, normalized, attenuation, or auto: what the
    file states, else raw if it has flats and darks). A file that contradicts the stage asked
    for is refused with the reason; nothing is guessed. Returns (stage, how it was known)."""
    dtype = _projections(handle, paths, label).dtype     # exists, 3D, numeric (named if not)
    stated, where = declared_stage(handle, paths)
    fields = _has_fields(handle, paths)
    if asked == "auto":
        if stated:
            stage, how = stated, where
        elif fields:
            stage, how = "raw", "the file has flat and dark fields"
        else:
            raise StepError(f"{label}: input.stage auto, but the file states no stage ({STAGE_ATTR} attribute) and "
                            f"has no flat and dark fields; set input.stage to normalized (transmission) or "
                            f"attenuation (line integrals)")
    else:
        stage, how = asked, "config field input.stage"
    if stated and stated != stage:
        raise StepError(f"{label}: input.stage {stage} but the file states stage {stated} ({where})")
    if stage == "raw" and not fields and dtype.kind == "f":
        raise StepError(f"{label}: input.stage raw but the file has no flat and dark fields and holds float values "
                        f"({dtype}): already normalized or line integrals? set input.stage to normalized or "
                        f"attenuation")
    check_values(sample_values(handle, paths) if stage != "raw" else np.empty(0, dtype), stage, label)
    return stage, how


def read_slab(path, params: dict, stage: str = "raw") -> Slab:
    """Read projections, flats, darks (rows ``row_start:row_stop`` only; flats and darks only
    at stage raw, else empty) and angles; check shapes. A stage file (sinogram order) is
    returned in projection order (angles, rows, columns), contiguous."""
    from ..h5 import open_file

    with open_file(path) as handle:
        label = str(path)
        paths = resolve_paths(handle, params, label, stage=stage)    # checks the metadata (check_metadata)
        data = get_dataset(handle, paths.data, label)
        n_rows = data.shape[0] if paths.layout == "stage" else data.shape[1]
        offset, held = 0, n_rows
        source = str(data.attrs["rows_of"]) if "rows_of" in data.attrs and paths.layout != "stage" else None
        if source:                                             # ct.split_rows: some rows of a scan
            offset, n_rows = int(data.attrs["row_offset"]), int(data.attrs["detector_rows"])
        r0 = params["row_start"]
        r1 = n_rows if params["row_stop"] is None else params["row_stop"]
        if not offset <= r0 < r1 <= offset + held:
            where = f"rows {offset}:{offset + held} of a {n_rows}-row detector" if offset or held != n_rows else \
                f"the {n_rows} detector rows"
            raise StepError(f"{label}: rows {r0}:{r1} are outside {where} of {paths.data} (shape {data.shape})")
        rows = (r0, r1)
        r0, r1 = r0 - offset, r1 - offset                       # rows of this file
        info = {"layout": paths.layout, "data": paths.data, "shape": list(data.shape), "stage": stage,
                "dtype": data.dtype.name, **({"rows_of": source} if source else {})}
        if paths.entry:
            info["entry"] = paths.entry
        empty = np.empty((0, r1 - r0, data.shape[-1]), dtype=np.float32)
        sel = None
        if paths.layout == "stage":
            proj = np.ascontiguousarray(np.asarray(data[r0:r1]).transpose(1, 0, 2))
            flat = dark = empty
            info.update(n_projections=int(proj.shape[0]))
        elif paths.layout == "nxtomo":
            sel = _image_key_selection(handle, paths, label, data, need_fields=stage == "raw")
            proj = read_frames(data, sel[KEY_PROJECTION], (r0, r1), as_float32=stage == "raw")
            if stage == "raw":
                flat = read_frames(data, sel[KEY_FLAT], (r0, r1))
                dark = read_frames(data, sel[KEY_DARK], (r0, r1))
            else:
                flat = dark = empty
            info.update(image_key=paths.image_key, n_projections=int(sel[0].size),
                        n_flats=int(flat.shape[0]), n_darks=int(dark.shape[0]))
        else:
            proj = read_frames(data, None, (r0, r1), as_float32=stage == "raw")
            if stage == "raw":
                stacks = _field_stacks(handle, paths, label, data)
                flat, dark = (np.asarray(stacks[w][r0:r1, :])[np.newaxis] if stacks[w].ndim == 2
                              else read_frames(stacks[w], None, (r0, r1)) for w in ("flat fields", "dark fields"))
                info.update(flat=paths.flat, dark=paths.dark)
            else:
                flat = dark = empty
            info.update(n_projections=int(proj.shape[0]), n_flats=int(flat.shape[0]), n_darks=int(dark.shape[0]))

        theta = None
        if paths.angles in handle or paths.angles_required:
            theta, units = _read_angles(handle, paths.angles, label, params["angle_units"])
            if sel is not None:
                theta = theta[sel[KEY_PROJECTION]]
            if not np.isfinite(theta).all():
                bad = int(np.count_nonzero(~np.isfinite(theta)))
                raise StepError(f"{label}: angles {paths.angles} hold {bad} non-finite values (NaN or inf)")
            info.update(angles=paths.angles, angle_units=units)
        info["rows"] = list(rows)
        if paths.layout == "nxtomo":             # flats and darks are frames of the same dataset
            info["bytes_read"] = bytes_touched(data, proj.shape[0] + flat.shape[0] + dark.shape[0], (r0, r1))
        elif paths.layout != "stage":
            info["bytes_read"] = bytes_touched(data, proj.shape[0], (r0, r1)) + flat.nbytes + dark.nbytes
        return Slab(proj, flat, dark, theta, rows, n_rows, paths, info)
