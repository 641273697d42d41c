//! Review decisions on behalf of the window and D-Bus clients: the change
//! sets, commit, reject and undo, each through `crate::workspace`, each
//! a state transition with its audit rows.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Serialize;

use super::store::AuditMsg;
use super::Shared;
use crate::audit::CommitFile;
use crate::event::EventKind;
use crate::i18n::gettext_f;
use crate::task::{TaskDir, TaskId, TaskManifest, TaskState};
use crate::workspace::{self as ws, Change, ChangeSet, CommitOptions, Selection, Snapshot};
use crate::Error;

/// The changes of one read-write grant.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeSummary {
    pub grant: String,
    pub changes: Vec<ChangeLine>,
}

/// One changed path, as a client shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeLine {
    /// Escaped path relative to the grant.
    pub path: String,
    pub kind: crate::workspace::ChangeKind,
    pub conflict: bool,
    pub risks: Vec<String>,
}

/// What a commit did, over all grants.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommitSummary {
    pub committed: Vec<String>,
    pub conflicts: Vec<String>,
    pub refused: Vec<String>,
    pub state: Option<TaskState>,
}

struct Open {
    dir: TaskDir,
    manifest: TaskManifest,
}

fn open(shared: &Shared, id: &TaskId) -> Result<Open, Error> {
    let info = shared
        .info(id)
        .ok_or_else(|| Error::NoSuchTask(id.to_string()))?;
    let dir = TaskDir::new(&shared.config.tasks_dir, id);
    if !info.state.is_finished_running() || !dir.path().join("exit.json").exists() {
        return Err(Error::Invalid(gettext_f(
            "task {id} is still {state}; its changes can be reviewed once it has ended",
            &[("id", id.as_str()), ("state", info.state.as_str())],
        )));
    }
    let manifest = dir.read_manifest()?;
    Ok(Open { dir, manifest })
}

impl Open {
    fn finished(&self) -> bool {
        self.dir.path().join("exit.json").exists()
    }

    fn change_sets(&self) -> Result<Vec<(usize, ChangeSet, Option<Snapshot>)>, Error> {
        let mut out = Vec::new();
        for layer in &self.manifest.rw_layers {
            let upper = self.dir.upper(layer.index);
            if !upper.exists() {
                continue;
            }
            let sp = ws::snapshot::snapshot_path(&self.dir, layer.index);
            let snap = if sp.exists() {
                Some(Snapshot::load(&sp)?)
            } else {
                None
            };
            let mut cs = ChangeSet::compute(&layer.path, &upper, snap.as_ref())?;
            cs.refuse_hidden(&self.manifest.policy.hidden_paths());
            out.push((layer.index, cs, snap));
        }
        Ok(out)
    }
}

fn line(c: &Change) -> ChangeLine {
    ChangeLine {
        path: c.display(),
        kind: c.kind,
        conflict: c.conflict,
        risks: c.risks.iter().map(|r| r.describe()).collect(),
    }
}

pub(crate) fn changes(shared: &Shared, id: &TaskId) -> Result<Vec<ChangeSummary>, Error> {
    let o = open(shared, id)?;
    Ok(o.change_sets()?
        .into_iter()
        .map(|(_, cs, _)| ChangeSummary {
            grant: ws::names::escape_path(&cs.grant),
            changes: cs.changes.iter().map(line).collect(),
        })
        .collect())
}

/// `p` relative to `grant` as bytes: an absolute path inside the grant, or
/// a relative one as is.
fn to_rel(grant: &Path, p: &str) -> Option<Vec<u8>> {
    let path = Path::new(p);
    if path.is_absolute() {
        let rel = path.strip_prefix(grant).ok()?;
        Some(rel.as_os_str().as_bytes().to_vec())
    } else {
        Some(p.trim_end_matches('/').as_bytes().to_vec())
    }
}

