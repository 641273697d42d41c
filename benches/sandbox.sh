#!/usr/bin/env bash
# Sandbox and monitoring benchmarks (issues 3 and 4). Not a test and not run
# by CI: timings depend on the machine and its load.
#
#   bash benches/sandbox.sh
#
# Builds the release binary, then measures side by side in one run, every
# configuration interleaved (A, B, C, A, B, C, …) so that load drifting over
# the run hits all of them alike:
#   - start latency of /bin/true: bare, a strict bwrap, `airlock run`;
#   - a file-heavy workload (find, grep -r, tar) in a 20,000-file grant:
#     bare, bwrap, airlock with the grant read-only and read-write, and a
#     plain overlayfs mounted by hand (the overlay's own cost, for reference);
#   - monitoring: the same workload and a syscall-heavy micro-benchmark
#     (stat, getppid) with `--watch off`, `denials` and `all`.
# Started as root, everything runs as the unprivileged user airlock-test (the
# real case), and start latency is measured once more as root.
# The tables replace the `## Sandbox` and `## Monitoring` sections of
# docs/benchmarks.md (`--no-write` only prints them).
#
# Environment: START_RUNS (200), WORK_RUNS (10), MICRO_RUNS (5),
# MICRO_CALLS (1000000), ROOT_START_RUNS (100, 0 skips the root case),
# BENCH_USER (airlock-test), BUILD (1; 0 uses the release binary as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=$ROOT/target
WRITE=1
[ "${1:-}" = "--no-write" ] && WRITE=0

START_RUNS=${START_RUNS:-200}
WORK_RUNS=${WORK_RUNS:-10}
MICRO_RUNS=${MICRO_RUNS:-5}
MICRO_CALLS=${MICRO_CALLS:-1000000}
ROOT_START_RUNS=${ROOT_START_RUNS:-100}
BENCH_USER=${BENCH_USER:-airlock-test}
PY=/usr/bin/python3

command -v bwrap >/dev/null || { echo "bwrap is needed (apt-get install bubblewrap)" >&2; exit 1; }
command -v cc >/dev/null || { echo "cc is needed (apt-get install gcc)" >&2; exit 1; }

if [ "${BUILD:-1}" != 0 ]; then
  cargo build --release --bins
fi

WORK=$(mktemp -d /tmp/airlock-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
# The checkout may sit below a folder the bench user cannot enter.
mkdir -p "$WORK/bin"
cp "$CARGO_TARGET_DIR/release/airlock" "$WORK/bin/"
if [ -x "$CARGO_TARGET_DIR/release/airlock-sandbox-helper" ]; then
  cp "$CARGO_TARGET_DIR/release/airlock-sandbox-helper" "$WORK/bin/"
fi

cat >"$WORK/sysbench.c" <<'C'
/* N calls of stat (on the path given) or getppid; prints the nanoseconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
  if (argc < 4) return 2;
  long n = atol(argv[2]);
  struct stat st;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  if (strcmp(argv[1], "stat") == 0) {
    for (long i = 0; i < n; i++)
      if (stat(argv[3], &st) != 0) return 1;
  } else {
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
  return 0;
}
C
cc -O2 -o "$WORK/bin/sysbench" "$WORK/sysbench.c"

cat >"$WORK/landlock-exec.c" <<'C'
/* The Landlock rules airlock applies to a task with one read-only grant
   (the same handled rights and rules, from src/sandbox/landlock.rs), and
   nothing else, then exec: the "landlock by hand" reference, what Landlock
   alone costs a workload. Usage: llexec RO_GRANT -- CMD ARGS... */
#define _GNU_SOURCE
#include <linux/landlock.h>
#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)
#endif
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int add(int rs, const char *p, __u64 access) {
    int fd = open(p, O_PATH | O_CLOEXEC);
    if (fd < 0) return 0; /* missing system folders are not granted */
    struct landlock_path_beneath_attr a = { .allowed_access = access, .parent_fd = fd };
    int r = syscall(SYS_landlock_add_rule, rs, LANDLOCK_RULE_PATH_BENEATH, &a, 0);
    close(fd);
    return r;
}
int main(int argc, char **argv) {
    if (argc < 4 || strcmp(argv[2], "--")) { fprintf(stderr, "usage: landlock-exec RO_GRANT -- CMD...\n"); return 2; }
    int abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi < 1) { fprintf(stderr, "no landlock\n"); return 1; }
    if (abi > 6) abi = 6; /* airlock's TARGET_ABI */
    __u64 all = (LANDLOCK_ACCESS_FS_MAKE_SYM << 1) - 1;           /* ABI 1 */
    if (abi >= 2) all |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3) all |= LANDLOCK_ACCESS_FS_TRUNCATE;
    if (abi >= 5) all |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
    __u64 rx = LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
    struct landlock_ruleset_attr ra = { .handled_access_fs = all };
    int rs = syscall(SYS_landlock_create_ruleset, &ra, sizeof ra, 0);
    if (rs < 0) { perror("landlock_create_ruleset"); return 1; }
    const char *ro[] = { "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", argv[1] };
    const char *home = getenv("HOME");
    const char *rw[] = { "/tmp", "/dev", home ? home : "/nonexistent" };
    if (add(rs, "/", LANDLOCK_ACCESS_FS_READ_DIR)) { perror("rule /"); return 1; }
    for (unsigned i = 0; i < sizeof ro / sizeof *ro; i++) if (add(rs, ro[i], rx)) { perror(ro[i]); return 1; }
    for (unsigned i = 0; i < sizeof rw / sizeof *rw; i++) if (add(rs, rw[i], all)) { perror(rw[i]); return 1; }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_landlock_restrict_self, rs, 0)) { perror("restrict"); return 1; }
    execvp(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
}
C
cc -O2 -o "$WORK/bin/landlock-exec" "$WORK/landlock-exec.c"

