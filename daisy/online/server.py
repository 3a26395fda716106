"""The live page of a watch run: a small local web server over the watch folder.

``LiveServer(folder, pipeline)`` serves, on 127.0.0.1 by default, ``/`` (one self-contained HTML
page: inline CSS and JavaScript, no external asset) and the files of the watch folder that the
page reads (``live.json``, ``view.json``, the quick-look PNGs) — nothing outside the folder:
request paths are percent-decoded until stable, and any ``..`` segment, backslash, NUL, hidden
name (``.lock``, temporary files) or a path that resolves (symbolic links included) outside the
folder is refused with 404. GET and HEAD only. The server runs in a daemon thread and stops with
the watcher (:meth:`LiveServer.stop`).
"""

from __future__ import annotations

import html
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

TYPES = {".json": "application/json", ".jsonl": "application/x-ndjson", ".png": "image/png", ".html": "text/html",
         ".h5": "application/x-hdf5", ".log": "text/plain", ".yaml": "text/plain"}


def resolve_request(root: Path, raw: str) -> Path | str | None:
    """The file under ``root`` a request path names; ``"index"`` for the page; None if refused."""
    path = urlsplit(raw).path
    for _ in range(5):  # %252e%252e -> %2e%2e -> ..
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    else:
        return None
    if "\x00" in path or "\\" in path or "%" in path:
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." or p.startswith(".") for p in parts):
        return None
    if not parts or parts == ["index.html"]:
        return "index"
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target


class _Handler(BaseHTTPRequestHandler):
    server_version = "daisy-watch"
    root: Path
    page: bytes

    def log_message(self, *args) -> None:  # quiet: the terminal shows the progress line
        pass

    def _send(self, status: int, body: bytes, ctype: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                                                    "style-src 'unsafe-inline'; script-src 'unsafe-inline'")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        target = resolve_request(self.root, self.path)
        if target is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head)
            return
        if target == "index":
            self._send(HTTPStatus.OK, self.page, "text/html; charset=utf-8", head)
            return
        try:
            body = target.read_bytes()
        except OSError:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head)
            return
        ctype = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(HTTPStatus.OK, body, ctype, head)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)


class LiveServer:
    def __init__(self, folder, pipeline: str, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.folder = Path(folder)
        handler = type("Handler", (_Handler,), {"root": self.folder.resolve(),
                                                "page": page(pipeline, self.folder).encode()})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError:
            if port == 0:
                raise
            self.httpd = ThreadingHTTPServer((host, 0), handler)   # the port is taken: any free one
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> str:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="daisy-live-view", daemon=True)
        self.thread.start()
        return self.url

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


def page(pipeline: str, folder: Path) -> str:
    title = f"DAISY watch {pipeline.upper()}: {html.escape(folder.resolve().parent.name)}"
    panels = XRD_PANELS if pipeline == "xrd" else CT_PANELS
    return PAGE.replace("__TITLE__", title).replace("__PANELS__", panels).replace("__PIPELINE__", pipeline)


