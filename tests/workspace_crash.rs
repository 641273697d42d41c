//! Crash safety of the commit transaction: stopped after every durable
//! step (the injection hook), and SIGKILLed at random times (≥100 real
//! kills of `airlock commit`), recovery always leaves every file entirely
//! old or entirely new (here: the whole commit applied or none of it) and
//! no temporary behind. Also: a full disk rolls back with a clear error.

mod workspace_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use airlock::workspace::{self as ws, CommitOptions, RecoveryOutcome, Selection};
use workspace_support::*;

const SETUP: &str = "echo keep > keep && echo old > mod && echo gone > del && mkdir -p deep/er && echo x > deep/er/x && \
    echo file > f2d && mkdir d2f && echo y > d2f/y && mkdir ch && echo c > ch/c && ln -s keep oldlink";
const AGENT: &str = "echo new >> mod && rm del && rm -r deep && rm f2d && mkdir f2d && echo in > f2d/in && \
    rm -r d2f && echo now-file > d2f && chmod 700 ch && ln -s mod newlink && rm oldlink && mkdir -p nd/sub && \
    echo n > nd/sub/n && ln -s ../../keep nd/sub/l";

fn scenario() -> Fixture {
    let f = Fixture::new();
    f.setup(SETUP);
    f.snapshot();
    f.agent(AGENT);
    f
}

fn commit_stopping(f: &Fixture, stop: Option<u64>) -> Result<ws::CommitReport, airlock::Error> {
    let cs = f.changes();
    let opts = CommitOptions {
        stop_after: stop,
        ..Default::default()
    };
    ws::commit(
        &f.task,
        0,
        &cs,
        &Selection::all(),
        f.load_snapshot().as_ref(),
        &|| true,
        &opts,
    )
}

/// The trees before and after a complete commit of the scenario.
fn reference_states() -> (BTreeMap<Vec<u8>, Desc>, BTreeMap<Vec<u8>, Desc>) {
    let f = scenario();
    let before = tree(&f.grant);
    commit_stopping(&f, None).unwrap();
    (before, tree(&f.grant))
}

fn assert_whole(
    f: &Fixture,
    old: &BTreeMap<Vec<u8>, Desc>,
    new: &BTreeMap<Vec<u8>, Desc>,
    what: &str,
) -> bool {
    let now = tree(&f.grant);
    assert_no_temporaries(&now);
    assert!(
        !f.task.path().join("commit.journal").exists(),
        "{what}: journal left"
    );
    assert!(
        now == *old || now == *new,
        "{what}: neither old nor new:\n{now:?}"
    );
    now == *new
}

#[test]
fn stopped_after_every_step_recovers_to_old_or_new() {
    let (old, new) = reference_states();
    let mut k = 1;
    let mut saw_old = false;
    let mut saw_new = false;
    loop {
        let f = scenario();
        match commit_stopping(&f, Some(k)) {
            Err(airlock::Error::CommitStopped(s)) => assert_eq!(s, k),
            Ok(_) => {
                assert!(assert_whole(&f, &old, &new, "unstopped"));
                break;
            }
            Err(e) => panic!("step {k}: {e}"),
        }
        let out = ws::recover(&f.task).unwrap();
        let is_new = assert_whole(&f, &old, &new, &format!("step {k}"));
        // Clean only when stopped after the journal was already removed.
        assert_eq!(
            is_new,
            !matches!(out, RecoveryOutcome::RolledBack { .. }),
            "step {k}: {out:?}"
        );
        saw_old |= !is_new;
        saw_new |= is_new;
        // The recovered task commits (again) cleanly.
        commit_stopping(&f, None).unwrap();
        assert!(assert_whole(
            &f,
            &old,
            &new,
            &format!("recommit after step {k}")
        ));
        k += 1;
        assert!(k < 500, "the commit never finished");
    }
    assert!(
        saw_old && saw_new,
        "crashes before and after the commit point were both tested"
    );
}

