//! What the review shows and flags, through the `airlock` binary: nothing
//! of a change may be hidden (cut lines, "binary" scripts, control
//! characters), a huge sparse file costs the reviewer nothing, and a
//! commit gives new content none of the user's file capabilities.
//!
//! `AIRLOCK_BIN` runs these against another build of the binary.

mod workspace_support;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use workspace_support::*;

fn bin() -> PathBuf {
    std::env::var_os("AIRLOCK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_airlock")))
}

fn cmd(f: &Fixture, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("XDG_STATE_HOME", &f.state)
        .env("HOME", f.base.path())
        .env("LANG", "C");
    c
}

fn airlock(f: &Fixture, args: &[&str]) -> Output {
    cmd(f, args).output().unwrap()
}

/// The first line of `t` that contains `name` (empty when none does).
fn line_naming(t: &str, name: &str) -> String {
    t.lines()
        .find(|l| l.contains(name))
        .unwrap_or_default()
        .to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `airlock args` with at most 2 GiB of address space (so a build
/// that reads a huge file into memory fails rather than takes the
/// machine's); returns its output, how long it took and its peak memory
/// in KiB.
fn measured(f: &Fixture, args: &[&str]) -> (Output, Duration, i64) {
    let mut c = cmd(f, args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: 2 << 30,
                rlim_max: 2 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    // Reaped by the wait4 below, which also gives its peak memory.
    #[allow(clippy::zombie_processes)]
    let mut child = c.spawn().unwrap();
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).unwrap();
        v
    });
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut so, &mut stdout).unwrap();
    let stderr = t.join().unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    let took = start.elapsed();
    let status = std::os::unix::process::ExitStatusExt::from_raw(status);
    (
        Output {
            status,
            stdout,
            stderr,
        },
        took,
        ru.ru_maxrss,
    )
}

