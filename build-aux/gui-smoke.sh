#!/bin/sh
# GUI smoke test: starts `airlock` (no arguments, so it opens its window) on
# a private Xvfb display with a private D-Bus session, waits for the window,
# takes a screenshot, checks it is not blank, quits the app through its
# `app.quit` action on D-Bus and checks that it exits with status 0.
#
#   build-aux/gui-smoke.sh target/debug/airlock
#
# The screenshot goes to ${ARTIFACTS_DIR:-test-artifacts}/gui-smoke.png.
# Needs: Xvfb, xdotool, ImageMagick (import, convert), dbus-run-session and
# gdbus. Prints one PASS or FAIL line; exits non-zero on failure.
set -u

WINDOW_TIMEOUT=30
EXIT_TIMEOUT=10

# Inner failures exit 3, so the outer part can tell them from a failing
# dbus-run-session.
fail() {
    echo "FAIL gui-smoke: $*"
    exit "${FAIL_STATUS:-1}"
}

# The part that runs inside the private D-Bus session.
if [ "${1:-}" = "--inner" ]; then
    FAIL_STATUS=3
    bin=$2
    shot=$3
    log=$4
    # X11 only, no accessibility bus, no dconf: nothing from the real session.
    unset WAYLAND_DISPLAY
    export GDK_BACKEND=x11 GTK_A11Y=none NO_AT_BRIDGE=1 GSETTINGS_BACKEND=memory
    if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -w "${XDG_RUNTIME_DIR:-/nonexistent}" ]; then
        XDG_RUNTIME_DIR=$(mktemp -d)
        export XDG_RUNTIME_DIR
    fi

    "$bin" >"$log" 2>&1 &
    app=$!

    waited=0
    until xdotool search --onlyvisible --name '^Airlock$' >/dev/null 2>&1; do
        kill -0 "$app" 2>/dev/null || { wait "$app"; fail "airlock exited (status $?) before showing its window; its output:
$(tail -n 20 "$log")"; }
        [ "$waited" -ge "$WINDOW_TIMEOUT" ] && { kill "$app"; fail "no window named Airlock after ${WINDOW_TIMEOUT} s"; }
        sleep 1
        waited=$((waited + 1))
    done
    # Mapped is not drawn yet: give GTK a moment for its first frames.
    sleep 2

    import -window root "$shot" || { kill "$app"; fail "import could not take a screenshot"; }
    echo "screenshot: $shot"
    spread=$(convert "$shot" -format '%[fx:standard_deviation]' info:) ||
        { kill "$app"; fail "convert could not read $shot"; }
    if ! awk -v s="$spread" 'BEGIN { exit !(s > 0.01) }'; then
        kill "$app"
        fail "the screenshot is blank (standard deviation $spread)"
    fi

    # GApplication exports its actions at the app id turned into a path.
    name=$(gdbus call --session --dest org.freedesktop.DBus \
        --object-path /org/freedesktop/DBus --method org.freedesktop.DBus.ListNames |
        grep -o "io\.github\.airlock\.Airlock[A-Za-z.]*" | head -n 1)
    [ -n "$name" ] || { kill "$app"; fail "airlock owns no name on the session bus"; }
    path="/$(printf '%s' "$name" | tr . /)"
    gdbus call --session --dest "$name" --object-path "$path" \
        --method org.gtk.Actions.Activate quit '[]' '{}' >/dev/null ||
        { kill "$app"; fail "cannot activate app.quit on $name $path"; }

    waited=0
    while kill -0 "$app" 2>/dev/null; do
        if [ "$waited" -ge "$EXIT_TIMEOUT" ]; then
            kill "$app"
            fail "airlock still runs ${EXIT_TIMEOUT} s after app.quit"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    wait "$app"
    status=$?
    [ "$status" -eq 0 ] || fail "airlock exited with status $status after app.quit; its output:
$(tail -n 20 "$log")"
    exit 0
fi

bin=${1:-}
[ -n "$bin" ] || { echo "usage: $0 PATH/TO/airlock" >&2; exit 2; }
[ -x "$bin" ] || fail "$bin is not an executable"
case $bin in /*) ;; *) bin=$(pwd)/$bin ;; esac
for tool in Xvfb xdotool import convert dbus-run-session gdbus awk; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail "$tool is missing (Debian: apt-get install xvfb xdotool imagemagick dbus libglib2.0-bin)"
done

artifacts=${ARTIFACTS_DIR:-test-artifacts}
mkdir -p "$artifacts" || fail "cannot create $artifacts"
shot=$artifacts/gui-smoke.png
log=$artifacts/gui-smoke.log
rm -f "$shot"

# A display number nobody uses.
n=90
while [ -e "/tmp/.X11-unix/X$n" ] || [ -e "/tmp/.X$n-lock" ]; do
    n=$((n + 1))
    [ "$n" -lt 200 ] || fail "no free X display number between 90 and 199"
done
Xvfb ":$n" -screen 0 1280x800x24 -nolisten tcp >"$artifacts/gui-smoke-xvfb.log" 2>&1 &
xvfb=$!
trap 'kill "$xvfb" 2>/dev/null' EXIT
export DISPLAY=":$n"
waited=0
until xdotool getdisplaygeometry >/dev/null 2>&1; do
    kill -0 "$xvfb" 2>/dev/null || fail "Xvfb did not start: $(tail -n 5 "$artifacts/gui-smoke-xvfb.log")"
    [ "$waited" -ge 10 ] && fail "Xvfb display :$n not ready after 10 s"
    sleep 1
    waited=$((waited + 1))
done

# The bus daemon and the services it starts log to stderr; keep that apart.
dbus-run-session -- sh "$0" --inner "$bin" "$shot" "$log" 2>"$artifacts/gui-smoke-dbus.log"
status=$?
case $status in
    0) echo "PASS gui-smoke: the window appeared, the screenshot is not blank, and airlock quit with status 0" ;;
    3) exit 1 ;;
    *) fail "dbus-run-session failed with status $status" ;;
esac