#[test]
fn a_crash_during_recovery_is_recovered_too() {
    let (old, new) = reference_states();
    // Stop late in the apply phase, then stop the roll-back at each step.
    let f0 = scenario();
    let total = (1..500)
        .find(|&k| commit_stopping(&scenario(), Some(k)).is_ok())
        .unwrap();
    drop(f0);
    for stop_commit in [total / 2, total - 3] {
        let mut j = 1;
        loop {
            let f = scenario();
            assert!(matches!(
                commit_stopping(&f, Some(stop_commit)),
                Err(airlock::Error::CommitStopped(_))
            ));
            match ws::commit::recover_stopping_after(&f.task, j) {
                Err(airlock::Error::CommitStopped(_)) => {
                    ws::recover(&f.task).unwrap();
                    assert_whole(
                        &f,
                        &old,
                        &new,
                        &format!("commit stop {stop_commit}, recovery stop {j}"),
                    );
                }
                Ok(_) => {
                    assert_whole(&f, &old, &new, "recovery finished");
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            j += 1;
            assert!(j < 500);
        }
    }
}

#[test]
fn undo_stopped_after_every_step_recovers_to_committed_or_original() {
    let (old, new) = reference_states();
    let mut k = 1;
    loop {
        let f = scenario();
        commit_stopping(&f, None).unwrap();
        match ws::undo::undo(&f.task, &|| true, Some(k)) {
            Err(airlock::Error::CommitStopped(_)) => {}
            Ok(_) => {
                assert!(
                    !assert_whole(&f, &old, &new, "undo"),
                    "undo restores the original"
                );
                break;
            }
            Err(e) => panic!("undo step {k}: {e}"),
        }
        ws::recover(&f.task).unwrap();
        if assert_whole(&f, &old, &new, &format!("undo step {k}")) {
            // The undo was rolled back: the commit can still be undone
            // (setting its files aside and back must not look like a
            // change by the user).
            ws::undo::undo(&f.task, &|| true, None)
                .unwrap_or_else(|e| panic!("undo after a rolled-back undo (step {k}): {e}"));
            assert!(tree(&f.grant) == old, "undo step {k}: not the original");
        }
        k += 1;
        assert!(k < 500);
    }
}

/// A commit that is running holds the task's commit lock. Recovery from
/// another process (a `diff` in a second terminal, the window) must leave
/// its journal alone: rolling it back underneath the running commit
/// deleted the user's originals.
#[test]
fn a_running_commit_is_never_rolled_back_from_elsewhere() {
    use std::os::fd::AsRawFd;
    let (old, new) = reference_states();
    let f = scenario();
    // Halfway through its renames, as if still running.
    let total = (1..500)
        .find(|&k| commit_stopping(&scenario(), Some(k)).is_ok())
        .unwrap();
    assert!(matches!(
        commit_stopping(&f, Some(total / 2)),
        Err(airlock::Error::CommitStopped(_))
    ));
    let mid = tree(&f.grant);
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(f.task.path().join("commit.lock"))
        .unwrap();
    // SAFETY: flock on our own descriptor.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    assert_eq!(ws::recover(&f.task).unwrap(), RecoveryOutcome::Busy);
    for cmd in ["changes", "diff", "commit", "undo", "reject"] {
        let o = airlock(&f).args([cmd, f.id.as_str()]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("is running"),
            "{cmd}: {err}"
        );
    }
    assert!(
        tree(&f.grant) == mid,
        "the running commit's files were touched"
    );
    assert!(f.task.path().join("commit.journal").exists());
    drop(lock);
    // Once it is gone for good, recovery finishes the job.
    assert!(matches!(
        ws::recover(&f.task).unwrap(),
        RecoveryOutcome::RolledBack { .. } | RecoveryOutcome::Completed { .. }
    ));
    assert_whole(&f, &old, &new, "after the lock was released");
}

/// A small xorshift generator: the seed is printed so a failure repeats.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn big_scenario() -> Fixture {
    let f = Fixture::new();
    f.setup(
        "i=0; while [ $i -lt 40 ]; do echo old-$i > f$i; i=$((i+1)); done; mkdir d && echo x > d/x",
    );
    f.snapshot();
    f.agent(
        "i=0; while [ $i -lt 40 ]; do head -c 4096 /dev/zero | tr '\\0' n >> f$i; i=$((i+1)); done; \
         i=0; while [ $i -lt 20 ]; do echo new-$i > n$i; i=$((i+1)); done; rm -r d",
    );
    f
}

/// `AIRLOCK_BIN` runs these against another build of the binary.
fn airlock(f: &Fixture) -> Command {
    let bin = std::env::var_os("AIRLOCK_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_airlock").into());
    let mut c = Command::new(bin);
    c.env("XDG_STATE_HOME", &f.state).env("HOME", f.base.path());
    c
}

