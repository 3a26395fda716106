#!/bin/sh
# DAISY image "tomopy": last step of %post. Runs INSIDE the image during the build.
# Removes what python3-tomopy's dependency tree drags in but tomopy never uses (measured: 605 -> ~340 MB SIF).
# `dpkg --purge --force-depends` leaves apt's dependency state broken on purpose, hence LAST step:
# nothing may call apt-get after this. %test and the ldd check below prove that nothing needed went.
set -eu
log() { echo "[daisy-build] $*"; }
installed() { for p; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' && echo "$p"; done; true; }

# 1. LLVM/Mesa: OpenCV (tomopy's accel library) links libGLX, whose vendor library (Mesa) pulls LLVM.
#    libGLX/libglvnd themselves stay (they are DT_NEEDED); the Mesa vendor driver is only dlopen'ed by glX calls.
GL="libllvm19 mesa-libgallium libglx-mesa0 libgl1-mesa-dri libgbm1 libz3-4 libvulkan1 libwayland-server0
    libdrm-amdgpu1 libdrm-intel1 libdrm-radeon1 libdrm-nouveau2 libdrm2 libdrm-common libsensors5 libsensors-config
    libedit2 libelf1t64 libx11-xcb1 libxcb-dri3-0 libxcb-glx0 libxcb-present0 libxcb-randr0 libxcb-shm0
    libxcb-sync1 libxcb-xfixes0 libxshmfence1 libxxf86vm1 libxcb-dri2-0"
# 2. MKL threading layers other than sequential (MKL_THREADING_LAYER=SEQUENTIAL in %environment; GNU/INTEL
#    layers fail here anyway) and the ILP64/gfortran interfaces (mkl_rt uses intel LP64).
#    The CPU kernels (def, mc, mc3, avx, avx2, avx512...) STAY: without them MKL aborts on Intel CPUs.
MKL="libmkl-gnu-thread libmkl-intel-thread libmkl-pgi-thread libmkl-tbb-thread
     libmkl-gf-ilp64 libmkl-gf-lp64 libmkl-intel-ilp64"
# 3. Python packages scikit-image depends on but tomopy's code paths never import.
PY="python3-sympy python3-mpmath python3-networkx python3-matplotlib python-matplotlib-data python3-fonttools
    python3-unicodedata2 unicode-data fonts-lyx python3-pil.imagetk python3-cycler python3-kiwisolver
    python3-pyparsing python3-contourpy python3-ufolib2 python3-tk tk8.6-blt2.5 blt libtk8.6 libtcl8.6"

before=$(du -sxm / 2>/dev/null | cut -f1)
# shellcheck disable=SC2086
purge=$(installed $GL $MKL $PY)
log "slim: dpkg --purge --force-depends $(echo $purge | tr '\n' ' ')"
# shellcheck disable=SC2086
dpkg --purge --force-depends $purge >/dev/null
rm -rf /var/cache/debconf/*-old /var/lib/dpkg/*-old
log "slim: ${before} MB -> $(du -sxm / 2>/dev/null | cut -f1) MB"

# Every shared library tomopy (and the libraries it loads) links against must still resolve.
missing=$(for f in /usr/lib/python3/dist-packages/tomopy/util/extern/*.so \
                   /usr/lib/x86_64-linux-gnu/libmkl_*.so /usr/lib/x86_64-linux-gnu/libopencv_*.so.*[0-9]; do
              [ -e "$f" ] && ldd "$f" 2>/dev/null | grep 'not found' | sed "s|^|$f: |"; done | sort -u)
if [ -n "$missing" ]; then echo "ERROR: slimming broke shared libraries:"; echo "$missing"; exit 1; fi
log "slim: ldd check passed"
