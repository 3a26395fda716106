#!/usr/bin/env bash
# Install Apptainer (>= 1.3) for DAISY on Debian 12 (bookworm) or Debian 13 (trixie). Idempotent.
#
#   Debian 13: sid's apptainer .deb installs as is (`apt-get install ./apptainer_*.deb`).
#   Debian 12: sid's binaries need a newer glibc than bookworm has; we unpack the .deb with
#              `dpkg -x` and point the apptainer binary and its starter at a private glibc (taken
#              from trixie's or sid's libc6) with patchelf. The system libc is left alone.
#   Both:      host packages (squashfuse, squashfs-tools, uidmap, debootstrap, ...), root's
#              capabilities fix, /etc/subuid + /etc/subgid for --fakeroot, `singularity` name for spython.
#
# No registry host is written anywhere: the Debian mirror is read from the host's apt configuration.
# See /work/shared/reference/apptainer-on-debian.md for the measurements behind each step.
set -euo pipefail

MIN_VERSION=1.3
PREFIX_BASE=/opt/daisy-apptainer          # private glibc lives under here (Debian 12 only)
WORK=/var/cache/daisy-apptainer           # private apt state + downloaded .debs
SUBID_START=100000
SUBID_COUNT=65536

say() { printf '[install-apptainer] %s\n' "$*"; }
die() { printf '[install-apptainer] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
[ -r /etc/os-release ] || die "no /etc/os-release: not a Debian system?"
# shellcheck disable=SC1091
. /etc/os-release
CODENAME=${VERSION_CODENAME:-}
[ "${ID:-}" = debian ] || die "unsupported distribution '${ID:-?}' (Debian 12 or 13 expected)"

version_ge() { dpkg --compare-versions "$1" ge "$2"; }

apptainer_ok() {
    command -v apptainer >/dev/null 2>&1 || return 1
    local v
    v=$(apptainer --version 2>/dev/null | awk '{print $NF}') || return 1
    [ -n "$v" ] && version_ge "$v" "$MIN_VERSION"
}

# --------------------------------------------------------------------------- host packages
HOST_PKGS=(patchelf squashfs-tools squashfuse uidmap debootstrap libcap2-bin fuse3 ca-certificates
           libseccomp2)
install_host_packages() {
    local missing=()
    for p in "${HOST_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing host packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        say "host packages present"
    fi
}

# --------------------------------------------------------------------------- mirror + private apt
mirror_uri() {
    # The entry whose release is the host's codename; else the first plain Debian entry.
    local m
    m=$(apt-get indextargets --no-release-info --format '$(RELEASE) $(REPO_URI)' 'Created-By: Packages' \
        | awk -v c="$CODENAME" '$1==c {print $2; exit}')
    if [ -z "$m" ]; then
        m=$(apt-get indextargets --no-release-info --format '$(RELEASE) $(REPO_URI)' 'Created-By: Packages' \
            | awk '$1 !~ /-security$/ {print $2; exit}')
    fi
    [ -n "$m" ] || die "could not read a Debian mirror from apt (apt-get indextargets)"
    printf '%s' "$m"
}

PAPT=()
setup_private_apt() {
    local mirror
    mirror=$(mirror_uri)
    mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs"
    : > "$WORK/status"
    # Written at run time from the host's own apt configuration; never committed anywhere.
    cat > "$WORK/sources.list" <<EOF
deb $mirror sid main contrib non-free
deb $mirror trixie main
EOF
    PAPT=(-o "Dir::Etc::SourceList=$WORK/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$WORK/lists" -o "Dir::State::Status=$WORK/status"
          -o "Dir::Cache=$WORK/cache" -o Acquire::Check-Valid-Until=false
          -o APT::Sandbox::User=root)
    say "refreshing private apt lists (sid + trixie)"
    apt-get "${PAPT[@]}" update -qq >/dev/null
}

pkg_field() {  # pkg_field PKG[/release] FIELD -> value for the candidate
    apt-cache "${PAPT[@]}" show "$1" 2>/dev/null | awk -v f="$2:" '$1==f {sub(/^[^:]*: */,""); print; exit}'
}

download() {   # download PKG[/release] -> prints path of .deb
    (cd "$WORK/debs" && apt-get "${PAPT[@]}" download -qq "$1" >/dev/null) || die "apt-get download $1 failed"
    local name=${1%%/*} ver
    ver=$(pkg_field "$1" Version)
    ls "$WORK/debs/${name}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1
}

# --------------------------------------------------------------------------- install apptainer
install_apptainer_trixie() {
    setup_private_apt
    local deb
    deb=$(download apptainer/sid)
    say "installing $(basename "$deb") with apt-get (all dependencies from the host's release)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$deb" >/dev/null; then
        # sid moved past this release (e.g. a newer glibc): the Debian 12 way works here too
        say "apt-get cannot install $(basename "$deb") on $CODENAME: unpacking it with a private glibc instead"
        install_apptainer_private_glibc
    fi
}

install_apptainer_private_glibc() {
    setup_private_apt
    local deb need libc_ver rel libc_deb arch prefix ld
    deb=$(download apptainer/sid)
    # glibc requirement from the package's Depends: "libc6 (>= 2.38)"
    need=$(pkg_field apptainer/sid Depends | tr ',' '\n' | sed -n 's/^ *libc6 (>= *\([^)]*\)).*/\1/p' | head -n1)
    [ -n "$need" ] || need=2.38
    rel=trixie
    libc_ver=$(pkg_field libc6/trixie Version)
    if ! version_ge "${libc_ver%%-*}" "$need"; then rel=sid; libc_ver=$(pkg_field libc6/sid Version); fi
    say "apptainer $(pkg_field apptainer/sid Version) needs glibc >= $need: using libc6 $libc_ver from $rel (private copy)"
    libc_deb=$(download "libc6/$rel")
    arch=$(dpkg --print-architecture)
    prefix="$PREFIX_BASE/glibc-${libc_ver}"
    local tmp
    tmp=$(mktemp -d)
    dpkg -x "$libc_deb" "$tmp/libc"
    mkdir -p "$prefix"
    # only the real libraries; the .deb's usr/lib64/ld-linux symlink would clobber the system loader
    cp -a "$tmp"/libc/usr/lib/*-linux-gnu/*.so* "$prefix"/
    ld=$(ls "$prefix"/ld-linux*.so.* 2>/dev/null | head -n1)
    [ -n "$ld" ] || die "no dynamic loader found in libc6 $libc_ver ($arch)"

    say "unpacking apptainer into / (usr/ and var/lib/apptainer/)"
    dpkg -x "$deb" "$tmp/app"
    cp -a "$tmp/app/usr/." /usr/
    mkdir -p /var/lib/apptainer
    cp -a "$tmp/app/var/lib/apptainer/." /var/lib/apptainer/ 2>/dev/null || true
    [ -d "$tmp/app/etc" ] && cp -an "$tmp/app/etc/." /etc/   # keep an existing apptainer.conf
    mkdir -p /var/lib/apptainer/mnt/session /var/lib/apptainer/mnt/source /var/lib/apptainer/mnt/final \
             /var/lib/apptainer/mnt/overlay /var/lib/apptainer/mnt/container
    rm -rf "$tmp"

    # dependencies of apptainer other than libc6 must be satisfiable from the host (libseccomp2 etc.)
    local dep
    for dep in $(pkg_field apptainer/sid Depends | tr ',' '\n' | sed 's/|.*//; s/(.*//; s/ //g' | grep -v '^libc6$'); do
        dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'install ok installed' \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$dep" >/dev/null \
            || say "warning: could not install dependency $dep"
    done

    local bin
    for bin in /usr/bin/apptainer /usr/lib/*-linux-gnu/apptainer/bin/starter /usr/libexec/apptainer/bin/starter; do
        [ -f "$bin" ] || continue
        say "patchelf: $bin -> interpreter $ld, rpath $prefix"
        patchelf --set-interpreter "$ld" --force-rpath --set-rpath "$prefix" "$bin"
    done
}

register_singularity_name() {
    # spython hard-codes the binary name `singularity`.
    if command -v singularity >/dev/null 2>&1; then
        say "singularity name present ($(readlink -f "$(command -v singularity)"))"
        return
    fi
    say "registering /usr/bin/singularity -> apptainer (alternative)"
    update-alternatives --install /usr/bin/singularity singularity /usr/bin/apptainer 10 >/dev/null
}

# --------------------------------------------------------------------------- configuration
apptainer_conf() {
    local c
    for c in /etc/apptainer/apptainer.conf; do [ -f "$c" ] && { echo "$c"; return; }; done
    die "apptainer.conf not found"
}

configure_capabilities() {
    # Root here may lack CAP_SYS_RESOURCE in its bounding set; apptainer's default ("full") then fails.
    local conf capbnd want have
    conf=$(apptainer_conf)
    if grep -Eq '^\s*root default capabilities\s*=\s*file\s*$' "$conf"; then
        say "apptainer.conf: root default capabilities = file (already)"
    else
        say "apptainer.conf: setting 'root default capabilities = file'"
        if grep -Eq '^\s*root default capabilities\s*=' "$conf"; then
            sed -i -E 's/^\s*root default capabilities\s*=.*/root default capabilities = file/' "$conf"
        else
            echo 'root default capabilities = file' >> "$conf"
        fi
    fi
    capbnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
    want=$(capsh --decode="0x$capbnd" | sed 's/^.*=//')
    have=$(apptainer capability list root 2>/dev/null | sed -n 's/^root[^:]*:\s*//p' | tr -d ' ' || true)
    local missing=0 c
    for c in ${want//,/ }; do
        case ",$have," in *",${c^^},"*) ;; *) missing=1; break;; esac
    done
    if [ "$missing" -eq 0 ]; then
        say "root file capabilities already granted"
    else
        say "granting root its bounding-set capabilities (CapBnd 0x$capbnd)"
        apptainer capability add --user root "$want" >/dev/null 2>&1
    fi
}

add_subid() {  # add_subid FILE USER
    local file=$1 user=$2 start
    touch "$file"
    if grep -q "^${user}:" "$file"; then return 0; fi
    start=$(awk -F: -v s="$SUBID_START" 'BEGIN{m=s} {e=$2+$3; if (e>m) m=e} END{print m}' "$file")
    echo "${user}:${start}:${SUBID_COUNT}" >> "$file"
    say "$file: ${user}:${start}:${SUBID_COUNT}"
}

configure_shared_loop_devices() {
    # Containers of one image share its loop device, hence its squashfs page cache: DAISY keeps
    # each image of a run mounted (daisy/images/execute.py: hold_images), so that a job's imports read
    # warm pages (measured in docs/benchmarks.md: step start).
    local conf
    conf=$(apptainer_conf)
    if grep -Eq '^\s*shared loop devices\s*=\s*yes\s*$' "$conf"; then
        say "apptainer.conf: shared loop devices = yes (already)"
    elif grep -Eq '^\s*shared loop devices\s*=' "$conf"; then
        say "apptainer.conf: setting 'shared loop devices = yes'"
        sed -i -E 's/^\s*shared loop devices\s*=.*/shared loop devices = yes/' "$conf"
    else
        echo 'shared loop devices = yes' >> "$conf"
    fi
}

configure_subids() {
    local users u
    users=$(awk -F: '$1=="root" || ($3>=1000 && $3<60000) {print $1}' /etc/passwd)
    for u in $users; do
        add_subid /etc/subuid "$u"
        add_subid /etc/subgid "$u"
    done
}

configure_fuse() {
    # Ordinary users mount SIFs with squashfuse, which needs /dev/fuse read-write. Debian's udev
    # makes it 0666; some VMs (this machine kind) ship it 0600, and then every non-root
    # `apptainer exec` and `build --fakeroot` fails with "failed to open /dev/fuse".
    [ -e /dev/fuse ] || return 0
    local rule=/etc/udev/rules.d/60-daisy-fuse.rules
    if [ ! -f "$rule" ]; then
        mkdir -p "$(dirname "$rule")"
        echo 'KERNEL=="fuse", MODE="0666"' > "$rule"
        say "$rule: /dev/fuse mode 0666 at boot (for non-root squashfuse mounts)"
    fi
    local mode
    mode=$(stat -c %a /dev/fuse)
    if [ "$mode" != 666 ]; then
        chmod 0666 /dev/fuse
        say "/dev/fuse made 0666 (was $mode): ordinary users can run images"
    fi
}

# --------------------------------------------------------------------------- main
start=$(date +%s.%N)
if apptainer_ok; then
    say "apptainer $(apptainer --version | awk '{print $NF}') already installed at $(command -v apptainer)"
else
    install_host_packages
    case "$CODENAME" in
        bookworm) install_apptainer_private_glibc ;;
        trixie|forky|sid) install_apptainer_trixie ;;
        *) die "unsupported Debian release '$CODENAME' (need bookworm or trixie)" ;;
    esac
    apptainer_ok || die "apptainer still does not run after installation"
    say "installed $(apptainer --version)"
fi
install_host_packages
register_singularity_name
configure_capabilities
configure_shared_loop_devices
configure_subids
configure_fuse
say "done in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.2f", e-s}') s"