#[test]
fn sigkill_at_random_times_never_leaves_a_half_commit() {
    let reference = big_scenario();
    let old = tree(&reference.grant);
    let t0 = Instant::now();
    let st = airlock(&reference)
        .args(["commit", reference.id.as_str()])
        .status()
        .unwrap();
    assert!(st.success());
    let full = t0.elapsed();
    let new = tree(&reference.grant);
    assert_ne!(old, new);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}, uninterrupted commit took {full:?}");
    let mut rng = Rng(seed);
    let (mut rolled_back, mut completed, mut clean) = (0, 0, 0);
    // One task, killed again and again: a rolled-back commit is retried,
    // a completed one is undone first (which must restore the original).
    let f = big_scenario();
    assert_eq!(tree(&f.grant), old);
    for trial in 0..110 {
        let mut child = airlock(&f)
            .args(["commit", f.id.as_str()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_micros(rng.next() % (full.as_micros() as u64 + 1));
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        match ws::recover(&f.task).unwrap() {
            RecoveryOutcome::Clean => clean += 1,
            RecoveryOutcome::RolledBack { .. } => rolled_back += 1,
            RecoveryOutcome::Completed { .. } => completed += 1,
            RecoveryOutcome::Busy => panic!("the killed commit still holds its lock"),
        }
        if assert_whole(
            &f,
            &old,
            &new,
            &format!("trial {trial} (seed {seed}, delay {delay:?})"),
        ) {
            let st = airlock(&f)
                .args(["undo", f.id.as_str()])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "undo after trial {trial}");
            assert_eq!(tree(&f.grant), old, "undo after trial {trial}");
        }
    }
    eprintln!("110 kills: {rolled_back} rolled back, {completed} completed by recovery, {clean} before/after any journal");
    assert!(
        rolled_back + completed > 0,
        "no kill landed inside a commit"
    );
}

#[test]
fn a_full_disk_rolls_back_with_a_clear_error() {
    let f = Fixture::new();
    let g = f.grant.display().to_string();
    let script = format!(
        "set -e; mount -t tmpfs -o size=256k tmpfs '{g}'; printf original > '{g}/keep'; \
         head -c 100000 /dev/zero | tr '\\0' a > '{g}/big'; \
         mount -t overlay overlay -o lowerdir='{g}',upperdir='{u}',workdir='{w}',userxattr '{m}'; \
         head -c 300000 /dev/zero | tr '\\0' b > '{m}/huge'; printf changed > '{m}/keep'; umount '{m}'; \
         set +e; '{bin}' commit {id}; echo \"rc=$?\"; printf 'keep='; cat '{g}/keep'; echo; printf 'ls='; ls -A '{g}' | tr '\\n' ' '; echo",
        u = f.task.upper(0).display(),
        w = f.task.work(0).display(),
        m = f.mnt.display(),
        bin = env!("CARGO_BIN_EXE_airlock"),
        id = f.id,
    );
    let (stdout, stderr) = in_own_mounts(&f, &script);
    assert!(
        stdout.contains("rc=1"),
        "commit must fail: {stdout} {stderr}"
    );
    assert!(stderr.contains("no space left"), "clear error: {stderr}");
    assert!(
        stderr.contains("rolled back"),
        "says nothing changed: {stderr}"
    );
    assert!(
        stdout.contains("keep=original"),
        "original intact: {stdout}"
    );
    assert!(
        stdout.contains("ls=big keep \n") || stdout.contains("ls=big keep"),
        "no temporaries: {stdout}"
    );
    assert!(!stdout.contains(".airlock-"), "{stdout}");
    assert!(!f.task.path().join("commit.journal").exists());
}

/// Pass 8A: an undo that found the grant's disk full blamed the task's
/// backup folder (which had room) and spoke of a commit. It names the
/// grant's file and says the undo was rolled back.
#[test]
fn a_full_disk_during_undo_names_the_grant() {
    let f = Fixture::new();
    let g = f.grant.display().to_string();
    let script = format!(
        "set -e; mount -t tmpfs -o size=256k tmpfs '{g}'; \
         head -c 100000 /dev/zero | tr '\\0' a > '{g}/big'; \
         mount -t overlay overlay -o lowerdir='{g}',upperdir='{u}',workdir='{w}',userxattr '{m}'; \
         rm '{m}/big'; umount '{m}'; \
         '{bin}' commit {id}; head -c 200000 /dev/zero | tr '\\0' c > '{g}/filler'; \
         set +e; '{bin}' undo {id}; echo \"rc=$?\"; printf 'ls='; ls -A '{g}' | tr '\\n' ' '; echo",
        u = f.task.upper(0).display(),
        w = f.task.work(0).display(),
        m = f.mnt.display(),
        bin = env!("CARGO_BIN_EXE_airlock"),
        id = f.id,
    );
    let (stdout, stderr) = in_own_mounts(&f, &script);
    assert!(stdout.contains("rc=1"), "undo must fail: {stdout} {stderr}");
    assert!(
        stderr.contains(&format!("device holding {g}/big"))
            && stderr.contains("the undo was rolled back"),
        "{stderr}"
    );
    assert!(
        stdout.contains("ls=filler \n") || stdout.contains("ls=filler"),
        "{stdout}"
    );
}

