#!/usr/bin/env bash
# A throw-away OCI registry on 127.0.0.1 (Debian's docker-registry, the Docker distribution
# registry) for trying and testing image sharing (`daisy containers push/pull --to/--from oras://...`).
#
#   bash scripts/registry.sh start    # prints the registry's address, e.g. 127.0.0.1:40123
#   bash scripts/registry.sh status   # address if it answers (exit 0), else exit 1
#   bash scripts/registry.sh stop     # kill it by PID, delete its storage
#
# No systemd: `docker-registry serve CONFIG.yml` runs in the background on a free port, storage in a
# temporary folder. State (PID, URL, folders) in $DAISY_REGISTRY_STATE (default /tmp/daisy-registry),
# so several registries can run side by side with different state folders.
# Optional: DAISY_REGISTRY_HTPASSWD=FILE (bcrypt htpasswd) makes it require a login.
# The package comes from the host's own apt sources; no host name is written anywhere.
set -euo pipefail

STATE_DIR=${DAISY_REGISTRY_STATE:-/tmp/daisy-registry}
STATE=$STATE_DIR/registry.env

say() { printf '[registry] %s\n' "$*" >&2; }
die() { printf '[registry] ERROR: %s\n' "$*" >&2; exit 1; }

load_state() {
    PID= URL= STORAGE=
    # shellcheck disable=SC1090
    [ -r "$STATE" ] && . "$STATE"
    return 0
}

alive() { [ -n "${PID:-}" ] && kill -0 "$PID" 2>/dev/null; }
answers() { curl -fsS -o /dev/null --max-time 2 "http://$1/v2/" 2>/dev/null \
              || [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/v2/")" = 401 ]; }

install_package() {
    command -v docker-registry >/dev/null 2>&1 && return 0
    [ "$(id -u)" -eq 0 ] || die "docker-registry is not installed (apt-get install docker-registry, as root)"
    say "installing Debian's docker-registry package (from the host's apt sources)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # policy-rc.d-less hosts would start the packaged service on :5000; we never use it.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
    command -v docker-registry >/dev/null 2>&1 || die "installing docker-registry failed"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    load_state
    if alive && answers "$URL"; then
        say "already running (PID $PID)"
        echo "$URL"
        return 0
    fi
    install_package
    mkdir -p "$STATE_DIR"
    local storage port config auth=""
    storage=$(mktemp -d "${TMPDIR:-/tmp}/daisy-registry-storage.XXXXXX")
    port=$(free_port)
    config=$STATE_DIR/config.yml
    if [ -n "${DAISY_REGISTRY_HTPASSWD:-}" ]; then
        [ -r "$DAISY_REGISTRY_HTPASSWD" ] || die "DAISY_REGISTRY_HTPASSWD=$DAISY_REGISTRY_HTPASSWD is not readable"
        auth=$(printf 'auth:\n  htpasswd:\n    realm: daisy-test\n    path: %s\n' "$DAISY_REGISTRY_HTPASSWD")
    fi
    cat > "$config" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
$auth
EOF
    setsid docker-registry serve "$config" >"$STATE_DIR/registry.log" 2>&1 < /dev/null &
    local pid=$!
    printf 'PID=%s\nURL=127.0.0.1:%s\nSTORAGE=%s\n' "$pid" "$port" "$storage" > "$STATE.tmp"
    mv "$STATE.tmp" "$STATE"
    for _ in $(seq 1 100); do
        if answers "127.0.0.1:$port"; then
            say "running: PID $pid, http://127.0.0.1:$port (storage $storage)"
            echo "127.0.0.1:$port"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$STATE_DIR/registry.log" >&2 || true
    kill "$pid" 2>/dev/null || true
    rm -f "$STATE"
    rm -rf "$storage"
    die "the registry did not answer on 127.0.0.1:$port"
}

stop() {
    load_state
    if alive; then
        kill "$PID"
        for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$PID" 2>/dev/null || true
        say "stopped (PID $PID)"
    else
        say "not running"
    fi
    case "${STORAGE:-}" in */daisy-registry-storage.*) rm -rf "$STORAGE";; esac
    rm -f "$STATE"
}

status() {
    load_state
    if alive && answers "$URL"; then
        echo "$URL"
        return 0
    fi
    say "not running"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: bash scripts/registry.sh start|stop|status" >&2; exit 2 ;;
esac
