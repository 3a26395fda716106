"""Text exports of the 1D patterns for refinement programs (``xrd.gather``'s output folder ``exports``).

One file per frame and format, named ``<scan>_<frame:05d>.<ext>``, each written through the job's
output set (temporary name, committed with the result file, removed on failure):

* ``xy``   — two columns, radial and intensity; ``#`` header with geometry and method.
* ``xye``  — three columns, radial, intensity, standard deviation (needs an error model): read by
  GSAS-II (Topas xye reader), FullProf (``Ins = 10``, free-format x y sigma), Topas, Jana, MAUD.
* ``chi``  — Fit2D's ``.chi``: title, x-axis label, y-axis label, number of points, then x y.
* ``fxye`` — GSAS standard powder data, FXYE column form (``BANK 1 n n CONS start step 0 0 FXYE``,
  2θ in centidegrees, intensity, esd), the form GSAS-II itself exports and reads back; GSAS and
  FullProf (``Ins = 6`` GSAS format) read it too. Chosen over FullProf's ``.dat`` (INSTRM 0 with
  a fixed step needs constant-step data with no errors, and its header variants differ by
  version) because it carries the standard deviations and every 2θ value explicitly. 2θ only
  (refinement programs expect angles for constant-wavelength data): refused for q.

Numbers are written with 9 significant digits for intensities and errors (float32 round-trips
exactly) and 10 for the radial axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import StepError
from .results import UNITS

FORMATS = ("xy", "xye", "chi", "fxye")
NEEDS_SIGMA = ("xye", "fxye")
NEEDS_2THETA = ("fxye",)


def check_formats(formats, unit: str, has_sigma: bool) -> None:
    """Refuse, before any file is written, formats that the patterns cannot fill."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise StepError(f"export format '{fmt}' is not one of {', '.join(FORMATS)}")
        if fmt in NEEDS_SIGMA and not has_sigma:
            raise StepError(f"export format '{fmt}' needs standard deviations: integrate with an error_model "
                            f"(poisson or azimuthal)")
        if fmt in NEEDS_2THETA and unit != "2th_deg":
            raise StepError(f"export format '{fmt}' holds 2θ (constant-wavelength GSAS data); "
                            f"the patterns are in {unit}")


def _columns(x, y, e=None) -> np.ndarray:
    return np.column_stack([x, y] + ([e] if e is not None else []))


def write_pattern(path: Path, fmt: str, unit: str, radial, intensity, sigma, header: list[str], title: str) -> None:
    """Write one pattern in ``fmt`` to ``path`` (the caller gives a temporary name)."""
    rad_name, rad_units, rad_label = UNITS[unit]
    x = np.asarray(radial, np.float64)
    y = np.asarray(intensity)
    e = None if sigma is None else np.asarray(sigma)
    if fmt == "xy":
        np.savetxt(path, _columns(x, y), fmt=("%.10g", "%.9g"),
                   header="\n".join(header + [f"{rad_name}({rad_units}) I"]))
    elif fmt == "xye":
        np.savetxt(path, _columns(x, y, e), fmt=("%.10g", "%.9g", "%.9g"),
                   header="\n".join(header + [f"{rad_name}({rad_units}) I sigma"]))
    elif fmt == "chi":
        label = "2-Theta Angle (Degrees)" if unit == "2th_deg" else f"{rad_label} ({rad_units})"
        lines = [title[:80], label, "Intensity", f"{len(x):14d}"]
        lines += [f"{a:18.10g} {b:18.9g}" for a, b in zip(x, y)]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "fxye":
        cx = x * 100.0  # centidegrees
        step = float(cx[1] - cx[0]) if len(cx) > 1 else 0.0
        lines = [title[:80].ljust(80), f"BANK 1 {len(cx)} {len(cx)} CONS {cx[0]:.4f} {step:.6f} 0 0 FXYE"]
        lines += [f"{a:16.8f} {b:16.9g} {c:16.9g}" for a, b, c in zip(cx, y, e)]
        path.write_text("\n".join(lines) + "\n")
    else:  # pragma: no cover - check_formats refused it
        raise StepError(f"export format '{fmt}' is not one of {', '.join(FORMATS)}")


def read_pattern(path: str | Path) -> dict[str, np.ndarray]:
    """Read an export back (tests, users): ``radial``, ``intensity`` and, where present, ``sigma``
    (``fxye``: 2θ in degrees)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    if fmt in ("xy", "xye"):
        table = np.loadtxt(path, ndmin=2)
    elif fmt == "chi":
        table = np.loadtxt(path, skiprows=4, ndmin=2)
    elif fmt == "fxye":
        lines = path.read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("BANK")) + 1
        table = np.loadtxt(lines[start:], ndmin=2)
        table[:, 0] /= 100.0
    else:
        raise StepError(f"{path}: not a DAISY export ({', '.join(FORMATS)})")
    out = {"radial": table[:, 0], "intensity": table[:, 1]}
    if table.shape[1] > 2:
        out["sigma"] = table[:, 2]
    return out


def write_exports(ctx, params: dict, first, frames, all_1d, all_sigma) -> int:
    """Every chosen format of every frame into the ``exports`` output folder; returns the count."""
    formats = list(params.get("exports") or ())
    check_formats(formats, first.unit, all_sigma is not None)
    folder = Path(ctx.final_output("exports").path)
    prefix = params.get("export_prefix") or Path(ctx.final_output("result").path).stem.removesuffix("_integrated")
    settings, geometry = first.settings, first.geometry
    header = [f"DAISY xrd.gather: pyFAI {settings.get('pyfai_version')}, method {settings.get('method_used_1d')}",
              f"wavelength_angstrom: {geometry['wavelength_angstrom']}"]
    if settings.get("normalization"):
        header.append(f"normalization: {settings['normalization']}")
    if settings.get("sigma_clip"):
        header.append(f"sigma_clip: {settings['sigma_clip']}")
    header += [f"poni {line}" for line in geometry.get("poni", "").splitlines()]
    count = 0
    for k, frame in enumerate(frames):
        name = f"{prefix}_{int(frame):05d}"
        for fmt in formats:
            target = ctx.extra_output(folder / f"{name}.{fmt}")
            write_pattern(target, fmt, first.unit, first.radial, all_1d[k],
                          None if all_sigma is None else all_sigma[k], header + [f"frame: {int(frame)}"],
                          f"{name} (DAISY, {first.unit}, wavelength {geometry['wavelength_angstrom']:.6g} A)")
            count += 1
    return count
