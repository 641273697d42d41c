//! The policy model: what one task may see, write, reach and use. Built from
//! command-line options, agent profiles (TOML) or D-Bus requests; consumed by
//! the supervisor and turned into a sandbox by `sandbox`.

pub mod oci;
pub mod profile;
pub mod size;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use size::{format_size, parse_size};

use crate::Error;

/// How a granted folder is visible inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// A read-only bind of the real folder.
    Ro,
    /// An overlay over the real folder: writes go to the task's upper layer
    /// and reach the real folder only through review and commit.
    Rw,
}

/// One folder (or file) the user granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub path: PathBuf,
    pub access: Access,
}

impl Grant {
    /// Parses `PATH[:ro|:rw]` as given to `--grant`. A path that itself ends
    /// in `:ro`/`:rw` can be given as `PATH:ro:rw`... the last suffix wins.
    pub fn parse(spec: &str) -> Result<Grant, Error> {
        let (path, access) = if let Some(p) = spec.strip_suffix(":rw") {
            (p, Access::Rw)
        } else if let Some(p) = spec.strip_suffix(":ro") {
            (p, Access::Ro)
        } else {
            (spec, Access::Ro)
        };
        if path.is_empty() {
            return Err(Error::Invalid(format!(
                "--grant {spec:?}: the path is empty"
            )));
        }
        Ok(Grant {
            path: PathBuf::from(path),
            access,
        })
    }
}

/// The network mode of a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Loopback only; no proxy exists.
    #[default]
    None,
    /// Only the hosts of the allow-list are reachable, through the proxy.
    Allow,
    /// Like `Allow`, and unknown hosts are held while the user is asked.
    Ask,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPolicy {
    #[serde(default)]
    pub mode: NetMode,
    /// `HOST[:PORT]`, `*.example.com`, an IP literal or a CIDR.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Seconds a held connection waits for an answer before it is denied.
    #[serde(default = "default_consent_timeout")]
    pub consent_timeout_secs: u64,
}

fn default_consent_timeout() -> u64 {
    60
}

impl Default for NetPolicy {
    /// No network; a question waits 60 s (as when read from a file).
    fn default() -> Self {
        NetPolicy {
            mode: NetMode::None,
            allow_hosts: Vec::new(),
            consent_timeout_secs: default_consent_timeout(),
        }
    }
}

/// How much the monitor reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchLevel {
    /// Only blocked syscalls and accesses outside the grants.
    #[default]
    Denials,
    /// Every file access, for forensic runs.
    All,
}

/// Resource limits. `None` means "no limit" only where the field allows it;
/// [`Limits::default`] is what keeps a desktop responsive when an agent
/// misbehaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Memory of the whole task in bytes (per process under rlimits).
    pub memory: u64,
    /// Processes and threads of the task.
    pub pids: u64,
    /// Share of one CPU core (1.0 = one full core).
    pub cpu: f64,
    /// Open files per process.
    pub nofile: u64,
    /// Size of the task's `/tmp`.
    pub tmp_size: u64,
    /// Wall-clock time in seconds; 0 = no limit.
    pub timeout_secs: u64,
    /// Bytes the task may write into its read-write grants.
    pub max_upper: u64,
}

/// Reads a settings file the user names (an agent profile, an OCI
/// seccomp profile): a regular file of at most `max` bytes of UTF-8. A
/// FIFO would hang the read and `/dev/zero` would never end it.
pub fn read_settings_file(path: &Path, max: u64) -> Result<String, Error> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so that opening a FIFO does not wait for a writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::other(crate::i18n::gettext("not a regular file")),
        ));
    }
    let mut text = String::new();
    f.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(path, e))?;
    if text.len() as u64 > max {
        return Err(Error::io(
            path,
            std::io::Error::other(crate::i18n::gettext_f(
                "larger than {max}, more than any such file needs",
                &[("max", &format_size(max))],
            )),
        ));
    }
    Ok(text)
}

/// Below this no program starts (the dynamic loader alone maps more).
pub const MIN_MEMORY: u64 = 4 << 20;
/// Below this the sandbox cannot be set up (Landlock, seccomp and the
/// relay each hold a descriptor while the limit already applies).
pub const MIN_NOFILE: u64 = 8;

impl Limits {
    /// The first limit no task could run under, or that this system cannot
    /// grant: its key (as an agent profile spells it) and why, so that a
    /// mistyped value is an error up front rather than a task that crashes
    /// or a sandbox that fails to start.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        use crate::i18n::gettext_f;
        if self.memory < MIN_MEMORY {
            return Some((
                "memory",
                gettext_f(
                    "{size} is too little for any program to start; give at least {min}",
                    &[
                        ("size", &format_size(self.memory)),
                        ("min", &format_size(MIN_MEMORY)),
                    ],
                ),
            ));
        }
        if self.pids == 0 {
            return Some((
                "pids",
                crate::i18n::gettext("0 processes leave none to run the command; give at least 1"),
            ));
        }
        if self.nofile < MIN_NOFILE {
            return Some((
                "nofile",
                gettext_f(
                    "{n} open files are too few to set up the sandbox; give at least {min}",
                    &[
                        ("n", &self.nofile.to_string()),
                        ("min", &MIN_NOFILE.to_string()),
                    ],
                ),
            ));
        }
        let hard = nofile_hard_limit();
        if self.nofile > hard {
            return Some((
                "nofile",
                gettext_f(
                    "{n} open files are more than this system allows a process ({hard}, see `ulimit -Hn`)",
                    &[("n", &self.nofile.to_string()), ("hard", &hard.to_string())],
                ),
            ));
        }
        None
    }
}

