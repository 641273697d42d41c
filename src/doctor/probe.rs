//! The real probes, run on this machine. [`gather`] produces [`Probes`], a
//! plain record of facts; [`super::report`] decides what they mean. Probes
//! that change process state run in a child (see [`super::child`]); the rest
//! read files, ask the kernel or ask the session bus from here.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bus;
use super::child::{ChildOutput, ProbeKind, Whiteout};
use crate::i18n::gettext_f;

/// The hidden subcommand that runs one probe in a fresh process.
pub const PROBE_SUBCOMMAND: &str = "__probe";

/// A probe child that takes longer than this is killed and counted as failed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(5);

/// The AppArmor profile meson installs for the helper.
pub const APPARMOR_PROFILE: &str = "/etc/apparmor.d/io.github.airlock.Airlock";

/// Everything the probes found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probes {
    /// The real uid Airlock runs as (0 = root).
    pub uid: u32,
    pub userns: Outcome,
    pub userns_sysctl: UsernsSysctl,
    pub apparmor: AppArmor,
    pub overlay: Overlay,
    pub landlock: Landlock,
    pub seccomp: Outcome,
    pub seccomp_notify: SeccompNotify,
    pub cgroup: Cgroup,
    pub session_bus: SessionBus,
    pub systemd_user: Service,
    pub portal: Portal,
    pub tray: Tray,
}

