//! What the review shows and flags, through the `airlock` binary: nothing
//! of a change may be hidden (cut lines, "binary" scripts, control
//! characters), a huge sparse file costs the reviewer nothing, and a
//! commit gives new content none of the user's file capabilities.
//!
//! `AIRLOCK_BIN` runs these against another build of the binary.

mod workspace_support;

use std::path::PathBuf;
use std::process::{Command, Output};

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

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
