//! Task identity, states and the task folder layout shared by the sandbox
//! (which writes the upper layers), the workspace (which reviews and commits
//! them) and the supervisor (which owns the lifecycle).
//!
//! ```text
//! $XDG_STATE_HOME/airlock/tasks/<id>/
//!     task.json        the manifest: argv, policy, grants and their layers
//!     upper/<n>/       overlay upper layer of read-write grant n
//!     work/<n>/        overlay work folder of grant n
//!     root/            mount point of the sandbox's root (empty outside)
//!     home/            persistent agent home, when the policy asks for one
//!     output.log       everything the agent printed
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// A task id: a short, sortable, file-name-safe string (`20261127-021500-1a2b`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// A new id from the clock and 16 random bits.
    pub fn generate() -> Self {
        let now = crate::event::now_ms();
        let secs = (now / 1000) as libc::time_t;
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: gmtime_r only writes to the tm we own.
        unsafe { libc::gmtime_r(&secs, &mut tm) };
        let mut rnd = [0u8; 2];
        if getrandom(&mut rnd).is_err() {
            rnd = ((now % 65536) as u16).to_le_bytes();
        }
        TaskId(format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}-{:02x}{:02x}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            rnd[0],
            rnd[1]
        ))
    }

    /// Accepts an id typed by a user or read from disk. Only `[A-Za-z0-9-]`
    /// is allowed, so an id can never name a path outside the tasks folder.
    pub fn parse(s: &str) -> Result<Self, crate::Error> {
        if s.is_empty()
            || s.len() > 64
            || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(crate::Error::InvalidTaskId(s.to_string()));
        }
        Ok(TaskId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n as usize == buf.len() {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The lifecycle of DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Starting,
    Running,
    Exited,
    Failed,
    Killed,
    Reviewing,
    Committed,
    PartlyCommitted,
    Rejected,
    Interrupted,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Exited => "exited",
            TaskState::Failed => "failed",
            TaskState::Killed => "killed",
            TaskState::Reviewing => "reviewing",
            TaskState::Committed => "committed",
            TaskState::PartlyCommitted => "partly_committed",
            TaskState::Rejected => "rejected",
            TaskState::Interrupted => "interrupted",
        }
    }

    /// No process of the task can be alive in these states.
    pub fn is_finished_running(self) -> bool {
        !matches!(
            self,
            TaskState::Queued | TaskState::Starting | TaskState::Running
        )
    }
}

/// One read-write grant and the layers that hold its pending changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RwLayer {
    /// The user's real folder (the overlay's lower layer).
    pub path: PathBuf,
    /// Index `n` of `upper/<n>` and `work/<n>`.
    pub index: usize,
}

/// `task.json`: what was asked, and where its layers are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskManifest {
    pub id: TaskId,
    pub argv: Vec<String>,
    pub policy: Policy,
    pub rw_layers: Vec<RwLayer>,
    pub created_ms: u64,
    /// Who asked: `cli`, `window`, or a D-Bus client's unique name.
    pub requested_by: String,
}

/// Paths of one task's folder.
#[derive(Debug, Clone)]
pub struct TaskDir {
    root: PathBuf,
}

impl TaskDir {
    pub fn new(tasks_root: &Path, id: &TaskId) -> Self {
        TaskDir {
            root: tasks_root.join(id.as_str()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }
    pub fn manifest(&self) -> PathBuf {
        self.root.join("task.json")
    }
    pub fn upper(&self, index: usize) -> PathBuf {
        self.root.join("upper").join(index.to_string())
    }
    pub fn work(&self, index: usize) -> PathBuf {
        self.root.join("work").join(index.to_string())
    }
    pub fn root_mount(&self) -> PathBuf {
        self.root.join("root")
    }
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }
    pub fn output_log(&self) -> PathBuf {
        self.root.join("output.log")
    }

    pub fn read_manifest(&self) -> Result<TaskManifest, crate::Error> {
        let path = self.manifest();
        let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| crate::Error::Manifest {
            path,
            message: e.to_string(),
        })
    }

    /// Writes the manifest atomically (temporary + rename). It becomes
    /// durable with the task's other files in [`TaskDir::sync`].
    pub fn write_manifest(&self, m: &TaskManifest) -> Result<(), crate::Error> {
        let path = self.manifest();
        let data = serde_json::to_vec_pretty(m).map_err(|e| crate::Error::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        crate::dirs::write_replace(&path, &data)
    }

    /// Makes everything written to the task folder so far durable (the
    /// manifest, the snapshots, the agent's upper layers): one `syncfs`
    /// instead of an fsync per file while the task starts.
    pub fn sync(&self) -> Result<(), crate::Error> {
        let dir = std::fs::File::open(&self.root).map_err(|e| crate::Error::io(&self.root, e))?;
        crate::workspace::fsx::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir))
            .map_err(|e| crate::Error::io(&self.root, e))
    }
}