/// The most open files a process may have here. Not even root may raise
/// it from inside the sandbox's user namespace.
fn nofile_hard_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(u64::MAX)
}

const MAX_DEFAULT_NOFILE: u64 = 512;

/// The open-file limit per process when none is given: 4096, or less
/// where `pids` processes with that many would hold more than a quarter of
/// the machine's file table (`fs.file-max`, about RAM in KiB / 10 where
/// systemd has not lifted it), which every user's programs share: a full
/// table fails every open on the machine with ENFILE. Never above 512
/// either: descriptors in flight in unix sockets are counted per host user
/// and checked against the sender's own limit, so a task of 1,204 filled
/// the count past the 1,024 most desktop programs run with, and they could
/// pass no descriptor (D-Bus, Wayland, PipeWire) while it ran. At 512 a
/// task keeps at most 765 in flight. Never under 256, and never above what
/// a process may have here at all.
pub fn default_nofile(pids: u64) -> u64 {
    let table = std::fs::read_to_string("/proc/sys/fs/file-max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let share = table / 4 / pids.max(1);
    share
        .clamp(256, MAX_DEFAULT_NOFILE)
        .min(nofile_hard_limit())
        .max(MIN_NOFILE)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 4 << 30,
            pids: 512,
            cpu: 1.0,
            nofile: default_nofile(512),
            tmp_size: 1 << 30,
            timeout_secs: 0,
            max_upper: 8 << 30,
        }
    }
}

/// Which seccomp profile the sandbox installs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompChoice {
    /// Airlock's own default profile.
    #[default]
    Default,
    /// A Docker/OCI JSON profile, imported instead of the default.
    OciFile(PathBuf),
}

/// Everything a task may do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    pub grants: Vec<Grant>,
    /// Paths never visible, on top of [`always_denied`].
    pub deny: Vec<PathBuf>,
    pub net: NetPolicy,
    pub limits: Limits,
    pub watch: WatchLevel,
    /// Turn the monitor off: denials still happen but are silent. Only for
    /// measuring what monitoring costs (`airlock run --watch off`).
    pub unmonitored: bool,
    /// Extra environment variables (`--env K=V`).
    pub env: Vec<(String, String)>,
    /// Fail instead of running with a weaker Landlock than the kernel's best.
    pub require_landlock: bool,
    pub seccomp: SeccompChoice,
    /// Name of the agent whose persistent home folder is mounted as `$HOME`.
    pub persistent_home: Option<String>,
    /// Give the task its own pseudo-terminal.
    pub tty: bool,
    /// Let the task create unix sockets. Off by default: a socket file in a
    /// granted folder (an ssh agent's, a terminal multiplexer's, a
    /// container engine's) would let it act outside the sandbox.
    pub unix_sockets: bool,
    /// The agent profile this policy came from (`--agent NAME`): an
    /// "always" answer to a network question is saved there.
    pub agent: Option<String>,
}

/// Paths relative to `$HOME` that no task ever sees, even inside a grant:
/// keys, credentials, keyrings and browser profiles.
pub const ALWAYS_DENIED_IN_HOME: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".kube",
    ".docker",
    ".config/containers/auth.json",
    ".oci",
    ".config/doctl",
    ".config/hcloud",
    ".netrc",
    ".git-credentials",
    ".config/git/credentials",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".password-store",
    ".local/share/keyrings",
    ".local/share/kwalletd",
    ".config/keepassxc",
    ".mozilla",
    ".thunderbird",
    ".config/google-chrome",
    ".config/chromium",
    ".config/BraveSoftware",
    ".config/microsoft-edge",
    ".config/vivaldi",
    ".config/opera",
    ".var/app/org.mozilla.firefox",
    ".var/app/com.google.Chrome",
    ".config/Signal",
    ".config/Slack",
    ".local/share/TelegramDesktop",
    ".config/gh",
    ".config/hub",
    ".config/Bitwarden",
    ".config/1Password",
    ".1password",
    ".config/op",
    ".claude/.credentials.json",
    ".codex/auth.json",
    ".gemini/oauth_creds.json",
    ".config/github-copilot",
    ".m2/settings.xml",
    ".gradle/gradle.properties",
    ".vault-token",
    ".terraform.d/credentials.tfrc.json",
    ".config/rclone",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".local/share/fish/fish_history",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".node_repl_history",
    ".local/share/recently-used.xbel",
];

/// The absolute always-denied paths for the user whose home is `home`.
pub fn always_denied(home: &Path) -> Vec<PathBuf> {
    ALWAYS_DENIED_IN_HOME.iter().map(|p| home.join(p)).collect()
}

