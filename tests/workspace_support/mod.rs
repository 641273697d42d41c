//! Shared fixture of the workspace tests: a grant folder, a task folder
//! with its upper layer, and a real overlayfs (in a user + mount namespace,
//! `unshare -r -m`) in which "agent" shell scripts run. The same script
//! also runs on a plain copy (`reference`), which is therefore exactly the
//! agent's view of the folder.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use airlock::policy::Policy;
use airlock::task::{RwLayer, TaskDir, TaskId, TaskManifest};
use airlock::workspace::{fsx, ChangeSet, Snapshot};

pub struct Fixture {
    pub base: tempfile::TempDir,
    pub state: PathBuf,
    pub grant: PathBuf,
    pub outside: PathBuf,
    pub reference: PathBuf,
    pub mnt: PathBuf,
    pub id: TaskId,
    pub task: TaskDir,
}

static N: AtomicUsize = AtomicUsize::new(0);

/// A temporary folder any user can use (tests also run unprivileged).
pub fn tempdir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("airlock-ws-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    t
}

/// `"$(printf '\ooo…')"`: any byte string as one shell word (names never
/// end in a newline here, which `$(…)` would strip).
pub fn q(b: &[u8]) -> String {
    let mut s = String::from("\"$(printf '");
    for c in b {
        s.push_str(&format!("\\{c:03o}"));
    }
    s.push_str("')\"");
    s
}

pub fn sh(dir: &Path, script: &str) -> std::process::Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && {{ {script}\n}}", dir.display()))
        .output()
        .unwrap();
    out
}

/// The overlay's work folder is left mode 000 by the kernel: open it up
/// so the temporary folder's removal does not leave it behind in /tmp.
impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fsx::remove_owned_tree(self.base.path());
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let base = tempdir();
        let b = base.path().to_path_buf();
        let state = b.join("state");
        let grant = b.join("g/L");
        let outside = b.join("g/outside");
        let reference = b.join("ref/R");
        let mnt = b.join("mnt/M");
        for d in [&grant, &outside, &reference, &mnt] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(outside.join("secret"), b"do not touch").unwrap();
        let id = TaskId::parse(&format!(
            "t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ))
        .unwrap();
        let task = TaskDir::new(&state.join("airlock/tasks"), &id);
        std::fs::create_dir_all(task.upper(0)).unwrap();
        std::fs::create_dir_all(task.work(0)).unwrap();
        let m = TaskManifest {
            id: id.clone(),
            argv: vec!["agent".into()],
            policy: Policy::default(),
            rw_layers: vec![RwLayer {
                path: grant.clone(),
                index: 0,
            }],
            created_ms: 0,
            requested_by: "test".into(),
        };
        task.write_manifest(&m).unwrap();
        Fixture {
            base,
            state,
            grant,
            outside,
            reference,
            mnt,
            id,
            task,
        }
    }

    /// The user's files before the task: the same script in the grant and
    /// in the reference copy.
    pub fn setup(&self, script: &str) {
        for d in [&self.grant, &self.reference] {
            let o = sh(d, script);
            assert!(
                o.status.success(),
                "setup failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    /// Records the base snapshot, as the supervisor does at task start.
    pub fn snapshot(&self) -> Snapshot {
        let s = Snapshot::capture(&self.grant).unwrap();
        s.save(&airlock::workspace::snapshot::snapshot_path(&self.task, 0))
            .unwrap();
        s
    }

    pub fn load_snapshot(&self) -> Option<Snapshot> {
        let p = airlock::workspace::snapshot::snapshot_path(&self.task, 0);
        p.exists().then(|| Snapshot::load(&p).unwrap())
    }

    /// Runs `script` as the agent: inside a real overlay over the grant,
    /// and on the reference copy.
    pub fn agent(&self, script: &str) {
        let mount = format!(
            "mount -t overlay overlay -o lowerdir='{}',upperdir='{}',workdir='{}',userxattr '{}' && cd '{}' && {{ {script}\n}}",
            self.grant.display(),
            self.task.upper(0).display(),
            self.task.work(0).display(),
            self.mnt.display(),
            self.mnt.display()
        );
        let o = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", &mount])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "agent failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = sh(&self.reference, script);
        assert!(
            o.status.success(),
            "reference failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.finish_task();
    }

    /// The task ended: what the sandbox writes when its last process exits.
    pub fn finish_task(&self) {
        std::fs::write(self.task.path().join("exit.json"), b"{\"code\":0}").unwrap();
    }

    pub fn changes(&self) -> ChangeSet {
        ChangeSet::compute(
            &self.grant,
            &self.task.upper(0),
            self.load_snapshot().as_ref(),
        )
        .unwrap()
    }
}

/// What a tree holds, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desc {
    File(Vec<u8>, u32),
    Dir(u32),
    Link(Vec<u8>),
    Special,
}

pub fn tree(root: &Path) -> BTreeMap<Vec<u8>, Desc> {
    airlock::workspace::with_deep_stack(|| {
        let mut out = BTreeMap::new();
        let fd = fsx::open_dir_path(root).unwrap();
        walk(&fd, b"", &mut out);
        Ok(out)
    })
    .unwrap()
}

fn walk(dir: &std::os::fd::OwnedFd, rel: &[u8], out: &mut BTreeMap<Vec<u8>, Desc>) {
    use std::io::Read;
    for name in fsx::list_dir(dir).unwrap() {
        let child = fsx::join(rel, &name);
        let st = fsx::lstat_at(dir.as_raw_fd(), &name).unwrap();
        let d = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let sub = fsx::open_subdir(dir.as_raw_fd(), &name).unwrap();
                walk(&sub, &child, out);
                Desc::Dir(st.st_mode & 0o7777)
            }
            libc::S_IFREG => {
                let mut v = Vec::new();
                fsx::open_file_at(dir.as_raw_fd(), &name)
                    .unwrap()
                    .read_to_end(&mut v)
                    .unwrap();
                Desc::File(v, st.st_mode & 0o7777)
            }
            libc::S_IFLNK => Desc::Link(fsx::readlink_at(dir.as_raw_fd(), &name).unwrap()),
            _ => Desc::Special,
        };
        out.insert(child, d);
    }
}

/// Names of leftovers a commit must never leave behind.
pub fn assert_no_temporaries(t: &BTreeMap<Vec<u8>, Desc>) {
    for k in t.keys() {
        let name = k.rsplit(|&b| b == b'/').next().unwrap();
        assert!(
            !name.starts_with(b".airlock-"),
            "leftover {:?}",
            String::from_utf8_lossy(k)
        );
    }
}

/// Whether the overlay-in-a-user-namespace set-up works here at all.
pub fn overlay_works() -> bool {
    let t = tempdir();
    let p = t.path();
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir(p.join(d)).unwrap();
    }
    let works = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(format!(
            "mount -t overlay overlay -o lowerdir={0}/l,upperdir={0}/u,workdir={0}/w,userxattr {0}/m",
            p.display()
        ))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    // The work folder the mount left is mode 000.
    let _ = fsx::remove_owned_tree(p);
    works
}
