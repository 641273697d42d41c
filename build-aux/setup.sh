#!/usr/bin/env bash
# First command of the README: installs what is missing, builds Airlock and
# opens it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash build-aux/deps.sh build
cargo build --release
echo "==> built target/release/airlock"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec target/release/airlock
else
  echo "No display found: run target/release/airlock from your desktop session."
fi
