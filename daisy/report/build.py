"""``daisy report RUN_DIR``: one self-contained HTML file about a run.

Everything comes from the run folder: ``provenance.json`` (DAISY's one record of the run: config,
plan, job records with per-step timings, results, image digests and origins, inputs and outputs
with sha256) and the outputs themselves, read for previews only (a few slices of the volume, the
mean pattern). Previews are downsampled and embedded (PNG as data URIs, plots as inline SVG); the
data is linked by relative path, never embedded; no script, font or style sheet is fetched, so the
file opens offline and can be mailed. Sections: summary, previews, results (centre, peaks),
parameters that differ from the defaults, timings per job, provenance (images with digest,
origin, store and signature when recorded; code pin; software; inputs; outputs; rerun verdict
when a ``rerun-report.json`` is beside the run).

Why not ``snakemake --report`` (docs/notebook.md): it needs the Snakemake metadata of the working
directory where the run happened (gone for an archived or rerun run), the ``reports`` extra, and
``report()`` flags in the rules; its software section does not name the containers
(snakemake#3406); it embeds outputs as they are. DAISY's provenance already holds what the report
shows, so DAISY writes it.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

REPORT_NAME = "report.html"
PREVIEW_SIZE = 256
EMBED_LIMIT = 96 * 1024       # existing PNG previews up to this size are embedded, larger ones linked

CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#17324d;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;font-size:13px;color:#cfe0f0}main{padding:8px 24px 32px;max-width:1180px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;margin:14px 0;padding:10px 16px}
h2{font-size:16px;margin:4px 0 10px;color:#17324d}table{border-collapse:collapse;font-size:12.5px}
td,th{border-bottom:1px solid #e5e8ec;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6}code{font-size:11.5px;background:#f0f3f6;padding:0 3px;border-radius:3px;word-break:break-all}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:bold;color:#fff}
.ok{background:#2e7d32}.bad{background:#c62828}.na{background:#78909c}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #dde2e8;border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:18px;color:#17324d}.card .k{font-size:12px;color:#555}.card .badge{font-size:14px}
figure{margin:6px;display:inline-block;text-align:center;vertical-align:top}figcaption{font-size:12px;color:#444}
figure img{border:1px solid #ccc;image-rendering:pixelated}
.bar{background:#4f8fc0;height:10px;border-radius:2px}.muted{color:#666;font-size:12px}
"""


# -- helpers ------------------------------------------------------------------------------------

def esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _badge(ok: bool | None, text: str) -> str:
    kind = "na" if ok is None else "ok" if ok else "bad"
    return f'<span class="badge {kind}">{esc(text)}</span>'


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["<table><tr>", *(f"<th>{esc(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def find_peaks(x: np.ndarray, y: np.ndarray, count: int = 8, min_prominence: float = 0.05) -> list[tuple[float, float]]:
    """The ``count`` strongest local maxima of ``y`` (above the median by ``min_prominence`` of the
    range), as ``(x, y)``, ordered by x. Enough to label rings; no fitting."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if y.size < 3:
        return []
    base = np.nanmedian(y)
    span = np.nanmax(y) - base
    inner = (y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:]) & (y[1:-1] - base > min_prominence * span)
    idx = np.nonzero(inner)[0] + 1
    best = idx[np.argsort(y[idx])[::-1][:count]]
    return sorted((float(x[i]), float(y[i])) for i in best)


class _Run:
    """The run folder and its provenance, with paths resolved as the run named them."""

    def __init__(self, run_dir: Path, out: Path) -> None:
        from ..provenance import load

        self.dir = Path(run_dir)
        self.prov = load(self.dir)
        self.out_dir = out.parent.resolve()
        self.workdir = Path(self.prov.get("workdir") or ".")

    def path(self, recorded: str) -> Path:
        p = Path(recorded)
        return p if p.is_absolute() else self.workdir / p

    def link(self, recorded: str) -> str:
        """A relative link from the report to a file of the run (data is linked, not embedded)."""
        target = self.path(recorded).resolve()
        try:
            rel = os.path.relpath(target, self.out_dir)
        except ValueError:
            rel = str(target)
        return f'<a href="{esc(rel)}">{esc(self.short(recorded))}</a>'

    def short(self, recorded: str) -> str:
        target = self.path(recorded).resolve()
        try:
            return str(target.relative_to(self.dir.resolve()))
        except ValueError:
            return str(recorded)

    def output(self, suffix: str) -> Path | None:
        for recorded in self.prov.get("outputs") or {}:
            if recorded.endswith(suffix) and self.path(recorded).is_file():
                return self.path(recorded)
        return None


# -- sections -----------------------------------------------------------------------------------

def _summary(run: _Run) -> str:
    prov = run.prov
    jobs = prov.get("jobs") or {}
    started, ended = _when(prov.get("started")), _when(prov.get("ended"))
    wall = f"{(ended - started).total_seconds():.1f} s" if started and ended else "-"
    busy = sum(float(s.get("seconds") or 0) for r in jobs.values() for s in r.get("steps") or [])
    cards = [("status", _badge(prov.get("status") == "completed", prov.get("status", "?"))),
             ("pipeline", esc(prov.get("pipeline"))),
             ("jobs", f"{len(jobs)}" + (f" (+{len(prov.get('jobs_not_run') or [])} not run)" if prov.get("jobs_not_run") else "")),
             ("wall time", wall), ("step time", f"{busy:.1f} s"),
             ("outputs", f"{len(prov.get('outputs') or {})} files, "
                         f"{_size(sum((i.get('size') or 0) for i in (prov.get('outputs') or {}).values()))}")]
    key = _key_result(run)
    if key:
        cards.insert(2, key)
    rerun = _rerun(run)
    if rerun:
        cards.append(("rerun", _badge(rerun.get("verdict") == "identical", rerun.get("verdict", "?"))))
    body = "".join(f'<div class="card"><span class="k">{esc(k)}</span><b>{v}</b></div>' for k, v in cards)
    error = f'<p>{_badge(False, "error")} {esc(prov["error"])}</p>' if prov.get("error") else ""
    return f'<section id="summary"><h2>Summary</h2><div class="cards">{body}</div>{error}</section>'


def _key_result(run: _Run) -> tuple[str, str] | None:
    if run.prov.get("pipeline") == "ct":
        center = _center(run)
        if center:
            return ("rotation centre", f"{center[0]:.2f} px")
    return None


def _center(run: _Run) -> tuple[float, str, dict] | None:
    for where, values in (run.prov.get("results") or {}).items():
        if where.endswith("ct.find_center") and "center" in values:
            search = values.get("center_search") or {}
            return float(values["center"]), search.get("method", "found"), search
    center = (run.prov.get("config") or {}).get("center") or {}
    if center.get("method") == "manual" and center.get("center") is not None:
        return float(center["center"]), "manual (config)", {}
    return None


def _ct_previews(run: _Run) -> tuple[str, list[str]]:
    from ..interactive.images2d import data_uri, to_png

    figures, notes = [], []
    volume = run.output("ct/volume.h5")
    if volume is not None:
        try:
            import h5py
            import hdf5plugin  # noqa: F401  (bitshuffle/LZ4 volumes)

            with h5py.File(volume, "r") as handle:
                data = handle["/entry/data/data"]
                shape = data.shape
                planes = {"xy": data[shape[0] // 2], "xz": data[:, shape[1] // 2, :], "yz": data[:, :, shape[2] // 2]}
                for name, image in planes.items():
                    png = to_png(np.asarray(image), PREVIEW_SIZE)
                    figures.append(f'<figure><img src="{data_uri(png)}" width="{min(PREVIEW_SIZE, 240)}" alt="{name} slice">'
                                   f'<figcaption>{name} central slice</figcaption></figure>')
            notes.append(f"volume {tuple(shape)} float32: {run.link(str(volume))} (not embedded)")
        except Exception as exc:  # noqa: BLE001 (a preview is optional)
            notes.append(f"volume preview unavailable: {type(exc).__name__}: {exc}")
    sinograms = sorted(r for r in run.prov.get("outputs") or {} if "sinogram_slab_" in r and r.endswith(".png"))
    for recorded in sinograms[:1]:          # one embedded; the others linked (size grows with slabs otherwise)
        figures.append(_png_figure(run, recorded, Path(recorded).stem.replace("_", " "), width=150))
    if len(sinograms) > 1:
        notes.append("other sinogram previews (linked): " + ", ".join(run.link(r) for r in sinograms[1:]))
    return "".join(figures), notes


def _png_figure(run: _Run, recorded: str, caption: str, width: int = 240) -> str:
    from ..interactive.images2d import data_uri

    path = run.path(recorded)
    if not path.is_file():
        return ""
    if path.stat().st_size <= EMBED_LIMIT:
        return (f'<figure><img src="{data_uri(path.read_bytes())}" width="{width}" alt="{esc(caption)}">'
                f'<figcaption>{esc(caption)}</figcaption></figure>')
    return f'<figure><figcaption>{esc(caption)}: {run.link(recorded)} ({_size(path.stat().st_size)}, linked)</figcaption></figure>'


def _xrd(run: _Run) -> tuple[str, str, list[str]]:
    """(previews, results table, notes) of an XRD run."""
    from .svg import line_plot

    result = run.output("_integrated.h5")
    if result is None:
        return "", "", ["no integrated result file"]
    import h5py

    with h5py.File(result, "r") as handle:
        group = handle["/entry/integrate_1d"]
        unit = group.attrs.get("pyfai_unit", "2th_deg")
        unit = unit.decode() if isinstance(unit, bytes) else str(unit)
        axis = "two_theta" if unit == "2th_deg" else "q"
        label = "2θ (deg)" if unit == "2th_deg" else "q (1/nm)"
        radial = group[axis][()]
        intensity = group["intensity"]
        frames = intensity.shape[0]
        total = np.zeros(intensity.shape[1])
        for start in range(0, frames, 256):
            total += np.asarray(intensity[start:start + 256], dtype=np.float64).sum(axis=0)
        mean = total / max(frames, 1)
        shown = np.unique(np.linspace(0, frames - 1, min(frames, 24)).astype(int))
        curves = [(radial, np.asarray(intensity[int(i)], dtype=np.float64), f"frame {i}") for i in shown]
    peaks = find_peaks(radial, mean)
    pattern = line_plot([(radial, mean, "mean")], xlabel=label, ylabel="intensity",
                        title=f"mean pattern of {frames} frames", markers=[(p, f"{p:.3f}") for p, _ in peaks])
    span = max(float(np.nanpercentile(c[1], 99.5) - np.nanmin(c[1])) for c in curves)
    fall = line_plot(curves, xlabel=label, ylabel="intensity + offset", offset=0.3 * span, height=340,
                     title=f"waterfall ({len(shown)} of {frames} frames)")
    previews = f"<figure>{pattern}</figure><figure>{fall}</figure>"
    cake = next((r for r in run.prov.get("outputs") or {} if r.endswith("cake.png")), None)
    if cake:
        previews += _png_figure(run, cake, "cake (2D, from xrd.gather)")
    rows = [[str(i + 1), f"{p:.4f}", f"{h:.4g}"] for i, (p, h) in enumerate(peaks)]
    table = (f"<h3 style='font-size:14px'>Peaks of the mean pattern ({esc(label)})</h3>" +
             _table(["#", label, "intensity"], rows)) if rows else ""
    notes = [f"result file: {run.link(str(result))} ({frames} frames × {len(radial)} points; not embedded)"]
    return previews, table, notes


def _results(run: _Run) -> str:
    from ..provenance_cli import summarize_results

    parts = []
    center = _center(run)
    if center:
        value, method, search = center
        per_row = search.get("per_row")
        extra = f"; per row: {', '.join(f'{v:.2f}' for v in per_row)}" if per_row else ""
        parts.append(f"<p><b>Rotation centre: {value:.3f} px</b> ({esc(method)}{esc(extra)})</p>")
    lines = summarize_results(run.prov)
    if lines:
        parts.append("<details><summary>all step results</summary><pre style='font-size:11.5px'>"
                     + esc("\n".join(lines)) + "</pre></details>")
    return "".join(parts)


def _parameters(run: _Run) -> str:
    from ..provenance_cli import config_changes

    rows = [[f"<code>{esc(key)}</code>", esc(_fmt(value)), esc(_fmt(default)) if has else "<i>no default</i>"]
            for key, value, has, default in config_changes(run.prov)]
    if not rows:
        return "<p>Every field has its default value.</p>"
    return _table(["field", "value", "default"], rows)


def _timings(run: _Run) -> str:
    jobs = run.prov.get("jobs") or {}
    starts = [_when(r.get("started")) for r in jobs.values() if _when(r.get("started"))]
    t0 = min(starts) if starts else None
    longest = max([sum(float(s.get("seconds") or 0) for s in r.get("steps") or []) for r in jobs.values()] + [1e-9])
    stage_of = {name: info.get("stage") for name, info in ((run.prov.get("plan") or {}).get("jobs") or {}).items()}
    rows = []
    order = sorted(jobs, key=lambda n: (str(jobs[n].get("started") or ""), n))
    for name in order:
        record = jobs[name]
        steps = record.get("steps") or []
        seconds = sum(float(s.get("seconds") or 0) for s in steps)
        begin = _when(record.get("started"))
        offset = f"+{(begin - t0).total_seconds():.1f} s" if begin and t0 else "-"
        image = record.get("image")
        image = image.get("name") if isinstance(image, dict) else image
        detail = ", ".join(f"{s.get('step')} {float(s.get('seconds') or 0):.2f}" for s in steps)
        width = max(1, int(220 * seconds / longest))
        rows.append([esc(name), esc(stage_of.get(name) or "-"), esc(image or "-"),
                     _badge(record.get("status", "completed") == "completed", record.get("status", "completed")),
                     offset, f"{seconds:.2f} s", f'<div class="bar" style="width:{width}px" title="{esc(detail)}"></div>',
                     f'<span class="muted">{esc(detail)}</span>'])
    for name in run.prov.get("jobs_not_run") or []:
        rows.append([esc(name), esc(stage_of.get(name) or "-"), "-", _badge(None, "not run"), "-", "-", "", ""])
    return _table(["job", "stage", "image", "status", "start", "steps", "", "per step (s)"], rows)


def _rerun(run: _Run) -> dict | None:
    for folder in (run.dir, run.dir.parent, run.dir.parent.parent):
        path = folder / "rerun-report.json"
        if path.is_file():
            try:
                report = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(report, dict):
                report["_path"] = str(path)
                return report
    rerun = run.prov.get("rerun")
    return rerun if isinstance(rerun, dict) else None


def _signature(info: dict) -> str:
    sig = info.get("signature")
    if sig is None:
        return _badge(None, "not recorded")
    if isinstance(sig, dict):
        ok = sig.get("verified", sig.get("ok"))
        text = sig.get("status") or ("verified" if ok else "not verified" if ok is False else "recorded")
        who = sig.get("key") or sig.get("signer") or sig.get("fingerprint") or ""
        return _badge(ok if isinstance(ok, bool) else None, text) + (f" <code>{esc(who)}</code>" if who else "")
    return esc(sig)


def _provenance(run: _Run) -> str:
    prov = run.prov
    shown = {"version", "image_sha256", "origin", "store", "file", "signature", "built_at", "size_bytes"}
    rows = []
    for name, info in sorted((prov.get("images") or {}).items()):
        info = info or {}
        other = {k: v for k, v in info.items() if k not in shown and v not in (None, "", {})}
        rows.append([f"<b>{esc(name)}</b> {esc(info.get('version') or '')}",
                     f"<code>sha256:{esc(info.get('image_sha256') or '-')}</code>",
                     esc(info.get("origin") or "-") + (f"<br><code>{esc(info['store'])}</code>" if info.get("store") else ""),
                     _signature(info), esc(info.get("built_at") or "-") + f"<br>{_size(info.get('size_bytes'))}",
                     f'<span class="muted">{esc(_fmt(other))}</span>' if other else ""])
    images = _table(["image", "digest", "from", "signature", "built / size", "more"], rows)
    software = prov.get("software") or {}
    soft = ", ".join(f"{esc(k)} {esc(v)}" for k, v in software.items())
    code = prov.get("code_sha256") or "-"
    rerun = _rerun(run)
    rerun_html = (f"<p>Rerun: {_badge(rerun.get('verdict') == 'identical', rerun.get('verdict', '?'))} "
                  f"<span class='muted'>{esc(rerun.get('_path', ''))}; counts {esc(_fmt(rerun.get('counts', {})))}</span></p>"
                  if rerun else "<p class='muted'>Rerun: none recorded (daisy rerun ARCHIVE writes rerun-report.json)</p>")
    inputs = [[esc(p), _size(i.get("size")), f"<code>{esc((i.get('sha256') or '-')[:16])}…</code>"]
              for p, i in sorted((prov.get("inputs") or {}).items())]
    outputs = [[run.link(p), _size(i.get("size")), f"<code>{esc((i.get('sha256') or '-')[:16])}…</code>"]
               for p, i in sorted((prov.get("outputs") or {}).items())]
    crate = run.dir / "ro-crate-metadata.json"
    return (f"<h3 style='font-size:14px'>Images (pinned by sha256)</h3>{images}"
            f"<p>Step code pin <code>{esc(code)}</code>; {len(prov.get('workflow_files') or {})} workflow files recorded; "
            f"software: {soft}</p>{rerun_html}"
            f"<p>Created {esc(prov.get('created'))} on {esc(prov.get('host'))}; provenance "
            f"<a href='{esc(os.path.relpath((run.dir / 'provenance.json').resolve(), run.out_dir))}'>provenance.json</a>"
            + (f", RO-Crate <a href='{esc(os.path.relpath(crate.resolve(), run.out_dir))}'>ro-crate-metadata.json</a>"
               if crate.is_file() else "") + "</p>"
            f"<details><summary>{len(inputs)} inputs</summary>{_table(['input', 'size', 'sha256'], inputs)}</details>"
            f"<details><summary>{len(outputs)} outputs (linked)</summary>{_table(['output', 'size', 'sha256'], outputs)}</details>")


# -- the page -----------------------------------------------------------------------------------

def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """The report's HTML (links relative to ``out``, default ``RUN_DIR/report.html``)."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / REPORT_NAME
    run = _Run(run_dir, out)
    prov = run.prov
    pipeline = prov.get("pipeline")
    if pipeline == "ct":
        previews, notes = _ct_previews(run)
        extra_results = ""
    elif pipeline == "xrd":
        previews, extra_results, notes = _xrd(run)
    else:
        previews, notes, extra_results = "", [], ""
    note_html = "".join(f"<p class='muted'>{n}</p>" for n in notes)
    title = f"DAISY {pipeline} run: {run_dir.resolve().name}"
    sections = [
        _summary(run),
        f'<section id="previews"><h2>Previews</h2>{previews or "<p>none</p>"}{note_html}</section>',
        f'<section id="results"><h2>Results</h2>{_results(run)}{extra_results}</section>',
        f'<section id="parameters"><h2>Parameters that differ from the defaults</h2>{_parameters(run)}</section>',
        f'<section id="timings"><h2>Timings per job</h2>{_timings(run)}</section>',
        f'<section id="provenance"><h2>Provenance</h2>{_provenance(run)}</section>',
    ]
    from .. import __version__

    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='generator' content='daisy report {esc(__version__)}'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>"
            f"<p>{esc(prov.get('outdir') or run_dir)} · provenance_version {esc(prov.get('provenance_version'))} · "
            f"report by DAISY {esc(__version__)} (self-contained: previews embedded, data linked)</p></header>"
            f"<main>{''.join(sections)}</main></body></html>\n")


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) atomically; returns its path."""
    from daisy_steps.fileio import write_text_atomic

    out = Path(out) if out else Path(run_dir) / REPORT_NAME
    text = build_report(run_dir, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return out
