//! The audit writer: one thread that owns a connection to the audit store
//! and writes what the supervisor sends it in batches (one transaction per
//! batch), so the event bus never waits for a disk sync per event.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

use crate::audit::{AuditStore, CommitFile};
use crate::event::Event;
use crate::task::{TaskId, TaskManifest};
use crate::Error;

/// Messages for the writer, applied in the order they were sent.
pub(crate) enum AuditMsg {
    Task(Box<TaskManifest>),
    // Boxed: the channel keeps a slot of the largest variant for each of
    // its CHANNEL places, all touched when it is made.
    Event(Box<Event>),
    /// Per-file decisions of the commit whose `committed` event has `seq`.
    CommitFiles(Box<(TaskId, u64, Vec<CommitFile>)>),
    /// The task's latest commit was undone.
    Undone(TaskId),
    /// Replies once everything sent before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

/// At most this many messages wait for the writer; senders then wait too,
/// which slows an event flood down instead of growing memory.
const CHANNEL: usize = 8192;
/// Events written per transaction at most.
const BATCH: usize = 2048;

/// Starts the writer thread on its own connection to `path`.
pub(crate) fn start(path: &Path) -> Result<SyncSender<AuditMsg>, Error> {
    let store = AuditStore::open(path)?;
    let (tx, rx) = sync_channel(CHANNEL);
    std::thread::Builder::new()
        .name("airlock-audit".into())
        .spawn(move || writer(store, rx))
        .map_err(|e| Error::io(path, e))?;
    Ok(tx)
}

/// Whether the writer could open the database.
pub(crate) type Opening = Receiver<Result<(), Error>>;

/// [`start`], with the database opened on the writer thread: the answer
/// arrives on the receiver. Until then messages wait in the channel; if the
/// database cannot be opened they are dropped (flushes still answered).
pub(crate) fn start_opening(path: &Path) -> Result<(SyncSender<AuditMsg>, Opening), Error> {
    let (tx, rx) = sync_channel(CHANNEL);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("airlock-audit".into())
        .spawn(move || match AuditStore::open(&owned) {
            Ok(store) => {
                let _ = ready_tx.send(Ok(()));
                writer(store, rx)
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                for msg in rx {
                    if let AuditMsg::Flush(done) = msg {
                        let _ = done.send(());
                    }
                }
            }
        })
        .map_err(|e| Error::io(path, e))?;
    Ok((tx, ready_rx))
}

fn writer(mut store: AuditStore, rx: Receiver<AuditMsg>) {
    let mut events: Vec<Event> = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Take what is already queued, up to a batch, keeping order: a
        // non-event message writes the pending events first.
        while let Some(msg) = next.take() {
            match msg {
                AuditMsg::Event(e) => events.push(*e),
                AuditMsg::Flush(done) => flushes.push(done),
                other => {
                    write_events(&mut store, &mut events);
                    apply(&mut store, other);
                }
            }
            if events.len() >= BATCH {
                write_events(&mut store, &mut events);
            }
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
            };
        }
        write_events(&mut store, &mut events);
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

fn write_events(store: &mut AuditStore, events: &mut Vec<Event>) {
    if events.is_empty() {
        return;
    }
    if let Err(e) = store.record_events(events) {
        tracing::error!("audit: {} events not recorded: {e}", events.len());
    }
    events.clear();
}

fn apply(store: &mut AuditStore, msg: AuditMsg) {
    let r = match msg {
        AuditMsg::Task(m) => store.record_task(&m),
        AuditMsg::CommitFiles(c) => {
            let (task, seq, files) = *c;
            store.record_commit_files(&task, seq, &files)
        }
        AuditMsg::Undone(task) => mark_last_undone(store, &task),
        AuditMsg::Event(_) | AuditMsg::Flush(_) => Ok(()),
    };
    if let Err(e) = r {
        tracing::error!("audit: {e}");
    }
}

fn mark_last_undone(store: &mut AuditStore, task: &TaskId) -> Result<(), Error> {
    let last = store
        .commits(task)?
        .into_iter()
        .rev()
        .find(|c| c.undone_ms.is_none() && c.file_count > 0);
    match last {
        Some(c) => store.mark_commit_undone(task, c.seq, crate::event::now_ms()),
        None => Ok(()),
    }
}

/// The next free sequence number of a task already in the store.
pub(crate) fn next_seq(store: &AuditStore, task: &TaskId) -> Result<u64, Error> {
    store.next_seq(task)
}