cat >"$WORK/harness.py" <<'PY'
"""Interleaved timing harness; `run` measures, `render` writes Markdown."""
import json, os, platform, re, statistics, subprocess, sys, time

def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]

def bwrap(binds, argv):
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
           "--ro-bind", "/usr", "/usr"]
    for l in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink("/" + l):
            cmd += ["--symlink", os.readlink("/" + l), "/" + l]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for kind, d in binds:
        cmd += [kind, d, d]
    return cmd + ["--cap-drop", "ALL"] + argv

def airlock(exe, grants, watch, argv):
    cmd = [exe, "run"]
    for g in grants:
        cmd += ["--grant", g]
    if watch:
        cmd += ["--watch", watch]
    return cmd + ["--"] + argv

def overlay_by_hand(tree, argv):
    """argv over a plain overlayfs of tree mounted by hand in a user and
    mount namespace (no Landlock, seccomp or anything else of airlock's):
    the cost of the overlay alone, for the read-write column."""
    script = ('u=$(mktemp -d) && mkdir "$u/u" "$u/w" && '
              'mount -t overlay overlay -o "lowerdir=$0,upperdir=$u/u,workdir=$u/w,userxattr" "$0" && '
              '"$@"; r=$?; umount "$0"; rm -rf "$u"; exit $r')
    return ["unshare", "--user", "--map-root-user", "--mount", "/bin/sh", "-c", script, tree] + argv

def timed(argv, inner=False):
    """Wall time of argv in ns; with inner, also the ns it printed."""
    t = time.perf_counter_ns()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=900)
    wall = time.perf_counter_ns() - t
    if r.returncode != 0:
        sys.exit("failed (%d): %s\n%s" % (r.returncode, " ".join(argv), r.stderr.decode(errors="replace")[-2000:]))
    if inner:
        return wall, int(r.stdout.decode().split()[-1])
    return wall, None

def make_tree(d):
    if os.path.isdir(d):
        return
    words = ("sandbox overlay landlock seccomp namespace agent review grant commit "
             "policy monitor denial proxy folder task supervisor helper").split()
    for i in range(200):
        sub = os.path.join(d, "dir%03d" % i)
        os.makedirs(sub)
        for j in range(100):
            lines = []
            for k in range(40):
                w = [words[(i * 7 + j * 3 + k * 5 + m) % len(words)] for m in range(9)]
                lines.append("%d %s" % (k, " ".join(w)))
            if j % 10 == 0:
                lines.append("needle-%d-%d" % (i, j))
            with open(os.path.join(sub, "file%03d.txt" % j), "w") as f:
                f.write("\n".join(lines) + "\n")