/// Whether a probe child found the layer working, and the failing step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The sysctls that switch unprivileged user namespaces off, when present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernsSysctl {
    /// `/proc/sys/user/max_user_namespaces` (0 disables them).
    pub max_user_namespaces: Option<u64>,
    /// `/proc/sys/kernel/unprivileged_userns_clone` (Debian's older kernels).
    pub unprivileged_userns_clone: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppArmor {
    /// `/proc/sys/kernel/apparmor_restrict_unprivileged_userns` is 1.
    pub restricts_userns: bool,
    /// Our profile is present in `/etc/apparmor.d`.
    pub profile_installed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How this kernel records deletions in the upper layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whiteout: Option<Whiteout>,
    /// Where upper layers live (`$XDG_STATE_HOME/airlock`) and its file
    /// system, which must support user extended attributes.
    pub state_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_fs: Option<String>,
    /// The scratch folder could be created there at all.
    pub state_dir_writable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Landlock {
    /// The ABI version the kernel reports; 0 = no Landlock.
    pub abi: u32,
    /// Why the kernel refused, when it did (`ENOSYS`: not built in,
    /// `EOPNOTSUPP`: built in but disabled at boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// The active LSM list, when securityfs is readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsm: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompNotify {
    /// `SECCOMP_FILTER_FLAG_NEW_LISTENER` gave a listener.
    pub listener: bool,
    /// A notified call could be let through with
    /// `SECCOMP_USER_NOTIF_FLAG_CONTINUE` (what the file watch needs).
    pub continue_flag: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// Where cgroup2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
    /// on hybrid machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<PathBuf>,
    /// Cgroup v1 hierarchies are mounted too (hybrid mode): their
    /// controllers are then missing from cgroup2.
    pub v1_mounted: bool,
    /// Our own cgroup folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
    /// We could create (and removed) a child cgroup in it.
    pub writable: bool,
    /// Its `cgroup.controllers`.
    pub controllers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionBus {
    Connected,
    Unavailable { error: String },
}

/// A D-Bus service we asked for a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Service {
    /// No session bus to ask on.
    NotChecked,
    Answered {
        version: String,
    },
    NoAnswer {
        error: String,
    },
}

/// xdg-desktop-portal, and whether it offers the file chooser grants use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Portal {
    NotChecked,
    NoAnswer {
        error: String,
    },
    /// The portal answers but has no FileChooser (no backend for it).
    NoFileChooser {
        error: String,
    },
    FileChooser {
        version: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Tray {
    NotChecked,
    NoWatcher,
    Watcher { host_registered: bool },
    NoAnswer { error: String },
}

/// Runs every probe. Must be called from the `airlock` binary: the child
/// probes run this same executable as `airlock __probe KIND`.
pub fn gather() -> Probes {
    let uid = nix::unistd::getuid().as_raw();
    let userns = child_outcome(run_child(ProbeKind::Userns, None));
    let overlay = overlay();
    let seccomp = child_outcome(run_child(ProbeKind::Seccomp, None));
    let seccomp_notify = match run_child(ProbeKind::SeccompNotify, None) {
        Ok(out) => SeccompNotify {
            listener: out.ok,
            continue_flag: out.notify_continue == Some(true),
            error: out.error,
        },
        Err(error) => SeccompNotify {
            error: Some(error),
            ..SeccompNotify::default()
        },
    };
    let bus = bus::probe();
    Probes {
        uid,
        userns,
        userns_sysctl: UsernsSysctl {
            max_user_namespaces: read_number("/proc/sys/user/max_user_namespaces"),
            unprivileged_userns_clone: read_number("/proc/sys/kernel/unprivileged_userns_clone"),
        },
        apparmor: AppArmor {
            restricts_userns: read_number("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
                == Some(1),
            profile_installed: Path::new(APPARMOR_PROFILE).is_file(),
        },
        overlay,
        landlock: landlock(),
        seccomp,
        seccomp_notify,
        cgroup: cgroup(),
        session_bus: bus.session_bus,
        systemd_user: bus.systemd_user,
        portal: bus.portal,
        tray: bus.tray,
    }
}

fn read_number(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn child_outcome(r: Result<ChildOutput, String>) -> Outcome {
    match r {
        Ok(out) => Outcome {
            ok: out.ok,
            error: out.error,
        },
        Err(error) => Outcome {
            ok: false,
            error: Some(error),
        },
    }
}

/// Runs `airlock __probe KIND` and reads its line of JSON, killing it after
/// [`CHILD_TIMEOUT`].
fn run_child(kind: ProbeKind, dir: Option<&Path>) -> Result<ChildOutput, String> {
    // /proc/self/exe still runs this binary after it was replaced on disk
    // (an upgrade or a rebuild while doctor runs); its path may not.
    let exe = PathBuf::from("/proc/self/exe");
    let mut cmd = Command::new(&exe);
    cmd.arg(PROBE_SUBCOMMAND).arg(kind.as_arg());
    if let Some(dir) = dir {
        cmd.arg("--dir").arg(dir);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", exe.display()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < CHILD_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(gettext_f(
                    "the probe did not finish within {seconds} seconds",
                    &[("seconds", &CHILD_TIMEOUT.as_secs().to_string())],
                ));
            }
            Err(e) => return Err(format!("wait for the probe: {e}")),
        }
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    if !stderr.trim().is_empty() {
        tracing::debug!("probe {}: {}", kind.as_arg(), stderr.trim());
    }
    let line = stdout.lines().last().unwrap_or_default();
    let out: ChildOutput = serde_json::from_str(line)
        .map_err(|_| format!("the probe ended with {status} and no report"))?;
    if out.ok != status.success() {
        return Err(format!("the probe ended with {status} but reported {line}"));
    }
    Ok(out)
}

/// Prepares a scratch overlay under the state folder (where the sandbox
/// puts upper layers), runs the overlay probe on it, and removes it.
fn overlay() -> Overlay {
    let state_dir = crate::dirs::state_dir();
    let scratch = state_dir.join(format!("doctor-{}", std::process::id()));
    let prepared = (|| -> Result<(), crate::Error> {
        crate::dirs::create_private_dir(&state_dir)?;
        for sub in ["lower", "upper", "work", "merged"] {
            crate::dirs::create_private_dir(&scratch.join(sub))?;
        }
        for (name, data) in [("kept", "kept"), ("gone", "gone")] {
            let path = scratch.join("lower").join(name);
            fs::write(&path, data).map_err(|e| crate::Error::io(&path, e))?;
        }
        Ok(())
    })();
    let state_fs = fs_type(&state_dir);
    let state_dir_writable = prepared.is_ok();
    let result = match prepared {
        Ok(()) => run_child(ProbeKind::Overlay, Some(&scratch)),
        Err(e) => Err(e.to_string()),
    };
    remove_scratch(&scratch);
    match result {
        Ok(out) => Overlay {
            ok: out.ok,
            error: out.error,
            whiteout: out.whiteout,
            state_dir,
            state_fs,
            state_dir_writable,
        },
        Err(error) => Overlay {
            ok: false,
            error: Some(error),
            whiteout: None,
            state_dir,
            state_fs,
            state_dir_writable,
        },
    }
}

/// Removes the scratch folder. Overlayfs leaves `work/work` with mode 000,
/// which its owner cannot empty until it is opened up again.
fn remove_scratch(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fn open_up(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&entry.path());
                }
            }
        }
    }
    if dir.exists() {
        open_up(dir);
        if let Err(e) = fs::remove_dir_all(dir) {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }
}

