#!/usr/bin/env bash
# Install, idempotently, everything edgekiln's builder and test suite need on Debian/Ubuntu:
# the host tools (apt) and a Python virtual environment in .venv with every extra.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  make git ca-certificates binutils
  squashfs-tools dosfstools mtools e2fsprogs fdisk gdisk
  qemu-system-x86 qemu-utils ovmf grub-efi-amd64-bin grub-pc-bin grub-common grub-emu
  debootstrap mmdebstrap arch-test bmap-tools zstd xdelta3 cpio time
  qemu-user-static busybox-static binfmt-support openssl
  libubootenv-tool u-boot-tools u-boot-qemu qemu-system-arm
  mosquitto tmux ffmpeg
  libyuv0
  libopenh264-7 gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-{base,good,ugly}
  postgresql libpq5 chromium
)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PYTHON --version)"
  if ! "$PYTHON" -m venv .venv; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$PYTHON" -m venv .venv
  fi
fi

# Reinstall only when the project's requirements changed since the last bootstrap.
stamp=.venv/.edgekiln-bootstrap
want=$(cat pyproject.toml constraints.txt 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[all,dev]'
  echo "$want" > "$stamp"
fi
echo "bootstrap: ready"