def run(args):
    work, label, exe = args["work"], args["label"], args["airlock"]
    out = {"label": label, "user": subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()}
    grant = os.path.join(work, "grant-" + label)
    os.makedirs(grant, exist_ok=True)
    helptext = subprocess.run([exe, "run", "--help"], capture_output=True, text=True).stdout
    watch = "--watch" in helptext
    watch_off = watch and re.search(r"`off`|\boff\b", helptext) is not None
    out["watch"], out["watch_off"] = watch, watch_off

    # Start latency.
    true = ["/bin/true"]
    variants = [
        ("bare", true),
        ("bwrap", bwrap([("--bind", grant)], true)),
        ("airlock", airlock(exe, [grant + ":rw"], None, true)),
    ]
    for _, argv in variants:  # warm caches, fail early
        timed(argv)
    samples = {n: [] for n, _ in variants}
    for _ in range(args["start_runs"]):
        for n, argv in variants:
            samples[n].append(timed(argv)[0] / 1e6)
    out["start"] = {n: {"median": statistics.median(s), "p95": pct(s, 95), "runs": len(s)}
                    for n, s in samples.items()}
    if args["start_only"]:
        return out

    tree = os.path.join(work, "tree")
    binp = os.path.join(work, "bin")
    make_tree(tree)
    nfiles = sum(len(f) for _, _, f in os.walk(tree))
    out["tree_files"] = nfiles
    timer = ["/usr/bin/python3", "-c",
             "import subprocess,sys,time\n"
             "t=time.perf_counter_ns()\n"
             "r=subprocess.run(['/bin/sh','-c',sys.argv[1]],stdout=subprocess.DEVNULL)\n"
             "print(time.perf_counter_ns()-t)\n"
             "sys.exit(r.returncode)\n"]
    loads = [
        ("find DIR -type f | wc -l", "find %s -type f | wc -l" % tree),
        ("grep -r PATTERN DIR", "grep -r needle-1 %s" % tree),
        ("tar -cf - DIR | wc -c", "tar -cf - %s | wc -c" % tree),
    ]
    conf = [
        ("bare", lambda a: a),
        ("bwrap", lambda a: bwrap([("--bind", tree)], a)),
        ("airlock ro", lambda a: airlock(exe, [tree + ":ro"], None, a)),
        ("landlock by hand", lambda a: [os.path.join(binp, "landlock-exec"), tree, "--"] + a),
        ("airlock rw", lambda a: airlock(exe, [tree + ":rw"], "denials" if watch else None, a)),
        ("overlay by hand", lambda a: overlay_by_hand(tree, a)),
    ]
    if watch_off:
        conf.append(("airlock rw, watch off", lambda a: airlock(exe, [tree + ":rw"], "off", a)))
    if watch:
        conf.append(("airlock rw, watch all", lambda a: airlock(exe, [tree + ":rw"], "all", a)))
    cells = [(ln, cn, mk(timer + [sh])) for ln, sh in loads for cn, mk in conf]
    for _, _, argv in cells:
        timed(argv, inner=True)
    res = {}
    for _ in range(args["work_runs"]):
        for ln, cn, argv in cells:
            wall, inner = timed(argv, inner=True)
            res.setdefault(ln, {}).setdefault(cn, {"inner": [], "wall": []})
            res[ln][cn]["inner"].append(inner / 1e6)
            res[ln][cn]["wall"].append(wall / 1e6)
    out["files"] = {ln: {cn: {k: statistics.median(v) for k, v in d.items()} | {"runs": len(d["inner"])}
                         for cn, d in c.items()} for ln, c in res.items()}
    out["file_configs"] = [cn for cn, _ in conf]

    if watch:
        bench = os.path.join(binp, "sysbench")
        calls = str(args["micro_calls"])
        mconf = [
            ("bare", lambda a: a),
            ("bwrap", lambda a: bwrap([("--bind", tree), ("--ro-bind", binp)], a)),
        ]
        if watch_off:
            mconf.append(("airlock, watch off", lambda a: airlock(exe, [tree + ":rw", binp + ":ro"], "off", a)))
        mconf += [
            ("airlock, watch denials", lambda a: airlock(exe, [tree + ":rw", binp + ":ro"], "denials", a)),
            ("airlock, watch all", lambda a: airlock(exe, [tree + ":rw", binp + ":ro"], "all", a)),
        ]
        mcells = [(call, cn, mk([bench, call, calls, tree])) for call in ("stat", "getppid") for cn, mk in mconf]
        for _, _, argv in mcells:
            timed(argv, inner=True)
        mres = {}
        for _ in range(args["micro_runs"]):
            for call, cn, argv in mcells:
                mres.setdefault(call, {}).setdefault(cn, []).append(timed(argv, inner=True)[1] / 1e6)
        out["micro"] = {c: {cn: statistics.median(v) for cn, v in d.items()} for c, d in mres.items()}
        out["micro_calls"] = args["micro_calls"]
        out["micro_runs"] = args["micro_runs"]
        out["micro_configs"] = [cn for cn, _ in mconf]
    return out

