#!/usr/bin/env bash
# The compiled kernels for aarch64 (Pi 4/5, Jetson) built and checked on an x86-64 desk under
# QEMU user-mode emulation: an arm64 Debian bookworm root (Python 3.11, the gateway's), the
# edge packages and numba from PyPI's aarch64 wheels, scripts' build for --target-cpu generic,
# then the pipeline over SKAB files on the compiled module and on Numba's JIT inside the
# emulator, compared with the x86-64 JIT (bench/results/kernels_aarch64.json holds a run).
#   sudo bench/aarch64_emulated.sh ROOTFS SKAB_WORK
# SKAB_WORK: bundles, keys and CSVs made on the desk (see bench/aarch64_parity.py and the
# JSON's "how"). Needs root (debootstrap, chroot, binfmt_misc) and the network.
set -euo pipefail
ROOTFS=${1:?rootfs directory}
WORK=${2:?directory with bundles, keys and CSVs}
SRC=$(cd "$(dirname "$0")/.." && pwd)
apt-get install -y -q qemu-user-static debootstrap
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] ||
    grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
[[ -x "$ROOTFS/usr/bin/python3" ]] || debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-dev,gcc,g++,libc6-dev,ca-certificates \
    bookworm "$ROOTFS" http://deb.debian.org/debian
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
mountpoint -q "$ROOTFS/proc" || mount --bind /proc "$ROOTFS/proc"
mountpoint -q "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
chroot "$ROOTFS" /bin/bash -c "[[ -x /venv/bin/python ]] || python3 -m venv /venv"
chroot "$ROOTFS" /venv/bin/pip install -q numpy numba setuptools pydantic cryptography \
    ai-edge-litert paho-mqtt pymodbus pyserial prometheus-client
rm -rf "$ROOTFS/src" && mkdir -p "$ROOTFS/src"
git -C "$SRC" archive HEAD edge_agent scripts pyproject.toml | tar -x -C "$ROOTFS/src"
rm -rf "$ROOTFS/skab" && cp -r "$WORK" "$ROOTFS/skab" && cp "$SRC/bench/aarch64_parity.py" "$ROOTFS/src/"
time chroot "$ROOTFS" /bin/bash -c \
    "cd /src && /venv/bin/python -m edge_agent.kernels.build --out /out --target-cpu generic"
chroot "$ROOTFS" /bin/bash -c "cd /skab && EDGE_KERNELS=aot EDGE_KERNELS_DIR=/out \
    /venv/bin/python /src/aarch64_parity.py run /src /skab /skab/arm_aot.npz"
chroot "$ROOTFS" /bin/bash -c "cd /skab && EDGE_KERNELS=jit NUMBA_CACHE_DIR=/tmp/nc \
    /venv/bin/python /src/aarch64_parity.py run /src /skab /skab/arm_jit.npz"
EDGE_KERNELS=jit python3 "$SRC/bench/aarch64_parity.py" run "$SRC" "$WORK" "$WORK/x86_jit.npz"
for b in arm_aot arm_jit; do
    python3 "$SRC/bench/aarch64_parity.py" compare "$WORK/x86_jit.npz" "$ROOTFS/skab/$b.npz"
done
