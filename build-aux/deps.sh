#!/usr/bin/env bash
# Installs the system packages Airlock needs. Sourced by setup.sh and test.sh.
# Usage: deps.sh build|test
set -euo pipefail

BUILD_PKGS=(build-essential pkg-config libgtk-4-dev libadwaita-1-dev gettext
  libglib2.0-dev-bin meson ninja-build desktop-file-utils appstream
  xdg-desktop-portal dbus uidmap util-linux)
TEST_PKGS=(xvfb xauth dbus-x11 xdotool imagemagick bubblewrap hyperfine curl git
  python3 openssl iproute2 procps psmisc libglib2.0-bin sqlite3 librsvg2-bin
  gnome-icon-theme at-spi2-core acl systemd dbus-user-session)

want=("${BUILD_PKGS[@]}")
[ "${1:-build}" = test ] && want+=("${TEST_PKGS[@]}")

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing: ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "airlock: please install as root: apt-get install ${missing[*]}" >&2; exit 1
      fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
elif command -v dnf >/dev/null 2>&1; then
  echo "airlock: on Fedora, install: sudo dnf install gtk4-devel libadwaita-devel gettext meson desktop-file-utils appstream xdg-desktop-portal xorg-x11-server-Xvfb xdotool ImageMagick bubblewrap hyperfine" >&2
elif command -v pacman >/dev/null 2>&1; then
  echo "airlock: on Arch, install: sudo pacman -S --needed gtk4 libadwaita gettext meson desktop-file-utils appstream xdg-desktop-portal xorg-server-xvfb xdotool imagemagick bubblewrap hyperfine" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "airlock: Rust is missing. Install it with rustup (https://rustup.rs), then run this again." >&2
  exit 1
fi