def ms(x):
    return "%.1f" % x if x >= 10 else "%.2f" % x

def over(x, base):
    return "%+.1f %%" % ((x / base - 1) * 100)

def render(args):
    user = json.load(open(args["user_json"]))
    rootr = json.load(open(args["root_json"])) if args.get("root_json") and os.path.exists(args["root_json"]) else None
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    bw = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    L = ["## Sandbox", ""]
    L.append("`bash benches/sandbox.sh` (release build), %s, Linux %s, %s, %d cores, %s, airlock %s. "
             "Everything runs as the unprivileged user `%s` (the real case); all configurations of a table are "
             "interleaved in one run (A, B, C, A, B, C, …). The bwrap line is the strict setup of issue 3: "
             "`--unshare-all --die-with-parent --new-session`, read-only `/usr` and the `/bin`, `/lib*`, `/sbin` links, "
             "`--proc /proc --dev /dev --tmpfs /tmp`, `--bind` of the grant, `--cap-drop ALL`. "
             "`airlock run` is the local path (no session bus, so no Airlock app to hand the task to): it opens the "
             "audit database, creates the task folder and its overlay, and records the task."
             % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), platform.release(), cpu, os.cpu_count(),
                bw, args["version"], user["user"]))
    L.append("")
    def start_table(r, title):
        s = r["start"]
        L.append("%s (`/bin/true`, %d runs each):" % (title, s["bare"]["runs"]))
        L.append("")
        L.append("| command | median | p95 |")
        L.append("|---|---:|---:|")
        for n, cmd in (("bare", "`/bin/true`"), ("bwrap", "`bwrap …strict… /bin/true`"),
                       ("airlock", "`airlock run --grant DIR:rw -- /bin/true`")):
            L.append("| %s | %s ms | %s ms |" % (cmd, ms(s[n]["median"]), ms(s[n]["p95"])))
        ratio = s["airlock"]["median"] / s["bwrap"]["median"]
        L.append("")
        L.append("airlock / bwrap (medians): **%.2f×**. Target: no slower than bwrap (≤ 1.00×): **%s**."
                 % (ratio, "met" if ratio <= 1.0 else "not met"))
        L.append("")
    start_table(user, "Start latency as `%s`" % user["user"])
    if rootr:
        start_table(rootr, "The same as root (the sandbox then runs as an unprivileged uid)")
    if "files" in user:
        cfgs = [c for c in user["file_configs"] if "watch" not in c]
        L.append("File-heavy workload in a %d-file grant (200 folders × 100 text files of ~2.5 KB), median of %d "
                 "interleaved runs. The time is measured *inside* the sandbox around the workload (a small timer "
                 "runs it with `sh -c`), so it is the cost of working through the sandbox's mounts, Landlock and "
                 "seccomp, not of starting it; the whole command including start-up is in the second table. "
                 "`airlock rw` is an overlay with the default watch level (`denials`). `overlay by hand` is a "
                 "reference, not a sandbox: the same tree under a plain overlayfs mounted with `unshare -rm` and "
                 "`mount -t overlay`, nothing else, to tell the overlay's own cost from airlock's. "
                 "`landlock by hand` is the other reference: airlock's Landlock rules for a read-only grant (the "
                 "same handled rights and rules), applied by a small C program with nothing else around, for "
                 "what Landlock alone costs the read-only column. "
                 "Target: within 5 %% of bare."
                 % (user["tree_files"], user["files"][next(iter(user["files"]))]["bare"]["runs"]))
        L.append("")
        L.append("| workload | " + " | ".join(cfgs) + " |")
        L.append("|---|" + "---:|" * len(cfgs))
        worst = 0.0
        for ln, c in user["files"].items():
            base = c["bare"]["inner"]
            row = [ms(base) + " ms"]
            for cn in cfgs[1:]:
                row.append("%s ms (%s)" % (ms(c[cn]["inner"]), over(c[cn]["inner"], base)))
                if cn.startswith("airlock"):
                    worst = max(worst, c[cn]["inner"] / base - 1)
            L.append("| `%s` | %s |" % (ln, " | ".join(row)))
        L.append("")
        L.append("Worst airlock overhead vs bare: **%+.1f %%**; target ≤ 5 %%: **%s**."
                 % (worst * 100, "met" if worst <= 0.05 else "not met"))
        if "overlay by hand" in cfgs:
            own = max(c["airlock rw"]["inner"] / c["overlay by hand"]["inner"] - 1 for c in user["files"].values())
            L.append("What airlock adds to a read-write grant beyond overlayfs itself (`airlock rw` against "
                     "`overlay by hand`), worst case: **%+.1f %%**." % (own * 100))
        if "landlock by hand" in cfgs:
            ll = max(c["landlock by hand"]["inner"] / c["bare"]["inner"] - 1 for c in user["files"].values())
            own = max(c["airlock ro"]["inner"] / c["landlock by hand"]["inner"] - 1 for c in user["files"].values())
            L.append("What Landlock alone costs (`landlock by hand` against bare), worst case: **%+.1f %%**; what "
                     "airlock adds to a read-only grant beyond it (`airlock ro` against `landlock by hand`), worst "
                     "case: **%+.1f %%**." % (ll * 100, own * 100))
        L.append("")
        L.append("Whole command, start-up included (median wall time):")
        L.append("")
        L.append("| workload | " + " | ".join(cfgs) + " |")
        L.append("|---|" + "---:|" * len(cfgs))
        for ln, c in user["files"].items():
            base = c["bare"]["wall"]
            row = [ms(base) + " ms"] + ["%s ms (%s)" % (ms(c[cn]["wall"]), over(c[cn]["wall"], base)) for cn in cfgs[1:]]
            L.append("| `%s` | %s |" % (ln, " | ".join(row)))
        L.append("")
    M = ["## Monitoring", ""]
    if not user.get("watch"):
        M.append("`airlock run` has no `--watch` option in this build; `bash benches/sandbox.sh` measures "
                 "monitoring as soon as it has.")
        M.append("")
    else:
        off = "airlock rw, watch off" if user.get("watch_off") else None
        M.append("Same run and machine as `## Sandbox`. Watch levels of `airlock run --watch`: `off` (no "
                 "user-notification listener; denials stay errno filters), `denials` (the default: only blocked "
                 "syscalls and paths outside the grants reach the supervisor), `all` (every file access is "
                 "reported). File workload, time inside the sandbox, median of %d runs:"
                 % user["files"][next(iter(user["files"]))]["bare"]["runs"])
        M.append("")
        mc = ["bare"] + ([off] if off else []) + ["airlock rw", "airlock rw, watch all"]
        names = {"bare": "bare", off: "watch off", "airlock rw": "watch denials", "airlock rw, watch all": "watch all"}
        ref = off or "bare"
        M.append("| workload | " + " | ".join(names[c] for c in mc) + " |")
        M.append("|---|" + "---:|" * len(mc))
        worst = 0.0
        for ln, c in user["files"].items():
            base = c[ref]["inner"]
            row = []
            for cn in mc:
                v = c[cn]["inner"]
                row.append(ms(v) + " ms" + ("" if cn in ("bare", ref) else " (%s)" % over(v, base)))
            worst = max(worst, c["airlock rw"]["inner"] / base - 1)
            M.append("| `%s` | %s |" % (ln, " | ".join(row)))
        M.append("")
        M.append("Percentages are against %s. `denials` vs %s, worst case: **%+.1f %%**; target ≤ 5 %%: **%s**."
                 % ("`watch off`" if off else "bare", "`off`" if off else "bare", worst * 100,
                    "met" if worst <= 0.05 else "not met"))
        M.append("")
        if "micro" in user:
            n = user["micro_calls"]
            M.append("Syscall-heavy micro-benchmark: a C program making %s calls in a loop (`stat` of the grant "
                     "folder, `getppid`), timed inside, median of %d interleaved runs:"
                     % ("{:,}".format(n), user["micro_runs"]))
            M.append("")
            cf = user["micro_configs"]
            M.append("| calls | " + " | ".join(cf) + " |")
            M.append("|---|" + "---:|" * len(cf))
            for call, c in user["micro"].items():
                row = ["%s ms (%.0f ns/call)" % (ms(c[cn]), c[cn] * 1e6 / n) for cn in cf]
                M.append("| %s × `%s` | %s |" % ("{:,}".format(n), call, " | ".join(row)))
            M.append("")
    return "\n".join(L).rstrip() + "\n", "\n".join(M).rstrip() + "\n"

