//! The three programs and who loads what: `airlock` (command line, engine)
//! and `airlock-sandbox-helper` must not link GTK — every task start pays
//! for the libraries they load — and `airlock` with no command runs
//! `airlock-window` from beside itself.

mod common;

use std::path::Path;
use std::process::Command;

/// The shared libraries `bin` asks the dynamic loader for.
fn needed(bin: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(bin)
        .output()
        .expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf -d {}", bin.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next().map(str::to_string))
        .collect()
}

#[test]
fn command_line_and_helper_do_not_load_gtk() {
    let airlock = common::airlock_bin();
    let helper = airlock.with_file_name("airlock-sandbox-helper");
    for bin in [&airlock, &helper] {
        let libs = needed(bin);
        assert!(libs.iter().any(|l| l.starts_with("libc.so")), "{libs:?}");
        for l in &libs {
            assert!(
                !["libgtk", "libadwaita", "libgobject", "libglib", "libgio"]
                    .iter()
                    .any(|g| l.starts_with(g)),
                "{} needs {l}",
                bin.display()
            );
        }
    }
    let window = airlock.with_file_name("airlock-window");
    if window.exists() {
        assert!(
            needed(&window).iter().any(|l| l.starts_with("libgtk-4")),
            "the window links GTK"
        );
    }
}

#[test]
fn without_the_window_program_airlock_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("airlock");
    std::fs::copy(common::airlock_bin(), &lone).unwrap();
    let out = Command::new(&lone)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("airlock-window"), "{err}");
    assert!(
        err.contains(&dir.path().join("airlock-window").display().to_string()),
        "names the path it looked at: {err}"
    );
}