XRD_PANELS = """
<div class="card wide"><h2>Latest pattern <span id="pframe"></span></h2><canvas id="pattern" width="900" height="260"></canvas></div>
<div class="card wide"><h2>Waterfall (last frames)</h2><canvas id="waterfall" width="900" height="240"></canvas></div>
"""
CT_PANELS = """
<div class="card wide"><h2>Quick-look <span id="qinfo"></span></h2>
<div class="row"><figure><img id="xy" alt="xy slice"><figcaption>xy (axial)</figcaption></figure>
<figure><img id="xz" alt="xz slice"><figcaption>xz</figcaption></figure>
<figure><img id="yz" alt="yz slice"><figcaption>yz</figcaption></figure></div></div>
<div class="card wide"><h2>Sinogram (centre row, as it fills)</h2><img id="sino" alt="sinogram"></div>
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#1d3557;color:#fff;padding:10px 18px}header h1{font-size:18px;margin:0}
main{display:flex;flex-wrap:wrap;gap:12px;padding:12px}
.card{background:#fff;border-radius:6px;padding:10px 14px;box-shadow:0 1px 3px #0002}
.wide{flex:1 1 920px}h2{font-size:14px;margin:0 0 6px}
table{border-collapse:collapse;font-size:14px}td{padding:2px 10px 2px 0}td.k{color:#555}
#status{font-weight:bold}.warn{color:#b00020;font-size:13px}
.row{display:flex;gap:10px}figure{margin:0}img{image-rendering:pixelated;width:280px;background:#000}
#sino{width:600px;height:200px}canvas{width:100%;max-width:900px;background:#fafafa;border:1px solid #ddd}
</style></head><body>
<header><h1>__TITLE__</h1></header>
<main>
<div class="card"><h2>Progress</h2><table>
<tr><td class="k">status</td><td id="status">loading</td></tr>
<tr><td class="k">frames done</td><td id="done">-</td></tr>
<tr><td class="k">frame rate</td><td id="rate">-</td></tr>
<tr><td class="k">latency (last / p50 / p95)</td><td id="latency">-</td></tr>
<tr><td class="k">rotation centre</td><td id="center">-</td></tr>
<tr><td class="k">result</td><td id="result">-</td></tr>
<tr><td class="k">message</td><td id="message">-</td></tr>
</table><h2>Warnings</h2><div id="warnings" class="warn">none</div></div>
__PANELS__
</main>
<script>
"use strict";
const PIPE="__PIPELINE__";
function fmt(v,d){return (v===null||v===undefined)?"-":Number(v).toFixed(d);}
function text(id,v){const e=document.getElementById(id);if(e)e.textContent=v;}
function plot(c,x,y){const g=c.getContext("2d"),W=c.width,H=c.height,m=40;g.clearRect(0,0,W,H);
 if(!x||!x.length)return;let lo=Math.min(...y),hi=Math.max(...y);if(hi<=lo)hi=lo+1;
 g.strokeStyle="#888";g.strokeRect(m,5,W-m-5,H-m);g.fillStyle="#333";g.font="11px sans-serif";
 g.fillText(fmt(hi,0),2,14);g.fillText(fmt(lo,0),2,H-m);g.fillText(fmt(x[0],2),m,H-m+14);
 g.fillText(fmt(x[x.length-1],2),W-50,H-m+14);g.beginPath();g.strokeStyle="#1d3557";
 for(let i=0;i<x.length;i++){const px=m+(x[i]-x[0])/(x[x.length-1]-x[0]||1)*(W-m-5),py=5+(1-(y[i]-lo)/(hi-lo))*(H-m);
  if(i)g.lineTo(px,py);else g.moveTo(px,py);}g.stroke();}
function colour(v){const t=v/255;return [Math.round(255*Math.min(1,Math.max(0,1.5*t-0.2))),Math.round(255*Math.min(1,t*t*1.2)),Math.round(255*Math.min(1,0.3+0.7*(1-t)*t*4))];}
function waterfall(c,w){const g=c.getContext("2d");if(!w||!w.rows.length)return;const R=w.rows.length,C=w.rows[0].length;
 const img=g.createImageData(C,R);for(let r=0;r<R;r++)for(let k=0;k<C;k++){const p=4*((R-1-r)*C+k),[a,b,d]=colour(w.rows[r][k]);
 img.data[p]=a;img.data[p+1]=b;img.data[p+2]=d;img.data[p+3]=255;}
 const off=document.createElement("canvas");off.width=C;off.height=R;off.getContext("2d").putImageData(img,0,0);
 g.imageSmoothingEnabled=false;g.clearRect(0,0,c.width,c.height);g.drawImage(off,0,0,c.width,c.height);
 g.fillStyle="#fff";g.font="11px sans-serif";g.fillText("frames "+w.first+"-"+w.last,6,14);}
async function get(name){const r=await fetch(name+"?t="+Date.now(),{cache:"no-store"});if(!r.ok)throw new Error(name);return r.json();}
async function tick(){
 try{const s=await get("live.json");
  text("status",s.status);text("done",s.frames_done+(s.frames_expected?" / "+s.frames_expected:""));
  text("rate",s.rate_hz===null?"-":fmt(s.rate_hz,2)+" Hz");const L=s.latency_s||{};
  text("latency",fmt(L.last,3)+" / "+fmt(L.p50,3)+" / "+fmt(L.p95,3)+" s");
  text("center",s.center===undefined||s.center===null?"-":fmt(s.center,2)+" px");
  text("result",s.result_file||"-");text("message",s.message||"");
  const w=document.getElementById("warnings");w.textContent="";
  (s.warnings||[]).slice(-6).forEach(x=>{const d=document.createElement("div");d.textContent=x.time.slice(11,19)+" "+x.message+(x.count?" (x"+x.count+")":"");w.appendChild(d);});
  if(!(s.warnings||[]).length)w.textContent="none";
 }catch(e){text("status","no live record yet");}
 try{const v=await get("view.json");
  if(PIPE==="xrd"){if(v.pattern){plot(document.getElementById("pattern"),v.pattern.x,v.pattern.y);text("pframe","frame "+v.pattern.frame+", "+v.xlabel);}
   waterfall(document.getElementById("waterfall"),v.waterfall);}
  else{const t="?t="+Date.now();for(const k of ["xy","xz","yz"]){if(v.slices&&v.slices[k])document.getElementById(k).src=v.slices[k]+t;}
   if(v.sinogram)document.getElementById("sino").src=v.sinogram+t;
   text("qinfo",v.quicklook?("centre "+fmt(v.quicklook.center,2)+" px, "+v.quicklook.seconds_after_last+" s after the last projection"):"(after the last projection)");}
 }catch(e){}
}
tick();setInterval(tick,1000);
</script></body></html>
"""