pub(crate) fn commit(
    shared: &Shared,
    id: &TaskId,
    paths: &[String],
) -> Result<CommitSummary, Error> {
    let o = open(shared, id)?;
    let mut sum = CommitSummary::default();
    let mut left_out = false;
    for (index, cs, snap) in o.change_sets()? {
        let sel = if paths.is_empty() {
            Selection::all()
        } else {
            Selection::only(paths.iter().filter_map(|p| to_rel(&cs.grant, p)))
        };
        let selected: usize = ws::select::selected(&cs, &sel).len();
        if selected < cs.changes.len() {
            left_out = true;
        }
        let finished = || o.finished();
        // from_env: the crash-test hook (AIRLOCK_COMMIT_STOP_AFTER) of the
        // workspace, so tests can stop a commit as a kill would.
        let rep = ws::commit(
            &o.dir,
            index,
            &cs,
            &sel,
            snap.as_ref(),
            &finished,
            &CommitOptions::from_env(),
        )?;
        let esc = |v: &[Vec<u8>]| v.iter().map(|p| ws::names::escape(p)).collect::<Vec<_>>();
        let mut files: Vec<CommitFile> = rep
            .committed
            .iter()
            .map(|p| CommitFile {
                path: ws::names::escape(p),
                decision: "approved".into(),
            })
            .collect();
        files.extend(rep.conflicts.iter().map(|p| CommitFile {
            path: ws::names::escape(p),
            decision: "conflict".into(),
        }));
        if !rep.committed.is_empty() || !rep.conflicts.is_empty() {
            let seq = shared.emit(
                id,
                EventKind::Committed {
                    files: rep.committed.len() as u64,
                    conflicts: rep.conflicts.len() as u64,
                    outcome: if rep.conflicts.is_empty() {
                        "committed".into()
                    } else {
                        "partly_committed".into()
                    },
                },
            );
            if let Some(seq) = seq {
                shared.record(AuditMsg::CommitFiles(Box::new((id.clone(), seq, files))));
            }
        }
        sum.committed.extend(esc(&rep.committed));
        sum.conflicts.extend(esc(&rep.conflicts));
        sum.refused.extend(esc(&rep.refused));
    }
    let state = if left_out || !sum.conflicts.is_empty() || !sum.refused.is_empty() {
        TaskState::PartlyCommitted
    } else {
        TaskState::Committed
    };
    shared.transition(id, state);
    sum.state = Some(state);
    Ok(sum)
}

pub(crate) fn reject(shared: &Shared, id: &TaskId) -> Result<(), Error> {
    let o = open(shared, id)?;
    super::recovery::remove_layers(&o.dir, &o.manifest.rw_layers)?;
    let _ = std::fs::remove_file(o.dir.path().join("reviewed.json"));
    shared.transition(id, TaskState::Rejected);
    Ok(())
}

pub(crate) fn undo(shared: &Shared, id: &TaskId) -> Result<u64, Error> {
    let o = open(shared, id)?;
    let finished = || o.finished();
    let rep = ws::undo::undo(&o.dir, &finished, None)?;
    shared.record(AuditMsg::Undone(id.clone()));
    shared.emit(
        id,
        EventKind::Warning {
            message: gettext_f(
                "commit {seq} was undone: {n} paths restored",
                &[
                    ("seq", &rep.undone.to_string()),
                    ("n", &rep.restored.len().to_string()),
                ],
            ),
        },
    );
    if !rep.lost.is_empty() {
        shared.emit(
            id,
            EventKind::Warning {
                message: gettext_f(
                    "not brought back by the undo (a socket, pipe or device is never copied): {paths}",
                    &[(
                        "paths",
                        &rep.lost
                            .iter()
                            .map(|p| crate::workspace::names::escape(p))
                            .collect::<Vec<_>>()
                            .join(", "),
                    )],
                ),
            },
        );
    }
    shared.transition(id, TaskState::Reviewing);
    Ok(rep.undone)
}