#[test]
fn side_by_side_shows_a_change_past_column_60() {
    let f = Fixture::new();
    f.setup("printf 'import os\\nx = 1\\ny = 2\\n' > app.py");
    f.snapshot();
    // Equal to the old line for its first 60 characters.
    f.agent("printf 'import os%59s;os.system(\"touch PWNED\")\\nx = 1\\ny = 3\\n' '' > app.py");
    let o = airlock(&f, &["diff", f.id.as_str(), "--side-by-side"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains(";os.system(\"touch PWNED\")"),
        "the whole new line is shown: {t}"
    );
    assert!(t.contains("y = 3"), "{t}");
}

#[test]
fn side_by_side_says_when_lines_differ_only_invisibly() {
    let f = Fixture::new();
    f.setup("printf 'a = 1\\n' > t.py");
    f.snapshot();
    f.agent("printf 'a = 1   \\n' > t.py");
    let o = airlock(&f, &["diff", f.id.as_str(), "--side-by-side"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("differ only in trailing spaces"), "{t}");
}

/// The unified diff too: trailing spaces and tabs of a changed line are
/// shown, so that such a change does not read as two equal lines, nor hide
/// text pushed far to the right.
#[test]
fn unified_diff_shows_trailing_spaces_of_changed_lines() {
    let f = Fixture::new();
    f.setup("printf 'a = 1\\nb = 2  \\n' > t.py");
    f.snapshot();
    f.agent("printf 'a = 1   \\t\\nb = 2  \\nc = 3\\n' > t.py");
    let o = airlock(&f, &["diff", f.id.as_str()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("-a = 1\n"), "{t}");
    assert!(t.contains("+a = 1···→\n"), "{t}");
    // Unchanged lines are shown as they are.
    assert!(t.contains(" b = 2  \n"), "{t}");
}

#[test]
fn huge_sparse_files_are_reviewed_and_committed_cheaply() {
    let f = Fixture::new();
    f.setup("echo small > keep");
    f.snapshot();
    // 12 GiB that take no disk.
    f.agent("for i in 1 2 3; do truncate -s 4G big$i.dat; done && printf '#!/bin/sh\\n' | dd of=big1.dat conv=notrunc status=none");
    for args in [&["changes"][..], &["diff"][..]] {
        let mut a = args.to_vec();
        a.push(f.id.as_str());
        let (o, took, kib) = measured(&f, &a);
        let t = text(&o);
        assert!(o.status.success(), "{args:?}: {t}");
        assert!(t.contains("A big3.dat"), "{t}");
        assert!(
            took < Duration::from_secs(8),
            "{args:?} took {took:?} for sparse files"
        );
        assert!(kib < 300 << 10, "{args:?} peaked at {kib} KiB");
        if args == ["diff"] {
            assert!(t.contains("large file, not diffed"), "{t}");
            assert!(t.contains("4294967296 bytes"), "{t}");
        }
    }
    // The commit, too, costs what the files hold, and keeps them sparse.
    let (o, took, _) = measured(&f, &["commit", f.id.as_str()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(took < Duration::from_secs(8), "commit took {took:?}");
    let big = f.grant.join("big1.dat");
    let m = std::fs::metadata(&big).unwrap();
    assert_eq!(m.len(), 4 << 30);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&m) * 512 <= 1 << 20,
        "still sparse"
    );
    let mut head = [0u8; 10];
    std::io::Read::read_exact(&mut std::fs::File::open(&big).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"#!/bin/sh\n");
}

#[test]
fn a_change_inside_a_sparse_file_after_review_is_refused() {
    let f = Fixture::new();
    f.setup("echo small > keep");
    f.snapshot();
    f.agent("truncate -s 1G s.dat && printf data | dd of=s.dat bs=1 seek=500000000 conv=notrunc status=none");
    let o = airlock(&f, &["changes", f.id.as_str()]);
    assert!(o.status.success(), "{}", text(&o));
    // The upper layer changes after the review: same size, other data.
    let up = f.task.upper(0).join("s.dat");
    let file = std::fs::OpenOptions::new().write(true).open(&up).unwrap();
    std::os::unix::fs::FileExt::write_at(&file, b"DATA", 500_000_000).unwrap();
    drop(file);
    let o = airlock(&f, &["commit", f.id.as_str()]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(!f.grant.join("s.dat").exists(), "{t}");
}

#[test]
fn a_script_with_a_nul_is_diffed_as_text() {
    let f = Fixture::new();
    f.setup("printf '#!/bin/sh\\necho hi\\n' > deploy.sh && chmod +x deploy.sh && printf 'notes\\n' > notes.txt");
    f.snapshot();
    f.agent("printf '#!/bin/sh\\n# \\000\\necho deploying\\ntouch PWNED_nul\\n' > deploy.sh && printf 'notes\\n\\000touch PWNED_txt\\n' > notes.txt");
    let o = airlock(&f, &["diff", f.id.as_str()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("+touch PWNED_nul"), "{t}");
    assert!(t.contains("+# \\x00"), "the NUL is shown as an escape: {t}");
    // Text before the change stays text.
    assert!(t.contains("\\x00touch PWNED_txt"), "{t}");
    assert!(!t.contains("binary file"), "{t}");
}

#[test]
fn content_the_review_cannot_show_is_flagged() {
    let f = Fixture::new();
    f.setup("echo keep > keep");
    f.snapshot();
    f.agent(
        "printf '\\177ELF\\002\\001\\001\\000\\000' > tool && chmod +x tool \
         && printf 'PNG\\000' > image.dat \
         && { echo '#!/bin/sh'; head -c 9000000 /dev/zero | tr '\\000' '#'; echo; echo 'touch PWNED_big'; } > big.sh",
    );
    let o = airlock(&f, &["changes", f.id.as_str()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let line = |name: &str| line_naming(&t, name);
    assert!(line("A tool").contains("content not shown"), "{t}");
    assert!(line("A big.sh").contains("content not shown"), "{t}");
    assert!(
        !line("A image.dat").contains("content not shown"),
        "data that cannot run is not flagged: {t}"
    );
}

#[test]
fn control_characters_in_new_text_are_flagged() {
    let f = Fixture::new();
    f.setup("echo keep > keep");
    f.snapshot();
    f.agent(
        "printf 'SEP = \"\\\\r\\\\n\"\\n# strip \\\\r first:\\rimport os\\n' > app.py \
         && printf 'a\\r\\nb\\r\\n' > dos.txt",
    );
    let o = airlock(&f, &["changes", f.id.as_str()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let app = t
        .lines()
        .find(|l| l.contains("A app.py"))
        .unwrap_or_default();
    assert!(app.contains("contains control characters"), "{t}");
    let dos = t
        .lines()
        .find(|l| l.contains("A dos.txt"))
        .unwrap_or_default();
    assert!(
        !dos.contains("control characters"),
        "CRLF is not flagged: {t}"
    );

    let o = airlock(&f, &["changes", f.id.as_str(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let app = v[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["display"] == "app.py")
        .cloned()
        .unwrap();
    assert!(
        app["risks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["risk"] == "control_characters"),
        "{app}"
    );
}

/// Letters that draw as blank space (U+3164 HANGUL FILLER is a valid
/// JavaScript identifier: the "invisible backdoor" parameter) are flagged
/// and shown escaped, in content and in names (pass 19B).
#[test]
fn blank_drawing_letters_are_flagged_and_shown() {
    let f = Fixture::new();
    f.setup("echo keep > keep");
    f.snapshot();
    f.agent(
        "printf 'const { timeout,\\343\\205\\244} = req.query;\\n' > server.js \
         && echo x > \"$(printf 'notes\\343\\205\\244.md')\"",
    );
    let t = text(&airlock(&f, &["changes", f.id.as_str()]));
    let js = t
        .lines()
        .find(|l| l.contains("A server.js"))
        .unwrap_or_default();
    assert!(js.contains("contains control characters"), "{t}");
    assert!(t.contains("notes\\u{3164}.md"), "{t}");
    assert!(!t.contains('\u{3164}'), "{t}");
    let d = text(&airlock(&f, &["diff", f.id.as_str()]));
    assert!(d.contains("timeout,\\u{3164}}"), "{d}");
    assert!(!d.contains('\u{3164}'), "{d}");
}

/// Variation selectors are identifier characters too (`isAdmin` and
/// `isAdmin` + U+FE00 are two JavaScript names): flagged and shown escaped
/// (pass 20B). An emoji's own presentation selector (❤️) is ordinary text.
#[test]
fn variation_selectors_are_flagged_but_emoji_are_text() {
    let f = Fixture::new();
    f.setup("echo keep > keep");
    f.snapshot();
    f.agent(
        "printf 'const isAdmin\\357\\270\\200 = true;\\n' > app.js \
         && printf 'We \\342\\235\\244\\357\\270\\217 it\\n' > README.md",
    );
    let t = text(&airlock(&f, &["changes", f.id.as_str()]));
    let line = |name: &str| line_naming(&t, name);
    assert!(line("A app.js").contains("control characters"), "{t}");
    assert!(!line("A README.md").contains("control characters"), "{t}");
    let d = text(&airlock(&f, &["diff", f.id.as_str()]));
    assert!(d.contains("isAdmin\\u{fe00}"), "{d}");
    assert!(d.contains("We \u{2764}\u{fe0f} it"), "{d}");
}

#[test]
fn package_json_scripts_and_hidden_git_config_are_flagged() {
    let f = Fixture::new();
    f.setup(
        "printf '{\"name\":\"p\",\"scripts\":{\"test\":\"jest\"},\"version\":\"1.0.0\"}\\n' > package.json \
         && mkdir lib && cp package.json lib/package.json \
         && mkdir -p .git/modules/sub .git/hooks .husky && echo '[core]' > .git/modules/sub/config \
         && printf '#!/bin/sh\\nnpm test\\n' > .husky/pre-commit && chmod +x .husky/pre-commit",
    );
    f.snapshot();
    f.agent(
        "printf '{\"name\":\"p\",\"scripts\":{\"test\":\"touch PWNED; jest\"},\"version\":\"1.0.0\"}\\n' > package.json \
         && sed -i 's/1.0.0/1.0.1/' lib/package.json \
         && printf '[core]\\nfsmonitor = touch PWNED\\n' > .git/modules/sub/config \
         && mkdir -p sub && echo 'gitdir: ../.meta' > sub/.git \
         && mkdir -p .venv/lib/python3.11/site-packages && echo 'import os' > .venv/lib/python3.11/site-packages/zz.pth \
         && echo ../.cache_meta > .git/commondir && mkdir -p .cache_meta docs tools2 \
         && printf '[Core]\\n\\tFsMonitor = touch PWNED\\n' > .cache_meta/config \
         && printf '[core]\\n\\tbare = true\\n' > docs/config && echo 'ref: refs/heads/main' > docs/HEAD \
         && ln -s ../.m2 tools2/.git && echo 'plain = setting' > docs/other.config \
         && echo 'touch PWNED' >> .husky/pre-commit && rm -r .git/hooks && ln -s ../tools .git/hooks \
         && printf '[core]\\n\\tfsmonitor = touch PWNED\\n' > .gitconfig && mkdir -p site docs2 \
         && ln -s ../notes.md docs2/config \
         && seq 300 | sed 's/.*/# a comment line long enough to fill the head/' > site/config \
         && printf '[core]\\n\\tpager = touch PWNED\\n' >> site/config \
         && mkdir -p .vscode ci && echo '{}' > .vscode/mcp.json && echo '{}' > x.code-workspace \
         && echo '{}' > .devcontainer.json && mkdir -p web && echo 'x=1' > web/.npmrc \
         && echo '[tools]' > mise.toml && ln -s ci .github",
    );
    let o = airlock(&f, &["changes", f.id.as_str()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let line = |name: &str| line_naming(&t, name);
    assert!(line("M package.json").contains("npm scripts"), "{t}");
    // A version bump leaves the scripts as they were (pass 20B: every
    // edit was flagged).
    let lib = line("lib/package.json");
    assert!(!lib.is_empty() && !lib.contains("npm scripts"), "{t}");
    assert!(
        line("M .git/modules/sub/config").contains("git configuration"),
        "{t}"
    );
    assert!(line("A sub/.git").contains("gitdir"), "{t}");
    assert!(line("zz.pth").contains("Python start-up hook"), "{t}");
    // git follows these too (pass 19B: the user's next `git status` ran
    // the agent's fsmonitor command): a commondir, a `.git` link, a git
    // config outside any `.git` (the commondir's target, a bare repo).
    assert!(line("A .git/commondir").contains("redirection"), "{t}");
    assert!(line("A tools2/.git").contains("redirection"), "{t}");
    assert!(
        line("A .cache_meta/config").contains("git configuration"),
        "{t}"
    );
    assert!(line("A docs/config").contains("git configuration"), "{t}");
    assert!(!line("A docs/other.config").contains("runs code"), "{t}");
    // Pass 20B: the project's own hooks folder (husky), the hooks folder
    // made a link, a shared .gitconfig, a config that is a link, and one
    // whose keys come after a head of comments.
    assert!(line("M .husky/pre-commit").contains("git hook"), "{t}");
    assert!(line(" .git/hooks").contains("runs code"), "{t}");
    assert!(line("A .gitconfig").contains("git configuration"), "{t}");
    assert!(line("A docs2/config").contains("git configuration"), "{t}");
    assert!(line("A site/config").contains("git configuration"), "{t}");
    for name in [
        "A .vscode/mcp.json",
        "A x.code-workspace",
        "A .devcontainer.json",
        "A web/.npmrc",
        "A mise.toml",
        "A .github",
    ] {
        assert!(line(name).contains("runs code"), "{name}: {t}");
    }
}

fn getcap(p: &std::path::Path) -> String {
    let o = Command::new("getcap").arg(p).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn commit_gives_new_content_no_file_capabilities() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: file capabilities need root");
        return;
    }
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("setcap") || !have("getcap") {
        eprintln!("skipped: setcap/getcap missing (Debian: apt-get install libcap2-bin)");
        return;
    }
    let f = Fixture::new();
    f.setup("cp /bin/true tool && chmod 0757 tool && echo kept > other");
    f.snapshot();
    let tool = f.grant.join("tool");
    let o = Command::new("setcap")
        .args(["cap_dac_read_search+ep"])
        .arg(&tool)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(getcap(&tool).contains("cap_dac_read_search"));
    // Other attributes of the user's file stay with it.
    let c = std::ffi::CString::new(tool.to_str().unwrap()).unwrap();
    let note = std::ffi::CString::new("user.note").unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::setxattr(c.as_ptr(), note.as_ptr(), b"mine".as_ptr().cast(), 4, 0) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    f.agent("cat /bin/cat > tool");
    let o = airlock(&f, &["commit", f.id.as_str()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(&tool).unwrap(),
        std::fs::read("/bin/cat").unwrap()
    );
    assert_eq!(
        getcap(&tool).trim(),
        "",
        "capabilities were not carried over"
    );
    let mut v = [0u8; 16];
    // SAFETY: valid C strings and buffer.
    let n = unsafe { libc::getxattr(c.as_ptr(), note.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    assert_eq!(n, 4, "user attributes are kept");
}
