"""A warm DAISY process that starts each ``daisy run`` with Snakemake already imported.

Importing Snakemake costs about a second of every run's start on a workstation
(``bench/engine_floor.py``), more than the rest of a small run's overhead together. As a build
daemon does (Gradle's, Bazel's server), the first ``daisy run`` starts a server in the
background and runs itself as usual; later runs connect to it. The server has imported Snakemake
and DAISY once and forks a child per run: the child takes the caller's standard streams (passed
over a Unix socket), working directory, environment and umask, and runs exactly what ``daisy
run`` runs in a process of its own (:func:`daisy.cli.main`: the same plan, the same Snakemake
command line, one entry path). The caller waits, forwards Ctrl-C and other signals to the child,
and exits with the child's exit status; a caller that goes away interrupts its run.

- The server belongs to one user (its socket is mode 0600, in ``$XDG_RUNTIME_DIR`` or the
  temporary folder) and to one state of the code: the socket's name holds a fingerprint of the
  interpreter, DAISY's files and the installed packages (:func:`fingerprint`), so changed code
  is never run by an old server (which stops after :data:`IDLE_SECONDS` without a run).
- ``DAISY_SERVER=0`` turns it off (every run then imports Snakemake itself); ``daisy server
  status`` / ``stop`` show and stop this code's server.
- Nothing but imports happens in the server before it forks: every run starts from the same
  state, as a fresh process would.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: environment variable: ``0`` (or ``off``, ``no``) runs every command without the server
SERVER_ENV = "DAISY_SERVER"
#: a server with no run for this long exits
IDLE_SECONDS = 900
#: what the server imports once (Snakemake and what every run of DAISY loads)
PRELOAD = ("snakemake.cli", "snakemake.api", "daisy.cli", "daisy.workflow", "daisy.plan", "daisy.pipelines.ct",
           "daisy.pipelines.xrd", "daisy.pipelines.copy", "daisy.provenance", "daisy.crate", "daisy.hash_ahead",
           "daisy.run_report", "daisy_steps.registry", "rocrate.rocrate", "h5py", "numpy", "jsonschema", "yaml")
#: the signals a waiting caller passes on to its run
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_PACKAGE = Path(__file__).resolve().parent
_SOURCES = (_PACKAGE, _PACKAGE.parent / "daisy_steps", _PACKAGE.parent / "schemas")


def enabled() -> bool:
    return os.environ.get(SERVER_ENV, "1").strip().lower() not in ("0", "off", "no", "false")


def confinement() -> str:
    """Where a process runs, which its children inherit: its control group (a Slurm job's, a
    systemd scope's) and resource limits. A run must be confined as its caller is."""
    import resource

    try:
        group = Path("/proc/self/cgroup").read_text()
    except OSError:
        group = ""
    limits = [resource.getrlimit(getattr(resource, name)) for name in ("RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_NOFILE",
                                                                     "RLIMIT_NPROC", "RLIMIT_CPU")]
    return f"{group}|{limits}"


def fingerprint() -> str:
    """What the server's loaded code depends on: the interpreter, the size and time of every
    file of DAISY (``daisy``, ``daisy_steps``, ``schemas``) and the installed packages' folders;
    and the caller's :func:`confinement` (a caller in a Slurm job never reaches a server outside it)."""
    digest = hashlib.sha256(f"{sys.executable}|{sys.version}|{os.getuid()}|{sys.prefix}|{confinement()}".encode())
    for root in _SOURCES:
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".json"):
                st = path.stat()
                digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for entry in sys.path:             # installed packages (not the working directory python -m adds)
        if entry and entry != os.getcwd() and Path(entry).name in ("site-packages", "dist-packages"):
            try:
                digest.update(f"{entry}|{os.stat(entry).st_mtime_ns}\n".encode())
            except OSError:
                pass
    return digest.hexdigest()[:16]


