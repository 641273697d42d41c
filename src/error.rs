//! The library's error type. Each variant names the file, path or host it is
//! about; [`Error::hint`] says what the user can do.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a valid task id: {0:?} (ids look like 20261127-021500-1a2b)")]
    InvalidTaskId(String),
    #[error("task {0} does not exist")]
    NoSuchTask(String),
    #[error("{path}: the task manifest cannot be read: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{file}:{line}:{column}: {message}")]
    Policy {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid option: {0}")]
    Invalid(String),
    /// A request that cannot be carried out as things are (a commit
    /// running elsewhere, a full agent home); the message says why and
    /// what to do.
    #[error("{0}")]
    Refused(String),
    #[error("the sandbox could not be set up: {0}")]
    Sandbox(String),
    #[error("{0}")]
    Unsupported(String),
    /// The audit database at `path` failed; `message` says what and what to do.
    #[error("{path}: audit database: {message}")]
    Audit { path: PathBuf, message: String },
    /// Review/commit: the user's file changed while the task ran.
    #[error("{path} was changed by someone else while the task ran; it was left as it is (review it, then keep the agent's version explicitly if you want it)")]
    Conflict { path: PathBuf },
    /// Review/commit: the agent's file differs from what was reviewed.
    #[error("{path} changed after it was reviewed; nothing was committed (review it again)")]
    ReviewMismatch { path: PathBuf },
    /// Review/commit: a full disk; the commit was rolled back.
    #[error("no space left on the device holding {path}; the commit was rolled back and your files are unchanged (free some space and commit again)")]
    DiskFull { path: PathBuf },
    /// Undo: what the commit placed was changed since; nothing was undone.
    #[error("{path} was changed since the commit; nothing was undone, so that change is kept (undo what you need by hand)")]
    ChangedSinceCommit { path: PathBuf },
    /// Undo: a full disk; the undo was rolled back.
    #[error("no space left on the device holding {path}; the undo was rolled back and your files are as the commit left them (free some space and undo again)")]
    UndoDiskFull { path: PathBuf },
    /// Review/commit: the test hook stopped the commit as if killed.
    #[error("the commit was stopped at step {0} (crash test hook)")]
    CommitStopped(u64),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}
