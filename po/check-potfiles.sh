#!/bin/sh
# Checks that po/POTFILES.in is accurate: every file it lists exists, and
# every source or UI file with translatable strings is listed. Run from
# anywhere; prints what to add or remove and exits 1 when it is wrong.
set -eu
top=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
cd "$top"
listed=$(mktemp)
wanted=$(mktemp)
trap 'rm -f "$listed" "$wanted"' EXIT
grep -v -e '^#' -e '^[[:space:]]*$' po/POTFILES.in | sort -u >"$listed"
{
    # Rust sources calling gettext (src/i18n.rs only defines the helpers).
    grep -rlE '\b(n?gettext|gettext_f)\(' src --include='*.rs' | grep -v '^src/i18n\.rs$' || true
    grep -rl 'translatable="yes"' data/ui --include='*.ui' || true
    ls data/*.desktop.in data/*.metainfo.xml.in data/*.gschema.xml
} | sort -u >"$wanted"
status=0
missing=$(comm -13 "$listed" "$wanted")
if [ -n "$missing" ]; then
    printf 'po/POTFILES.in lacks files with translatable strings:\n%s\n' "$missing"
    status=1
fi
for f in $(cat "$listed"); do
    if [ ! -f "$f" ]; then
        printf 'po/POTFILES.in lists %s, which does not exist\n' "$f"
        status=1
    fi
done
[ "$status" -eq 0 ] && echo "po/POTFILES.in lists every file with translatable strings"
exit "$status"