#: the longest path a Unix socket may have (sun_path: 108 bytes with its terminating NUL)
SOCKET_PATH_MAX = 107


def socket_path() -> Path:
    """This code's server socket: in ``$XDG_RUNTIME_DIR`` (else the temporary folder, also when
    the runtime folder's path is too long for a socket)."""
    name = f"daisy-server-{os.getuid()}-{fingerprint()}.sock"
    folder = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    if len(os.fsencode(os.path.join(folder, name))) > SOCKET_PATH_MAX:
        folder = tempfile.gettempdir()
    return Path(folder) / name


# -- the caller's side ---------------------------------------------------------------------------

def run_through_server(argv: list[str]) -> int | None:
    """Run ``daisy ARGV`` in the server; its exit status. None when no server answered: one is
    started for the next run, and the caller runs this one itself (also where it cannot wait for
    the run as a command does: outside the main thread, which alone receives signals)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    path = socket_path()
    conn = _connect(path)
    if conn is None:
        start(path)
        return None
    with conn:
        message = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask()}
        try:
            _send(conn, message, [0, 1, 2])
            lines = conn.makefile("rb")
            first = lines.readline()
        except OSError:                       # a closed standard stream, or the server went away
            return None
        except KeyboardInterrupt:             # before the run started (it stops when we close)
            return 130
        if not first.startswith(b"pid "):
            return None                       # the server is stopping: run without it
        pid = int(first.split()[1])
        previous = {sig: signal.signal(sig, lambda s, _f: _forward(pid, s)) for sig in FORWARDED}
        try:
            last = lines.readline()
        except OSError:
            last = b""
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not last.startswith(b"status "):
            print("daisy: the DAISY server ended the run without an exit status", file=sys.stderr)
            return 1
        return int(last.split()[1])


#: signals a terminal sends to its whole foreground process group: the run's too (its jobs included)
GROUP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


def _forward(pid: int, sig: int) -> None:
    try:
        if sig in GROUP_SIGNALS:
            os.killpg(pid, sig)            # the run is its process group's leader
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def start(path: Path) -> None:
    """Start a server for ``path`` in the background (its own session, no terminal)."""
    try:
        with open(log_path(path), "ab") as log:
            subprocess.Popen([sys.executable, "-m", "daisy.server", "serve", str(path)], cwd=str(_PACKAGE.parent),
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
    except OSError:
        pass                                  # best effort: runs work without it


def log_path(path: Path) -> Path:
    """Where a server writes what goes wrong in it (beside its socket)."""
    return path.with_name(path.name + ".log")


def request(path: Path, message: dict) -> dict | None:
    """A control request (``status``, ``stop``) to the server at ``path``; None if none answers."""
    conn = _connect(path)
    if conn is None:
        return None
    with conn:
        try:
            _send(conn, message, [])
            reply = conn.makefile("rb").readline()
        except OSError:
            return None
    return json.loads(reply) if reply else None


def _connect(path: Path) -> socket.socket | None:
    """A connection to the server at ``path``; None if none listens there."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _send(conn: socket.socket, message: dict, fds: list[int]) -> None:
    """``message`` as JSON after its length (8 bytes), which carries ``fds`` (:func:`_receive`)."""
    body = json.dumps(message).encode()
    socket.send_fds(conn, [len(body).to_bytes(8, "big")], fds)
    conn.sendall(body)


# -- the server's side ---------------------------------------------------------------------------

def serve(path: Path, idle_seconds: float = IDLE_SECONDS) -> int:
    """Import :data:`PRELOAD`, then fork a child for every run asked for, until idle."""
    import importlib

    from .lazy_modules import defer_all

    defer_all()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (the child imports, and reports, what fails)
            pass
    listener, inode = _listen(path)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    runs: dict[int, socket.socket] = {}
    served = [0]
    last = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([listener, wake_r], [], [], 1.0)
            if wake_r in ready:
                os.read(wake_r, 4096)
            _reap(runs)
            if runs:
                last = time.monotonic()
            if listener in ready:
                conn, _ = listener.accept()
                stop = _accept(conn, listener, runs, path, served)
                last = time.monotonic()
                if stop:
                    break
            if not runs and (time.monotonic() - last > idle_seconds or not _still_ours(path, inode)):
                break
    finally:
        if _still_ours(path, inode):
            path.unlink(missing_ok=True)
        listener.close()
    return 0


