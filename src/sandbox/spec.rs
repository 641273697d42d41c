//! What the supervisor tells the helper: everything the sandbox needs, already
//! resolved and validated, so the helper only executes a plan.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::seccomp::Profile;
use crate::event::Enforced;
use crate::policy::{Limits, WatchLevel};

/// The identity the agent runs as inside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
}

/// A read-write grant and its overlay layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RwMount {
    pub path: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Which file a grant was when it was planned (device and inode), so that
/// the helper mounts that very folder or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantId {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// The complete plan for one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub task_id: String,
    pub argv: Vec<String>,
    /// The agent's whole environment (already scrubbed).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// An empty folder (in the task folder) where the new root is built.
    pub root_mount: PathBuf,
    pub hostname: String,
    pub user: SandboxUser,
    /// The supervisor runs as root: the helper maps uid 0 for its own set-up
    /// and runs the agent as `user` (an unprivileged uid), never as root.
    pub outer_root: bool,
    pub ro: Vec<PathBuf>,
    pub rw: Vec<RwMount>,
    /// The identity of every grant (`ro` and `rw`) when it was planned.
    #[serde(default)]
    pub grant_ids: Vec<GrantId>,
    /// Paths hidden behind an empty read-only mount.
    pub deny: Vec<PathBuf>,
    /// A folder bound as `$HOME` instead of an empty tmpfs.
    pub persistent_home: Option<PathBuf>,
    pub limits: Limits,
    pub require_landlock: bool,
    pub seccomp: Profile,
    /// Give the agent a pseudo-terminal of its own, relayed by the helper.
    pub tty: bool,
    /// The monitor's watch level; `None` turns monitoring off.
    pub watch: Option<WatchLevel>,
    /// Lines for the sandbox's `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// The path out through the network proxy; `None`: loopback only.
    #[serde(default)]
    pub net: Option<NetSpec>,
}

/// The sandbox's end of the network proxy ([`super::net`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetSpec {
    /// The proxy's unix socket on the host, bound into the sandbox.
    pub socket: PathBuf,
    /// The forwarder's port on 127.0.0.1 and [::1].
    pub port: u16,
    /// The secret of the forwarder's control channel.
    pub control_token: String,
    /// Ports caught in transparent mode besides 80 and 443.
    pub extra_ports: Vec<u16>,
    /// The enforcement report's words (`allow-list proxy (2 hosts)`, `ask`).
    pub summary: String,
}

/// What the helper tells the supervisor over the control socket, one JSON
/// object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum HelperMsg {
    /// PID 1 of the sandbox exists (pid as seen by the supervisor).
    Started { pid1: u32 },
    /// Everything is in place; the agent is about to `exec`.
    Enforced { layers: Vec<Enforced> },
    /// The seccomp notification listener rides along as `SCM_RIGHTS`.
    Listener,
    /// The read end of a pipe (riding along) on which PID 1 writes the
    /// agent's status (`i32`, native order) once every process of the task
    /// is gone, before the namespaces are torn down.
    ExitChannel,
    /// A step failed; nothing of the agent ran.
    Error { stage: String, message: String },
}