/// Ends the fixture's task, then runs `script` as root of a user and mount
/// namespace of its own (to mount a small file system over the grant);
/// its stdout and stderr.
fn in_own_mounts(f: &Fixture, script: &str) -> (String, String) {
    f.finish_task();
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
        .env("XDG_STATE_HOME", &f.state)
        .env("HOME", f.base.path())
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every regular file's content under `dir`, links not followed.
fn contents(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            out.extend(contents(&e.path()));
        } else if m.is_file() {
            out.push(String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned());
        }
    }
    out
}

/// A commit cut off in its apply phase leaves some of the agent's files in
/// place, and the user may work in them before the next `airlock` command
/// rolls the commit back. What the user wrote there is kept, set aside
/// under a name of its own, never removed (pass 19B: notes saved into a
/// folder the commit had placed were deleted with it, and an edit of a
/// placed file was reverted, with no copy anywhere).
#[test]
fn a_roll_back_keeps_what_the_user_wrote_into_placed_files() {
    let total = (1..500)
        .find(|&k| commit_stopping(&scenario(), Some(k)).is_ok())
        .unwrap();
    let mut tried = 0;
    for k in 1..total {
        let f = scenario();
        assert!(matches!(
            commit_stopping(&f, Some(k)),
            Err(airlock::Error::CommitStopped(_))
        ));
        let mut wrote = Vec::new();
        let placed_dir = f.grant.join("nd/sub");
        if placed_dir.is_dir() {
            std::fs::write(placed_dir.join("notes.txt"), "USER NOTES\n").unwrap();
            wrote.push("USER NOTES");
        }
        let placed_file = f.grant.join("mod");
        if std::fs::read_to_string(&placed_file).is_ok_and(|t| t.contains("new")) {
            use std::io::Write;
            let mut m = std::fs::OpenOptions::new()
                .append(true)
                .open(&placed_file)
                .unwrap();
            m.write_all(b"USER EDIT\n").unwrap();
            wrote.push("USER EDIT");
        }
        if wrote.is_empty() {
            continue;
        }
        tried += 1;
        let out = ws::recover(&f.task).unwrap();
        let all = contents(&f.grant);
        for w in wrote {
            assert!(
                all.iter().any(|c| c.contains(w)),
                "stop {k}: the user's {w:?} is gone after {out:?}"
            );
        }
        if let RecoveryOutcome::RolledBack { kept, .. } = &out {
            for p in kept {
                assert!(p.to_string_lossy().contains(".airlock-kept-"), "{out:?}");
                assert!(p.exists(), "{out:?}");
            }
        }
    }
    assert!(tried > 0, "no stop left anything placed");
}