def splice(path, sections):
    """Replaces (or appends) whole `## Title` sections of a Markdown file."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    parts = re.split(r"(?m)^(?=## )", text)
    for sec in sections:
        title = sec.splitlines()[0]
        for i, p in enumerate(parts):
            if p.splitlines()[0:1] == [title]:
                parts[i] = sec + "\n"
                break
        else:
            parts[-1] = parts[-1].rstrip("\n") + "\n\n"
            parts.append(sec + "\n")
    out = "".join(parts).rstrip("\n") + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(out)
    os.replace(path + ".tmp", path)

if __name__ == "__main__":
    a = json.loads(sys.argv[2])
    if sys.argv[1] == "run":
        r = run(a)
        json.dump(r, open(a["out"], "w"), indent=1)
    else:
        sandbox, monitoring = render(a)
        print(sandbox + "\n" + monitoring)
        if a["write"]:
            splice(a["doc"], [sandbox, monitoring])
PY

USER_JSON=$WORK/user.json
ROOT_JSON=$WORK/root.json
harness_args() { # label, out, start_only
  printf '{"work":"%s","label":"%s","airlock":"%s","out":"%s","start_only":%s,"start_runs":%s,"work_runs":%s,"micro_runs":%s,"micro_calls":%s}' \
    "$WORK" "$1" "$WORK/bin/airlock" "$2" "$3" "$4" "$WORK_RUNS" "$MICRO_RUNS" "$MICRO_CALLS"
}
run_harness() { # label, out, start_only, runs, [user]
  local home=$WORK/home-$1
  mkdir -p "$home"
  local env=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$home" LANG=C.UTF-8
    XDG_STATE_HOME="$home/state" XDG_DATA_HOME="$home/data" XDG_CONFIG_HOME="$home/config")
  if [ -n "${5:-}" ]; then
    chown "$5:" "$WORK" "$home"
    runuser -u "$5" -- "${env[@]}" USER="$5" "$PY" "$WORK/harness.py" run "$(harness_args "$1" "$2" "$3" "$4")"
    chown "$(id -u):$(id -g)" "$WORK"
  else
    "${env[@]}" USER="$(id -un)" "$PY" "$WORK/harness.py" run "$(harness_args "$1" "$2" "$3" "$4")"
  fi
}

if [ "$(id -u)" -eq 0 ]; then
  id "$BENCH_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$BENCH_USER"
  echo "== as $BENCH_USER: start latency, file workload, monitoring"
  run_harness user "$USER_JSON" false "$START_RUNS" "$BENCH_USER"
  if [ "$ROOT_START_RUNS" -gt 0 ]; then
    echo "== as root: start latency"
    run_harness root "$ROOT_JSON" true "$ROOT_START_RUNS"
  fi
else
  echo "== as $(id -un): start latency, file workload, monitoring"
  run_harness user "$USER_JSON" false "$START_RUNS"
fi

VERSION=$(git describe --always --dirty 2>/dev/null || echo unknown)
"$PY" "$WORK/harness.py" render "$("$PY" -c 'import json,sys; print(json.dumps({"user_json":sys.argv[1],"root_json":sys.argv[2],"doc":sys.argv[3],"write":sys.argv[4]=="1","version":sys.argv[5]}))' \
  "$USER_JSON" "$ROOT_JSON" "$ROOT/docs/benchmarks.md" "$WRITE" "$VERSION")"
