#!/bin/sh
# Review and commit benchmarks (issue 6). Writes the "## Review and commit"
# section of docs/benchmarks.md.
#
#   sh benches/workspace.sh            # builds the release binary first
#
# Needs: util-linux unshare, overlayfs in a user namespace (Linux 5.11+),
# GNU diff. Runs as root or as an ordinary user. Uses $TMPDIR (default /tmp)
# for a few hundred MB of small files.
set -eu

cd "$(dirname "$0")/.."
cargo build --release --bin airlock >/dev/null
BIN="$PWD/target/release/airlock"
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/airlock-bench-XXXXXX")
trap 'chmod -R u+rwx "$ROOT" 2>/dev/null; rm -rf "$ROOT"' EXIT
export XDG_STATE_HOME="$ROOT/state" HOME="$ROOT"
TASKS="$XDG_STATE_HOME/airlock/tasks"

now() { date +%s%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

# new_task ID GRANT: a task folder whose grant 0 is GRANT.
new_task() {
    mkdir -p "$TASKS/$1/upper/0" "$TASKS/$1/work/0"
    printf '{"id":"%s","argv":["bench"],"policy":{},"rw_layers":[{"path":"%s","index":0}],"created_ms":0,"requested_by":"bench"}' \
        "$1" "$2" > "$TASKS/$1/task.json"
    echo '{"code":0}' > "$TASKS/$1/exit.json"
}

# agent ID GRANT SCRIPT: runs SCRIPT in an overlay over GRANT (the task's
# upper layer), like the sandbox does.
agent() {
    mkdir -p "$ROOT/mnt"
    unshare --user --map-root-user --mount sh -c "mount -t overlay overlay -o lowerdir=$2,upperdir=$TASKS/$1/upper/0,workdir=$TASKS/$1/work/0,userxattr $ROOT/mnt && cd $ROOT/mnt && $3"
}

# naive ID GRANT: time of `diff -r` between the grant and the agent's view.
naive() {
    unshare --user --map-root-user --mount sh -c "mount -t overlay overlay -o lowerdir=$2,upperdir=$TASKS/$1/upper/0,workdir=$TASKS/$1/work/0,userxattr $ROOT/mnt && s=\$(date +%s%N); diff -r $2 $ROOT/mnt >/dev/null; e=\$(date +%s%N); echo \$((e - s))"
}

make_tree() { # make_tree DIR N: N small files in 100 folders
    mkdir -p "$1"
    per=$(($2 / 100))
    for d in $(seq 0 99); do
        mkdir "$1/d$d"
        (cd "$1/d$d" && seq 0 $((per - 1)) | sed 's/^/f/' | xargs touch)
    done
}

rows=""
for N in 10000 100000; do
    G="$ROOT/grant-$N"
    make_tree "$G" "$N"
    for K in 10 1000; do
        ID="cs-$N-$K"
        new_task "$ID" "$G"
        # K changed files, spread over the folders.
        agent "$ID" "$G" "i=0; while [ \$i -lt $K ]; do echo changed >> d\$((i % 100))/f\$((i / 100)); i=\$((i + 1)); done"
        sync
        t1=$(now); "$BIN" changes "$ID" --json >/dev/null; t2=$(now)
        t3=$(now); "$BIN" changes "$ID" --json >/dev/null; t4=$(now)
        t5=$(now); "$BIN" changes "$ID" --json >/dev/null; t6=$(now)
        cs=$(median3 "$(ms "$t1" "$t2")" "$(ms "$t3" "$t4")" "$(ms "$t5" "$t6")")
        nv=$(naive "$ID" "$G")
        rows="$rows| change set, N = $N files, K = $K changes | $cs ms | $(ms 0 "$nv") ms |\n"
    done
done

# Commit of 1,000 new files of 10 KiB (temporaries, syncfs, renames, journal).
G="$ROOT/grant-commit"; mkdir -p "$G"
new_task commit-1000 "$G"
agent commit-1000 "$G" "mkdir out && i=0; while [ \$i -lt 1000 ]; do head -c 10240 /dev/urandom > out/f\$i; i=\$((i + 1)); done"
sync
t1=$(now); "$BIN" commit commit-1000 >/dev/null; t2=$(now)
commit_ms=$(ms "$t1" "$t2")
t1=$(now); "$BIN" undo commit-1000 >/dev/null; t2=$(now)
undo_ms=$(ms "$t1" "$t2")

# Replacing 1,000 existing files (each original kept for undo).
G="$ROOT/grant-replace"; mkdir -p "$G"
i=0; while [ $i -lt 1000 ]; do head -c 10240 /dev/urandom > "$G/f$i"; i=$((i + 1)); done
new_task replace-1000 "$G"
agent replace-1000 "$G" "i=0; while [ \$i -lt 1000 ]; do head -c 10240 /dev/urandom > f\$i; i=\$((i + 1)); done"
sync
t1=$(now); "$BIN" commit replace-1000 >/dev/null; t2=$(now)
replace_ms=$(ms "$t1" "$t2")

# Diff of a 50,000-line file with 500 changed lines.
G="$ROOT/grant-diff"; mkdir -p "$G"
seq 1 50000 | sed 's/^/line number /' > "$G/big.txt"
new_task diff-50k "$G"
agent diff-50k "$G" "sed -i 's/^line number \\(.*\\)00\$/LINE NUMBER \\100 changed/' big.txt"
t1=$(now); "$BIN" diff diff-50k big.txt >/dev/null; t2=$(now)
t3=$(now); "$BIN" diff diff-50k big.txt >/dev/null; t4=$(now)
t5=$(now); "$BIN" diff diff-50k big.txt >/dev/null; t6=$(now)
diff_ms=$(median3 "$(ms "$t1" "$t2")" "$(ms "$t3" "$t4")" "$(ms "$t5" "$t6")")

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
fs=$(stat -f -c %T "$ROOT")
section=$(printf '%s\n' \
"## Review and commit" \
"" \
"\`sh benches/workspace.sh\` (release build, whole \`airlock\` commands including process start) on $cpu, $(nproc) cores, Linux $(uname -r), $fs, as $(id -un). Change-set times are the median of 3 runs of \`airlock changes TASK --json\`; \"naive\" is one \`diff -r\` of the folder against the agent's view (the overlay), which is what a tool without the upper layer has to do." \
"" \
"| measurement | airlock | naive \`diff -r\` |" \
"|---|---:|---:|" \
"$(printf "$rows")" \
"| commit 1,000 new files of 10 KiB (\`airlock commit\`: temporaries, syncfs, renames, journal, undo record) | $commit_ms ms | |" \
"| undo of that commit | $undo_ms ms | |" \
"| commit replacing 1,000 existing files of 10 KiB (originals copied for undo) | $replace_ms ms | |" \
"| \`airlock diff\` of a 50,000-line file with 500 changed lines (median of 3) | $diff_ms ms | |" \
"" \
"The change set walks only the upper layer (plus the lower entries it shadows): its time follows K, not N, while \`diff -r\` reads all N files. Durability: every temporary and backup is written, then one \`syncfs\` per file system (grant and task folder) runs before the journal records \`prepared\`, and one more after the renames before \`applied\`; an \`fsync\` per file would cost one file-system journal commit each." \
)

DOC=docs/benchmarks.md
[ -f "$DOC" ] || printf '# Benchmarks\n' > "$DOC"
# Replace our section (up to the next "## " heading) or append it.
awk -v section="$section" '
    /^## Review and commit$/ { skip = 1; print section; done = 1; next }
    skip && /^## / { skip = 0 }
    !skip { print }
    END { if (!done) { print ""; print section } }
' "$DOC" > "$DOC.tmp" && mv "$DOC.tmp" "$DOC"
printf '%s\n' "$section"
