#!/bin/sh
# DAISY image build helper. Runs INSIDE an image during %post (copied there by %files); never on the host.
#   install-env.sh sources MIRROR COMPONENTS...  write a trixie sources.list for the build, apt-get update
#   install-env.sh apt LIST                      apt-get install the pinned packages of envs/<name>.debian.txt
#   install-env.sh pip LIST                      pip install the pinned wheels of envs/<name>.pypi.txt
#   install-env.sh strip-hdf5plugin              drop debug info from hdf5plugin's filter libraries
#   install-env.sh finish BUILD_TOOLS_LIST       purge build-only tools, remove apt state and every file naming the mirror
#   install-env.sh purge LIST                    dpkg --purge --force-depends unused packages (last step only)
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
CA=/mnt/ca-certificates.crt          # host CA bundle, bound in with: apptainer build --bind /etc/ssl/certs:/mnt
SITE=/usr/local/lib/python3*/dist-packages

read_list() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e 's/^[[:space:]]*//' -e '/^$/d' "$1"; }
log() { echo "[daisy-build] $*"; }

cmd=$1; shift
case "$cmd" in
  sources)
    mirror=$1; shift
    echo "deb $mirror trixie $*" > /etc/apt/sources.list
    rm -rf /etc/apt/sources.list.d/*
    log "apt-get update (trixie: $*)"
    # apt-get update only warns when an index cannot be fetched or verified: make that fatal
    out=$(apt-get -q update 2>&1) || { echo "$out"; exit 1; }
    echo "$out"
    if echo "$out" | grep -q '^[WE]: '; then echo "ERROR: apt-get update reported problems" >&2; exit 1; fi
    ;;
  apt)
    log "apt-get install from $1: $(read_list "$1" | tr '\n' ' ')"
    # shellcheck disable=SC2046
    apt-get install -y -q --no-install-recommends $(read_list "$1")
    ;;
  pip)
    [ -s "$CA" ] || { echo "ERROR: $CA missing: build with --bind /etc/ssl/certs:/mnt" >&2; exit 1; }
    log "pip install (wheels only, no dependency resolution) from $1: $(read_list "$1" | tr '\n' ' ')"
    # --no-deps: every Python distribution is either a pinned Debian package or listed here; pip check verifies.
    python3 -m pip install --no-cache-dir --no-deps --break-system-packages --only-binary=:all: \
        --disable-pip-version-check --cert "$CA" -r "$1"
    python3 -m pip check
    ;;
  strip-hdf5plugin)
    # The PyPI wheel ships its filter plugins with full debug info (185 MB); stripped they are ~20 MB.
    for d in $SITE/hdf5plugin/plugins; do
      [ -d "$d" ] || continue
      log "strip --strip-unneeded $d/*.so ($(du -sh "$d" | cut -f1) before)"
      strip --strip-unneeded "$d"/*.so
      log "after: $(du -sh "$d" | cut -f1)"
    done
    ;;
  purge)
    # LAST step of %post only: `dpkg --purge --force-depends` leaves apt's dependency state broken on purpose.
    # Removes packages that Debian dependencies drag in but the image's code paths never use; %test proves it.
    list=$(for p in $(read_list "$1"); do
             dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' && echo "$p"; done; true)
    log "purge (--force-depends): $(echo $list | tr '\n' ' ')"
    # shellcheck disable=SC2086
    [ -z "$list" ] || dpkg --purge --force-depends $list >/dev/null
    rm -rf /var/cache/debconf/*-old /var/lib/dpkg/*-old
    ;;
  finish)
    tools=$(read_list "$1" | sed 's/=.*//' | tr '\n' ' ')
    log "purging build-only tools: $tools"
    # shellcheck disable=SC2086
    apt-get purge -y -q --autoremove $tools
    apt-get clean
    # NEVER clean /tmp or /var/tmp here: during `apptainer build` they are the HOST's /tmp and /var/tmp
    # (daisy.containers binds private directories there as a guard, but a bare build would not).
    # These name the mirror (the rendered definition inside the SIF does too: never publish `inspect --deffile`).
    rm -rf /etc/apt/sources.list /etc/apt/sources.list.d /var/log/bootstrap.log /var/lib/apt/lists/* \
           /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt /root/.cache \
           /usr/share/doc/*/changelog* /usr/share/man/* /usr/share/info/* /usr/share/locale/*
    mkdir -p /opt/daisy
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
