#!/usr/bin/env bash
# Validates the GNOME data exactly as meson installs it: the desktop file and
# metainfo after translation merging (desktop-file-validate, appstreamcli),
# the GSettings schema (glib-compile-schemas --strict) and po/POTFILES.in.
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(mktemp -d /tmp/airlock-meson.XXXXXX)
trap 'rm -rf "$B"' EXIT
meson setup "$B" >/dev/null
ninja -C "$B" data/io.github.airlock.Airlock.desktop data/io.github.airlock.Airlock.metainfo.xml >/dev/null
meson test -C "$B" --no-rebuild --suite data --print-errorlogs
