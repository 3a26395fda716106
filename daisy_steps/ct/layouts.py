"""Raw tomography file layouts: where projections, flats, darks and angles live, and slab reads.

Three layouts are known (``LAYOUTS``): NeXus NXtomo (one frame stack with an ``image_key``),
Data Exchange (``/exchange``) and the original DAISY design (``/entry/tomo``). Only the
requested detector rows are read (h5py hyperslabs), so a slab job holds only its slab.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import StepError
from ..h5 import get_dataset

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
#: NXtomo image_key values
KEY_PROJECTION, KEY_FLAT, KEY_DARK = 0, 1, 2


@dataclass
class Paths:
    layout: str
    data: str
    flat: str | None = None
    dark: str | None = None
    image_key: str | None = None
    angles: str | None = None
    angles_required: bool = False
    notes: list[str] = field(default_factory=list)


def detect_layout(handle: h5py.File) -> str:
    """The first layout (NXtomo, Data Exchange, DAISY) whose projection dataset exists."""
    for name in DETECT_ORDER:
        path = LAYOUTS[name]["data"]
        if path in handle and isinstance(handle[path], h5py.Dataset):
            return name
    tried = ", ".join(f"{LAYOUTS[n]['data']} ({n})" for n in DETECT_ORDER)
    raise StepError(f"{handle.filename}: cannot detect the raw layout: none of {tried} exists; "
                    f"set 'layout' and the dataset paths (data_path, ...) explicitly")


def resolve_paths(handle: h5py.File, params: dict) -> Paths:
    """Dataset paths for this file: the layout's defaults with the ``*_path`` overrides."""
    layout = params["layout"]
    if layout == "auto":
        layout = detect_layout(handle)
    default = LAYOUTS[layout]
    paths = Paths(layout=layout, data=params.get("data_path") or default["data"])
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
    return paths


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs ``[(start, stop), ...]`` of sorted frame indices."""
    if indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [indices.size]])
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops)]


def read_frames(dset: h5py.Dataset, indices: np.ndarray | None, rows: tuple[int, int]) -> np.ndarray:
    """Frames ``indices`` (all if None) of a 3D stack, detector rows ``rows`` only."""
    r0, r1 = rows
    if indices is None:
        return np.asarray(dset[:, r0:r1, :])
    out = np.empty((indices.size, r1 - r0, dset.shape[2]), dtype=dset.dtype)
    pos = 0
    for a, b in _runs(indices):
        dset.read_direct(out, np.s_[a:b, r0:r1, :], np.s_[pos:pos + b - a])
        pos += b - a
    return out


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


def read_slab(path, params: dict) -> Slab:
    """Read projections, flats, darks (rows ``row_start:row_stop`` only) and angles; check shapes."""
    from ..h5 import open_file

    with open_file(path) as handle:
        label = str(path)
        paths = resolve_paths(handle, params)
        data = _frame_stack(handle, paths.data, label, "projection data")
        if data.ndim != 3:
            raise StepError(f"{label}: projection data {paths.data} must be 3D (frames, rows, columns), "
                            f"but has shape {data.shape}")
        n_frames, n_rows, n_cols = data.shape
        r0 = params["row_start"]
        r1 = n_rows if params["row_stop"] is None else params["row_stop"]
        if not 0 <= r0 < r1 <= n_rows:
            raise StepError(f"{label}: rows {r0}:{r1} are outside the {n_rows} detector rows of {paths.data} "
                            f"(shape {data.shape})")
        rows = (r0, r1)
        info = {"layout": paths.layout, "data": paths.data, "shape": list(data.shape)}

        if paths.layout == "nxtomo":
            key_dset = get_dataset(handle, paths.image_key, label)
            keys = np.asarray(key_dset[()]).reshape(-1)
            if keys.size != n_frames:
                raise StepError(f"{label}: image key {paths.image_key} has {keys.size} entries but "
                                f"{paths.data} holds {n_frames} frames (shape {data.shape})")
            sel = {k: np.flatnonzero(keys == k) for k in (KEY_PROJECTION, KEY_FLAT, KEY_DARK)}
            for key, what in ((KEY_PROJECTION, "projections"), (KEY_FLAT, "flat fields"), (KEY_DARK, "dark fields")):
                if sel[key].size == 0:
                    raise StepError(f"{label}: no {what} (image_key {key}) in {paths.image_key}")
            proj = read_frames(data, sel[KEY_PROJECTION], rows)
            flat = read_frames(data, sel[KEY_FLAT], rows)
            dark = read_frames(data, sel[KEY_DARK], rows)
            info.update(image_key=paths.image_key, n_projections=int(sel[0].size),
                        n_flats=int(sel[1].size), n_darks=int(sel[2].size))
        else:
            stacks = {}
            for what, dpath in (("flat fields", paths.flat), ("dark fields", paths.dark)):
                dset = _frame_stack(handle, dpath, label, what)
                if tuple(dset.shape[-2:]) != (n_rows, n_cols):
                    raise StepError(f"{label}: {what} {dpath} have frames of shape {tuple(dset.shape[-2:])} "
                                    f"(dataset shape {dset.shape}) but projections {paths.data} have frames "
                                    f"of shape {(n_rows, n_cols)} (dataset shape {data.shape})")
                stacks[what] = dset
            proj = read_frames(data, None, rows)
            flat, dark = (np.asarray(stacks[w][r0:r1, :])[np.newaxis] if stacks[w].ndim == 2
                          else read_frames(stacks[w], None, rows) for w in ("flat fields", "dark fields"))
            info.update(flat=paths.flat, dark=paths.dark, n_projections=n_frames,
                        n_flats=int(flat.shape[0]), n_darks=int(dark.shape[0]))
            for what, stack, dpath in (("flat fields", flat, paths.flat), ("dark fields", dark, paths.dark)):
                if stack.shape[0] == 0:
                    raise StepError(f"{label}: {what} {dpath} hold no frames")

        theta = None
        if paths.angles in handle or paths.angles_required:
            theta, units = _read_angles(handle, paths.angles, label, params["angle_units"])
            expected = n_frames if paths.layout == "nxtomo" else proj.shape[0]
            what = "frames" if paths.layout == "nxtomo" else "projections"
            if theta.size != expected:
                raise StepError(f"{label}: angles {paths.angles} hold {theta.size} values but "
                                f"{paths.data} holds {expected} {what} (shapes {(theta.size,)} and {data.shape})")
            if paths.layout == "nxtomo":
                theta = theta[sel[KEY_PROJECTION]]
            info.update(angles=paths.angles, angle_units=units)
        info["rows"] = list(rows)
        return Slab(proj, flat, dark, theta, rows, n_rows, paths, info)
