"""Detector geometry for pyFAI: from a PONI file or from Fit2D parameters.

Fit2D conventions (as ``AzimuthalIntegrator.setFit2D``): ``directDist`` in mm (sample to the
beam's intersection with the detector), ``centerX``/``centerY`` in pixels (the beam centre,
x = column, y = row), ``pixelX``/``pixelY`` in µm, ``tilt`` and ``tiltPlanRotation`` in degrees;
the wavelength is given in Å (``wavelength_angstrom``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import StepError

FIT2D_KEYS = ("directDist", "centerX", "centerY", "tilt", "tiltPlanRotation", "pixelX", "pixelY")
PONI_REQUIRED = ("Distance", "Poni1", "Poni2")


def _parse_poni(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise StepError(f"geometry.poni: PONI file {path} does not exist") from None
    except OSError as exc:
        raise StepError(f"geometry.poni: cannot read PONI file {path}: {exc.strerror}") from None
    keys = {}
    for line in text.splitlines():
        if line.strip().startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        keys[key.strip()] = value.strip()
    missing = [k for k in PONI_REQUIRED if k not in keys]
    if missing:
        raise StepError(f"geometry.poni: {path} is not a PONI file (no {', '.join(missing)})")
    return keys


def poni_text(ai) -> str:
    """The PONI description of ``ai`` without its comment lines (no date: deterministic)."""
    import io

    from pyFAI.io.ponifile import PoniFile

    buffer = io.StringIO()
    PoniFile(ai).write(buffer)
    return "".join(line + "\n" for line in buffer.getvalue().splitlines() if line and not line.startswith("#"))


def build_integrator(geometry: dict[str, Any], shape: tuple[int, int], log=None):
    """An AzimuthalIntegrator for frames of ``shape`` and a JSON-able description of it."""
    import pyFAI
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    poni, fit2d = geometry.get("poni"), geometry.get("fit2d")
    wavelength = geometry.get("wavelength_angstrom")
    if poni and fit2d:
        raise StepError("geometry: give either 'poni' or 'fit2d', not both")
    info: dict[str, Any] = {}
    if poni:
        path = Path(poni)
        keys = _parse_poni(path)
        try:
            ai = pyFAI.load(str(path))
        except Exception as exc:  # pyFAI raises many kinds for a bad file
            raise StepError(f"geometry.poni: pyFAI cannot read {path}: {exc}") from None
        has_wavelength = "Wavelength" in keys and ai.wavelength
        if wavelength is None and not has_wavelength:
            raise StepError(f"geometry: the PONI file {path} has no Wavelength and geometry.wavelength_angstrom "
                            f"is not given; the wavelength is required")
        if wavelength is not None:
            if has_wavelength and abs(ai.wavelength * 1e10 - wavelength) > 1e-6 * wavelength and log:
                log.warning("geometry.wavelength_angstrom %.6g overrides the PONI file's %.6g Å",
                            wavelength, ai.wavelength * 1e10)
            ai.wavelength = wavelength * 1e-10
        det_shape = ai.detector.max_shape
        if det_shape is not None and tuple(det_shape) != tuple(shape):
            raise StepError(f"geometry.poni: detector {ai.detector.name} of {path} has shape {tuple(det_shape)}, "
                            f"but the frames have shape {tuple(shape)}")
        if det_shape is None:
            ai.detector.max_shape = tuple(shape)
            ai.detector.shape = tuple(shape)
        info["source"] = f"PONI file {path}"
        info["poni_file"] = str(path)
    elif fit2d:
        if wavelength is None:
            raise StepError("geometry.wavelength_angstrom is required with fit2d parameters")
        detector = Detector(pixel1=fit2d["pixelY"] * 1e-6, pixel2=fit2d["pixelX"] * 1e-6, max_shape=tuple(shape))
        ai = AzimuthalIntegrator(detector=detector)
        ai.setFit2D(fit2d["directDist"], fit2d["centerX"], fit2d["centerY"], tilt=fit2d["tilt"],
                    tiltPlanRotation=fit2d["tiltPlanRotation"], pixelX=fit2d["pixelX"],
                    pixelY=fit2d["pixelY"], wavelength=wavelength)
        info["source"] = "fit2d parameters"
    else:
        raise StepError("geometry: give 'poni' (a PONI file) or 'fit2d' parameters")
    if geometry.get("chi_discontinuity", "pi") == "zero":
        ai.setChiDiscAtZero()
    f2d = ai.getFit2D()._asdict()
    info["fit2d"] = {k: float(f2d[k]) for k in FIT2D_KEYS}
    info["wavelength_angstrom"] = float(ai.wavelength * 1e10)
    info["poni"] = poni_text(ai)
    info["detector"] = str(ai.detector.name)
    info["shape"] = list(shape)
    info["chi_discontinuity"] = geometry.get("chi_discontinuity", "pi")
    return ai, info