impl Policy {
    /// Refuses a policy with a path that is not valid UTF-8. A task's
    /// policy is kept as text (its manifest, the audit database, the D-Bus
    /// API), so such a path could not be recorded, or would name another
    /// file once made text: the task is refused before anything is made.
    pub fn check_textual(&self) -> Result<(), Error> {
        let seccomp = match &self.seccomp {
            SeccompChoice::OciFile(p) => Some(p.as_path()),
            SeccompChoice::Default => None,
        };
        let bad = self
            .grants
            .iter()
            .map(|g| g.path.as_path())
            .chain(self.deny.iter().map(PathBuf::as_path))
            .chain(seccomp)
            .find(|p| p.to_str().is_none());
        match bad {
            None => Ok(()),
            Some(p) => Err(Error::Invalid(crate::i18n::gettext_f(
                "{path}: this name is not valid UTF-8, and Airlock records a task's paths as text; rename it, or name the folder that holds it (names inside a granted folder may be anything)",
                // Debug form: the bytes that are not UTF-8 as `\xNN`.
                &[("path", &format!("{p:?}"))],
            ))),
        }
    }

    /// Every path that must be hidden: the built-in list plus `--deny`.
    pub fn denied_paths(&self, home: &Path) -> Vec<PathBuf> {
        let mut v = always_denied(home);
        v.extend(self.deny.iter().cloned());
        v
    }

    /// Everything a task must never see *or write*: the denied paths of the
    /// user running Airlock, Airlock's own folders, and their real targets
    /// when they are symlinks. A review refuses changes there, so an agent
    /// cannot plant `~/.ssh/config` where none existed yet.
    pub fn hidden_paths(&self) -> Vec<PathBuf> {
        let mut v = self.denied_paths(&crate::dirs::home_dir());
        v.extend([
            crate::dirs::state_dir(),
            crate::dirs::data_dir(),
            crate::dirs::config_dir(),
        ]);
        // Also by their real paths, existing or not (a symlinked home).
        let mut canonical = crate::dirs::Canonicalizer::default();
        let real: Vec<PathBuf> = v.iter().map(|p| canonical.resolve(p)).collect();
        v.extend(real);
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_files_are_regular_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("p.toml");
        std::fs::write(&small, "command = [\"x\"]\n").unwrap();
        assert!(read_settings_file(&small, 100).is_ok());
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; 101]).unwrap();
        let e = read_settings_file(&big, 100).unwrap_err().to_string();
        assert!(e.contains("big.json") && e.contains("larger than"), "{e}");
        // Neither of these ever ends a plain read.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for p in [fifo.as_path(), Path::new("/dev/zero")] {
            let e = read_settings_file(p, 100).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn limits_no_task_could_run_under_are_named() {
        assert_eq!(Limits::default().problem(), None);
        let with = |f: fn(&mut Limits)| {
            let mut l = Limits::default();
            f(&mut l);
            l.problem().map(|(k, _)| k)
        };
        assert_eq!(with(|l| l.memory = 0), Some("memory"));
        assert_eq!(with(|l| l.memory = MIN_MEMORY), None);
        assert_eq!(with(|l| l.pids = 0), Some("pids"));
        assert_eq!(with(|l| l.pids = 1), None);
        assert_eq!(with(|l| l.nofile = MIN_NOFILE - 1), Some("nofile"));
        assert_eq!(with(|l| l.nofile = u64::MAX), Some("nofile"));
        // Zero means none for the sizes that allow it.
        assert_eq!(with(|l| l.timeout_secs = 0), None);
    }

    #[test]
    fn default_open_files_leave_most_of_the_file_table_to_others() {
        let table: u64 = std::fs::read_to_string("/proc/sys/fs/file-max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u64::MAX);
        let n = default_nofile(512);
        assert!((MIN_NOFILE..=MAX_DEFAULT_NOFILE).contains(&n), "{n}");
        assert!(n <= nofile_hard_limit());
        // Where 256 fits the quarter at all, the default fits it too.
        if table / 4 / 512 >= 256 {
            assert!(512 * n <= table / 4, "{n} of {table}");
        }
        assert!(default_nofile(1 << 20) <= default_nofile(512));
    }

    #[test]
    fn grant_suffixes() {
        assert_eq!(Grant::parse("/a").unwrap().access, Access::Ro);
        assert_eq!(Grant::parse("/a:rw").unwrap().access, Access::Rw);
        assert_eq!(Grant::parse("/a:ro").unwrap().path, PathBuf::from("/a"));
        assert_eq!(Grant::parse("/a:b:rw").unwrap().path, PathBuf::from("/a:b"));
        assert!(Grant::parse(":rw").is_err());
    }

    #[test]
    fn denied_includes_ssh_and_user_paths() {
        let p = Policy {
            deny: vec![PathBuf::from("/srv/secret")],
            ..Policy::default()
        };
        let d = p.denied_paths(Path::new("/home/u"));
        assert!(d.contains(&PathBuf::from("/home/u/.ssh")));
        assert!(d.contains(&PathBuf::from("/srv/secret")));
    }
}
