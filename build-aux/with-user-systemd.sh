#!/usr/bin/env bash
# Runs a command as USER beside a real systemd user manager on a private
# session bus, the way a desktop session has one:
#
#   bash build-aux/with-user-systemd.sh USER -- COMMAND [ARGS...]
#
# For CI machines that were not booted with systemd (containers, VMs
# started another way): as root, it gives the user a delegated cgroup v2
# folder and, in a mount namespace of its own, the /run/systemd/system
# folder by which systemd decides that it may run. The command keeps the
# AIRLOCK_* variables of our environment. Exits 77 when this machine
# cannot host a user manager at all (no systemd, no cgroup v2, not root).
set -euo pipefail
SYSTEMD=/lib/systemd/systemd

case ${1:-} in
--stage2)
  # Root, in a mount namespace of our own.
  shift; USER_NAME=$1 RUNTIME=$2 DELEGATED=$3; shift 4
  if [ ! -d /run/systemd/system ]; then
    mkdir -p /run/systemd
    mount -t tmpfs -o mode=755 tmpfs /run/systemd
    mkdir /run/systemd/system
  fi
  echo $$ >"$DELEGATED/cgroup.procs"
  PASS=()
  while IFS='=' read -r k v; do
    case $k in AIRLOCK_*) PASS+=("$k=$v") ;; esac
  done < <(env)
  home=$(getent passwd "$USER_NAME" | cut -d: -f6)
  exec runuser -u "$USER_NAME" -- env -i PATH=/usr/local/bin:/usr/bin:/bin \
    HOME="$home" USER="$USER_NAME" LANG=C.UTF-8 XDG_RUNTIME_DIR="$RUNTIME" "${PASS[@]}" \
    bash "$RUNTIME/with-user-systemd.sh" --stage3 -- "$@"
  ;;
--stage3)
  # The user. The manager starts the session bus itself (dbus.socket of
  # dbus-user-session), as in a desktop session, and is on it once the bus
  # runs: it joins only a bus whose units it manages.
  shift 2
  export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"
  "$SYSTEMD" --user >"$XDG_RUNTIME_DIR/systemd.log" 2>&1 &
  manager=$!
  state=
  for _ in $(seq 1 100); do
    state=$(systemctl --user is-system-running 2>/dev/null || true)
    case $state in running | degraded) break ;; esac
    sleep 0.1
  done
  case $state in
  running | degraded) ;;
  *)
    echo "with-user-systemd: the user manager did not start (${state:-no answer})" >&2
    cat "$XDG_RUNTIME_DIR/systemd.log" >&2
    kill "$manager" 2>/dev/null || true
    exit 77
    ;;
  esac
  on_bus=
  for _ in $(seq 1 100); do
    if dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
      org.freedesktop.DBus.NameHasOwner string:org.freedesktop.systemd1 2>/dev/null | grep -q "boolean true"; then
      on_bus=1
      break
    fi
    sleep 0.1
  done
  if [ -z "$on_bus" ]; then
    echo "with-user-systemd: the user manager is not on the session bus" >&2
    cat "$XDG_RUNTIME_DIR/systemd.log" >&2
    kill "$manager" 2>/dev/null || true
    exit 77
  fi
  rc=0
  "$@" || rc=$?
  kill "$manager" 2>/dev/null || true
  wait "$manager" 2>/dev/null || true
  exit $rc
  ;;
esac

USER_NAME=$1; shift
[ "${1:-}" = "--" ] && shift
[ -x "$SYSTEMD" ] || { echo "with-user-systemd: $SYSTEMD is missing" >&2; exit 77; }
[ -e /usr/lib/systemd/user/dbus.socket ] || { echo "with-user-systemd: dbus-user-session is missing" >&2; exit 77; }
[ "$(id -u)" -eq 0 ] || { echo "with-user-systemd: must start as root" >&2; exit 77; }
CG=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
[ -n "$CG" ] || { echo "with-user-systemd: no cgroup v2 file system" >&2; exit 77; }

DELEGATED="$CG/airlock-ci-user-$(id -u "$USER_NAME")"
mkdir -p "$DELEGATED"
chown -R "$USER_NAME:" "$DELEGATED"
RUNTIME=$(mktemp -d /tmp/airlock-runtime.XXXXXX)
cp "$0" "$RUNTIME/with-user-systemd.sh"
chmod 755 "$RUNTIME/with-user-systemd.sh"
chown "$USER_NAME:" "$RUNTIME"
chmod 700 "$RUNTIME"
rc=0
unshare -m --propagation private bash "$0" --stage2 "$USER_NAME" "$RUNTIME" "$DELEGATED" -- "$@" || rc=$?
rm -rf "$RUNTIME"
# Empty folders only: a process left behind keeps its folder, and shows.
find "$DELEGATED" -depth -type d -exec rmdir {} + 2>/dev/null || true
exit $rc
