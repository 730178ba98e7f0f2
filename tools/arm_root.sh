#!/usr/bin/env bash
# The arm64 root file system `make test-arm` runs vitedge in under QEMU, kept between runs:
#   ARM/rootfs  Debian's python3 (and the C++ runtime the wheels need) for arm64, unpacked
#               from the mirror this machine's apt uses (no chroot or binfmt_misc needed:
#               QEMU's -L prefix serves these files to the emulated program)
#   ARM/site    aarch64 wheels from PyPI for that python: this package's dependencies,
#               opencv-python-headless (video) and pytest; the package's own wheel is
#               reinstalled on every run
# Usage: tools/arm_root.sh ARM HOST_PYTHON
set -euo pipefail
ARM=$1
PY=$2
ROOTFS=$ARM/rootfs
SITE=$ARM/site
PIP=("$PY" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts)

if [ ! -f "$ARM/.rootfs" ]; then
  # the host's own apt sources (a deb822 .sources file or sources.list), and its release
  sources=$(ls /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1 || true)
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  [ -n "$sources" ] || { echo "no apt sources in /etc/apt: cannot make the arm64 root file system" >&2; exit 1; }
  rm -rf "$ROOTFS" && mkdir -p "$ARM"
  mmdebstrap --quiet --arch=arm64 --variant=extract --include=python3,libstdc++6,libgomp1 \
    "$suite" "$ROOTFS" "$sources"
  mkdir -p "$ROOTFS/proc"  # proc/cpuinfo: written per CPU model by tests/helpers/arm_device.py
  touch "$ARM/.rootfs"
fi

version=$(readlink "$ROOTFS/usr/bin/python3" | sed 's/^python//')
wheels=$ARM/wheels
rm -rf "$wheels" && mkdir -p "$wheels"
# a pure-Python wheel (VITEDGE_PURE=1: without the C resampler, which would be built for
# this machine's x86-64): the arm64 runtime resizes with Pillow, the same bytes
VITEDGE_PURE=1 "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps \
  --no-build-isolation . -w "$wheels"
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64)
# the wheels' manylinux tags this glibc runs (asked of the root file system's python)
glibc=$("$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3" -c \
        'import platform; print(platform.libc_ver()[1].split(".")[1])')
platform=(--python-version "$version" --implementation cp --only-binary=:all:
          --platform manylinux2014_aarch64)
for minor in $(seq 17 "$glibc"); do platform+=(--platform "manylinux_2_${minor}_aarch64"); done
if [ ! -f "$SITE/.installed" ] || [ pyproject.toml -nt "$SITE/.installed" ]; then
  rm -rf "$SITE"
  "${PIP[@]}" "${platform[@]}" --target "$SITE" "$wheels"/vitedge-*.whl \
    opencv-python-headless pytest
  touch "$SITE/.installed"
fi
# OpenVINO's aarch64 wheel, the host's version (an IR built here runs there); optional: its
# test skips where it does not install
ov=$("$PY" -c 'import openvino; print(openvino.__version__.split("-")[0])' 2>/dev/null || true)
if [ -n "$ov" ] && [ ! -d "$SITE/openvino" ]; then
  "${PIP[@]}" "${platform[@]}" --no-deps --target "$SITE" "openvino==$ov" openvino-telemetry || \
    echo "note: OpenVINO $ov for aarch64 did not install; its arm64 test will skip"
fi
"${PIP[@]}" "${platform[@]}" --no-deps --upgrade --target "$SITE" "$wheels"/vitedge-*.whl
# the C resampler, cross-compiled for arm64 where a cross compiler is (`make arm-system`
# installs gcc-aarch64-linux-gnu): its NEON build is what the runtime tests then run; the
# file records whether it was built (tests/test_arm.py reads it)
native=$SITE/vitedge/runtime/native
rm -f "$native"/_resample* "$ARM/native"
if command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
  suffix=$("$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3" -c \
           'import importlib.machinery as m; print(m.EXTENSION_SUFFIXES[0])')
  mkdir -p "$native"
  aarch64-linux-gnu-gcc -O3 -shared -fPIC -o "$native/_resample$suffix" \
    vitedge/runtime/native/resample.c
  echo "$native/_resample$suffix" > "$ARM/native"
else
  echo "note: no aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu): the arm64" \
       "runtime resizes with Pillow, and its C resampler is not tested"
fi
echo "arm64 root: $ROOTFS (python $version), wheels: $SITE"
