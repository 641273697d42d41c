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

/// What the helper needs before its plan: enough to make the namespaces
/// and the part of the root no task decides (system, `/etc`, `/proc`,
/// `/dev`) while the supervisor still plans the task. The plan repeats it,
/// and the helper refuses a plan that says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxBase {
    /// An empty folder (in the task folder) where the new root is built.
    pub root_mount: PathBuf,
    pub hostname: String,
    pub user: SandboxUser,
    /// As [`SandboxSpec::outer_root`].
    pub outer_root: bool,
    /// As [`SandboxSpec::tty`].
    pub tty: bool,
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
    /// Grants given by a path with links on the way: (that path, the
    /// grant's real path). The sandbox makes a link at the first where it
    /// can (not in a persistent home, a grant, or where something is).
    #[serde(default)]
    pub aliases: Vec<(PathBuf, PathBuf)>,
    /// Paths hidden behind an empty read-only mount.
    pub deny: Vec<PathBuf>,
    /// A folder bound as `$HOME` instead of an empty tmpfs.
    pub persistent_home: Option<PathBuf>,
    pub limits: Limits,
    /// The task's cgroup enforces the memory limit (for the whole task,
    /// page cache and kernel memory included): the per-process data limit
    /// would only break runtimes that reserve address space (sanitizers).
    #[serde(default)]
    pub memory_by_cgroup: bool,
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

impl SandboxSpec {
    /// The part the helper gets first ([`SandboxBase`]).
    pub fn base(&self) -> SandboxBase {
        SandboxBase {
            root_mount: self.root_mount.clone(),
            hostname: self.hostname.clone(),
            user: self.user.clone(),
            outer_root: self.outer_root,
            tty: self.tty,
        }
    }
}

/// The largest message the helper reads from the supervisor (a plan with
/// thousands of hidden paths and an imported profile is well below it).
const MAX_FRAME: u64 = 64 << 20;

/// Writes `msg` as one frame of the control socket: its length (8 bytes,
/// little-endian), then its JSON. Frames, not lines: the helper reads
/// exactly its own message, and PID 1 the next one from the same socket.
pub fn write_frame(mut w: impl std::io::Write, msg: &impl Serialize) -> std::io::Result<()> {
    w.write_all(&frame(msg)?)
}

/// The bytes [`write_frame`] writes for `msg`; an error when it cannot be
/// encoded (a path that is not UTF-8), before anything is written.
pub fn frame(msg: &impl Serialize) -> std::io::Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&(body.len() as u64).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reads one frame written by [`write_frame`]; `Ok(None)` when the writer
/// closed the socket before a frame began.
pub fn read_frame<T: serde::de::DeserializeOwned>(
    mut r: impl std::io::Read,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 8];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_one_message_each_and_leave_the_next_in_place() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &"first").unwrap();
        write_frame(&mut buf, &vec![1u32, 2, 3]).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(
            read_frame::<String>(&mut r).unwrap().as_deref(),
            Some("first")
        );
        assert_eq!(read_frame::<Vec<u32>>(&mut r).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(read_frame::<String>(&mut r).unwrap(), None);
    }

    #[test]
    fn an_oversized_or_malformed_frame_is_an_error() {
        let mut huge = (MAX_FRAME + 1).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let e = read_frame::<String>(huge.as_slice()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let mut bad = 3u64.to_le_bytes().to_vec();
        bad.extend_from_slice(b"{x}");
        let e = read_frame::<String>(bad.as_slice()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        // Cut short inside the body: not a silent end.
        let mut short = 10u64.to_le_bytes().to_vec();
        short.extend_from_slice(b"\"ab");
        assert!(read_frame::<String>(short.as_slice()).is_err());
    }
}