/// A file the user saves in place while `airlock commit` runs keeps its
/// inode; the commit must still not replace it (pass 19B: the agent's
/// version went over the user's edit, and the copy kept for undo held the
/// bytes from before it). The agent's large file stretches the commit so
/// that the edit lands between the copy of the original and the rename.
#[test]
fn an_edit_saved_while_a_commit_runs_is_never_overwritten() {
    let f = Fixture::new();
    f.setup("echo hello > a.txt");
    f.snapshot();
    f.agent("echo agent-line >> a.txt && head -c 300000000 /dev/zero > zz.bin");
    let child = airlock(&f)
        .args(["commit", f.id.as_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The original of a.txt is copied first (ops go in path order), then
    // the 300 MB temporary is written.
    let backup = f.task.path().join("commits/1/orig/0");
    let t0 = Instant::now();
    while !backup.exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(backup.exists(), "no backup of a.txt appeared");
    {
        use std::io::Write;
        let mut a = std::fs::OpenOptions::new()
            .append(true)
            .open(f.grant.join("a.txt"))
            .unwrap();
        a.write_all(b"USER EDIT saved during the commit\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let now = std::fs::read_to_string(f.grant.join("a.txt")).unwrap();
    assert!(
        now.contains("USER EDIT saved during the commit"),
        "the user's edit was overwritten: {now:?}\n{said}"
    );
}

/// A socket or fifo of the user's that the agent removed or replaced is
/// never copied, so an undo cannot bring it back; it must still undo the
/// rest of the commit and say what it could not restore (pass 19B: the
/// missing copy failed every undo of the whole commit).
#[test]
fn an_undo_restores_the_rest_when_a_socket_or_fifo_cannot_come_back() {
    let f = Fixture::new();
    f.setup(
        "echo a > a.txt && mkfifo mypipe && mkdir d && echo x > d/x && \
         python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\".app.sock\")'",
    );
    f.snapshot();
    f.agent("rm -f .app.sock && rm mypipe && echo p > mypipe && echo agent >> a.txt && rm -r d");
    let before = tree(&f.grant);
    let c = airlock(&f)
        .args(["commit", f.id.as_str()])
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert_eq!(
        std::fs::read_to_string(f.grant.join("a.txt")).unwrap(),
        "a\nagent\n"
    );
    let u = airlock(&f).args(["undo", f.id.as_str()]).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&u.stdout),
        String::from_utf8_lossy(&u.stderr)
    );
    assert!(u.status.success(), "{said}");
    assert_eq!(
        std::fs::read_to_string(f.grant.join("a.txt")).unwrap(),
        "a\n",
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(f.grant.join("d/x")).unwrap(),
        "x\n",
        "{said}"
    );
    assert!(
        !f.grant.join("mypipe").exists(),
        "the agent's file is gone: {said}"
    );
    assert!(said.contains("not brought back"), "{said}");
    assert!(
        said.contains("mypipe") && said.contains(".app.sock"),
        "{said}"
    );
    let mut after = tree(&f.grant);
    let mut expected = before;
    for p in [&b"mypipe"[..], b".app.sock"] {
        expected.remove(p);
        after.remove(p);
    }
    assert_eq!(after, expected, "{said}");
}

/// The name a changed entry is kept under fits in 255 bytes however long
/// the agent made the entry's own (pass 20B: ENAMETOOLONG left every later
/// recovery failing, and the cut-off commit's files in the user's folder).
#[test]
fn a_long_name_is_kept_aside_under_a_name_that_fits() {
    let long = "L".repeat(250);
    let fixture = || {
        let f = Fixture::new();
        f.setup("echo a > a.txt");
        f.snapshot();
        f.agent(&format!("echo agent > {long} && echo b > zz.txt"));
        f
    };
    let placed = (1..200)
        .find(|&k| {
            let f = fixture();
            let stopped = matches!(
                commit_stopping(&f, Some(k)),
                Err(airlock::Error::CommitStopped(_))
            );
            stopped && f.grant.join(&long).exists()
        })
        .expect("a stop with the long-named file in place");
    let f = fixture();
    assert!(commit_stopping(&f, Some(placed)).is_err());
    {
        use std::io::Write;
        let mut m = std::fs::OpenOptions::new()
            .append(true)
            .open(f.grant.join(&long))
            .unwrap();
        m.write_all(b"USER EDIT\n").unwrap();
    }
    let out = ws::recover(&f.task).unwrap();
    let RecoveryOutcome::RolledBack { kept, .. } = &out else {
        panic!("{out:?}");
    };
    assert_eq!(kept.len(), 1, "{out:?}");
    assert!(kept[0].file_name().unwrap().len() <= 255, "{out:?}");
    assert!(
        std::fs::read_to_string(&kept[0])
            .unwrap()
            .contains("USER EDIT"),
        "{out:?}"
    );
    assert!(!f.task.path().join("commit.journal").exists());
}

/// Closing the terminal (SIGHUP), Ctrl+C or SIGTERM during `airlock
/// commit` waits for the commit to finish and be logged, then ends the
/// command: cut off half-way it left the user's folder half-committed until
/// the next review command (pass 20B). SIGKILL is the test above.
#[test]
fn a_hangup_during_a_commit_lets_it_finish_first() {
    let f = Fixture::new();
    f.setup("echo a > a.txt && echo b > b.txt");
    f.snapshot();
    f.agent("echo agent >> a.txt && head -c 200000000 /dev/zero > big.bin && echo agent >> b.txt");
    let child = airlock(&f)
        .args(["commit", f.id.as_str()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = f.task.path().join("commit.journal");
    let t0 = Instant::now();
    while !journal.exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(journal.exists(), "the commit never started");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGHUP), "{:?}", out.status);
    assert!(!journal.exists(), "the commit was cut off");
    assert_eq!(
        std::fs::read_to_string(f.grant.join("a.txt")).unwrap(),
        "a\nagent\n"
    );
    assert_eq!(
        std::fs::read_to_string(f.grant.join("b.txt")).unwrap(),
        "b\nagent\n"
    );
    assert_eq!(
        std::fs::metadata(f.grant.join("big.bin")).unwrap().len(),
        200_000_000
    );
}
