//! Review and commit: the change set of a task's upper layers, diffs, risk
//! flags, the selection the user approves, and the crash-safe, undoable
//! commit transaction. No GTK and no namespaces here: the supervisor and
//! the CLI call in once no process of the task is alive.

pub mod changes;
pub mod commit;
pub mod content;
pub mod diff;
pub mod fsx;
pub mod names;
pub mod risk;
pub mod select;
pub mod snapshot;
pub mod undo;

pub use changes::{Change, ChangeKind, ChangeSet, Node, NodeKind};
pub use commit::{commit, recover, CommitOptions, CommitReport, RecoveryOutcome};
pub use select::{FileChoice, Selection};
pub use snapshot::Snapshot;

/// Folders nested deeper than this are refused with an error rather than
/// walked (an agent can nest folders without limit; a walk cannot).
pub const MAX_DEPTH: usize = 2000;

/// Runs `f` on a thread with a large stack: the tree walks recurse once
/// per folder level, and a grant may be [`MAX_DEPTH`] levels deep.
pub fn with_deep_stack<T: Send>(
    f: impl FnOnce() -> Result<T, crate::Error> + Send,
) -> Result<T, crate::Error> {
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("airlock-workspace".into())
            .stack_size(256 << 20)
            .spawn_scoped(s, f)
            .map_err(|e| crate::Error::Unsupported(format!("cannot start a worker thread: {e}")))?;
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}