fn fs_type(path: &Path) -> Option<String> {
    use nix::sys::statfs::{self, statfs};
    let t = statfs(path).ok()?.filesystem_type();
    let name = match t {
        statfs::EXT4_SUPER_MAGIC => "ext4",
        statfs::BTRFS_SUPER_MAGIC => "btrfs",
        statfs::XFS_SUPER_MAGIC => "xfs",
        statfs::TMPFS_MAGIC => "tmpfs",
        statfs::OVERLAYFS_SUPER_MAGIC => "overlay",
        statfs::NFS_SUPER_MAGIC => "nfs",
        statfs::FUSE_SUPER_MAGIC => "fuse",
        other => return Some(format!("{:#x}", other.0)),
    };
    Some(name.to_owned())
}

/// Asks the kernel for the Landlock ABI version.
pub(super) fn landlock_abi_raw() -> Result<u32, i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attribute and size 0 the call only returns the ABI.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOSYS))
    } else {
        Ok(r as u32)
    }
}

fn landlock() -> Landlock {
    let (abi, errno) = match landlock_abi_raw() {
        Ok(abi) => (abi, None),
        Err(errno) => (0, Some(errno)),
    };
    Landlock {
        abi,
        errno,
        lsm: fs::read_to_string("/sys/kernel/security/lsm")
            .ok()
            .map(|s| s.trim().to_owned()),
    }
}

use crate::sandbox::cgroup::{cgroup_folder, own_cgroup, parse_mountinfo};

fn cgroup() -> Cgroup {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = parse_mountinfo(&mountinfo);
    let v1_mounted = mounts.iter().any(|m| m.fstype == "cgroup");
    let Some(v2) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
        return Cgroup {
            v1_mounted,
            ..Cgroup::default()
        };
    };
    let folder = own_cgroup(&own).and_then(|path| cgroup_folder(v2, &path));
    let (writable, controllers) = match &folder {
        Some(folder) => (
            can_create_child(folder),
            fs::read_to_string(folder.join("cgroup.controllers"))
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
        ),
        None => (false, Vec::new()),
    };
    Cgroup {
        mount: Some(v2.mount_point.clone()),
        v1_mounted,
        folder,
        writable,
        controllers,
    }
}

/// Creating (and removing) a child cgroup is the real test of delegation:
/// permission bits alone say nothing for root or under cgroup namespaces.
fn can_create_child(folder: &Path) -> bool {
    let probe = folder.join(format!("airlock-doctor-{}", std::process::id()));
    match fs::create_dir(&probe) {
        Ok(()) => {
            if let Err(e) = fs::remove_dir(&probe) {
                tracing::warn!("cannot remove {}: {e}", probe.display());
            }
            true
        }
        Err(e) => {
            tracing::debug!("cgroup {} not writable: {e}", folder.display());
            false
        }
    }
}