def _listen(path: Path) -> tuple[socket.socket, int]:
    """The server's socket at ``path`` (mode 0600) and its inode (another server may replace it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.unlink(missing_ok=True)
    old = os.umask(0o177)                     # the socket: this user's only
    try:
        listener.bind(str(scratch))
    finally:
        os.umask(old)
    listener.listen(16)
    os.replace(scratch, path)                 # whole or absent: a caller never sees a half-made server
    return listener, path.stat().st_ino


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """What :func:`_send` sent: the message and the descriptors that came with it."""
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    size = int.from_bytes(head, "big")
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            break
        body += chunk
    return json.loads(body), list(fds)


def _accept(conn: socket.socket, listener: socket.socket, runs: dict[int, socket.socket], path: Path,
            served: list[int]) -> bool:
    """Serve one connection: a run (fork) or a control request. Returns whether to stop."""
    try:
        message, fds = _receive(conn)
    except (OSError, ValueError):
        conn.close()
        return False
    if "argv" not in message:
        reply = {"pid": os.getpid(), "socket": str(path), "runs": sorted(runs), "served": served[0]}
        conn.sendall(json.dumps(reply).encode() + b"\n")
        conn.close()
        return bool(message.get("stop"))
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return False
    pid = os.fork()
    if pid == 0:
        for other in runs.values():            # the other runs' connections are not this run's
            other.close()
        _child(conn, listener, fds, message)   # never returns
    served[0] += 1
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(f"pid {pid}\n".encode())
    except OSError:
        pass
    runs[pid] = conn
    return False


def _reap(runs: dict[int, socket.socket]) -> None:
    while runs:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = runs.pop(pid, None)
        if conn is not None:
            code = os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(f"status {code if code >= 0 else 128 - code}\n".encode())
            except OSError:
                pass
            conn.close()


def _child(conn: socket.socket, listener: socket.socket, fds: list[int], message: dict) -> None:
    """In the forked child: become the caller's ``daisy`` process, run, exit with its status."""
    import atexit
    import io
    import threading

    code = 1
    try:
        listener.close()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setpgid(0, 0)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(message["cwd"])
        os.environ.clear()
        os.environ.update(message["env"])
        os.umask(int(message["umask"]))
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=os.isatty(1))
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                      errors="backslashreplace")
        sys.argv = ["daisy", *message["argv"]]
        # the caller gone (its connection closed): the run is interrupted, as Ctrl-C would
        threading.Thread(target=_interrupt_when_closed, args=(conn,), daemon=True).start()
        from .cli import main

        code = main(list(message["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(int(code or 0) & 0xFF)


def _interrupt_when_closed(conn: socket.socket) -> None:
    try:
        while conn.recv(1024):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGINT)


# -- daisy server status | stop ------------------------------------------------------------------

def cmd_server(args) -> int:
    path = socket_path()
    reply = request(path, {"stop": args.action == "stop"})
    if reply is None:
        print(f"daisy: no DAISY server for this code ({path})")
        return 0 if args.action == "stop" else 1
    verb = "stopping" if args.action == "stop" else "running"
    print(f"daisy: server {verb}: pid {reply['pid']}, socket {reply['socket']}, runs served: {reply['served']}, "
          f"under way: {len(reply['runs'])}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("server", help="the warm process that starts daisy runs without importing Snakemake again",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["status", "stop"])
    p.set_defaults(func=cmd_server)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "serve":
        return serve(Path(argv[1]))
    print("usage: python -m daisy.server serve SOCKET", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
