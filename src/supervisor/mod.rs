//! The supervisor: a long-lived thread with its own tokio runtime that owns
//! the task queue, the lifecycle of every task, the event bus, the audit
//! writer, recovery at start and the queue of network consent questions.
//! The window, the D-Bus service and the headless CLI all talk to it through
//! a cloneable [`SupervisorHandle`].
//!
//! ```text
//!  SupervisorHandle ──cmd──▶ core loop (queue, concurrency) ──▶ one std::thread per task
//!        ▲                                                         │ plan, spawn, watchdog
//!        └──── Subscription ◀── broadcast ◀── emit() ──▶ audit writer thread (batches)
//! ```
//!
//! Lifecycle (DESIGN.md): `Queued → Starting → Running → Exited | Failed |
//! Killed → Reviewing → Committed | PartlyCommitted | Rejected`, plus
//! `Interrupted` (found at start) and `Reviewing` again after an undo.
//! Every transition goes through [`Shared::emit`]: one `StateChanged` event
//! on the bus and one row in the audit store.

mod output;
mod quota;
mod recovery;
mod review;
mod runner;
mod store;
mod usage;
pub(crate) use store::next_seq;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use output::{Ring, TerminalHold, RING_BYTES};
pub use recovery::{has_ended, kill_local, recover_orphan};
pub use review::{ChangeLine, ChangeSummary, CommitSummary};

use crate::audit::AuditStore;
use crate::event::{Event, EventKind, ExitStatus};
use crate::i18n::gettext_f;
use crate::netproxy::{ConsentAnswer, ConsentRequest, ConsentSender};
use crate::policy::Policy;
use crate::task::{TaskId, TaskManifest, TaskState};
use crate::Error;
use store::AuditMsg;

/// Events a subscriber may fall behind by before it loses some (and is
/// told so with a `Warning`).
const BUS_CAPACITY: usize = 8192;

/// The task id used for events that are about the supervisor itself
/// (a subscriber's lag warning). Never a real task.
pub const SUPERVISOR_TASK: &str = "supervisor";

/// How the supervisor is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Tasks that run at the same time; more wait in the queue.
    pub concurrency: usize,
    /// Finished tasks (and their folders) older than this many days are
    /// pruned at start; 0 keeps everything.
    pub retention_days: u64,
    pub audit_path: PathBuf,
    pub tasks_dir: PathBuf,
    /// The binary that becomes the sandbox helper (the small one when
    /// installed next to ours, else our own).
    pub helper_exe: PathBuf,
}

impl Config {
    /// The defaults: 2 tasks at once, 30 days, the XDG paths, this binary.
    pub fn new() -> Result<Config, Error> {
        Ok(Config {
            concurrency: 2,
            retention_days: 30,
            audit_path: crate::audit::default_path(),
            tasks_dir: crate::dirs::tasks_dir(),
            helper_exe: crate::sandbox::helper_exe()?,
        })
    }
}

/// Where a task's standard output and error go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OutputMode {
    /// Captured: a ring in memory and the task's `output.log`; no input.
    #[default]
    Capture,
    /// The supervisor process's own stdio (the terminal of `airlock run`).
    Inherit,
    /// As `Inherit`, but the task's stdout goes to our stderr: our stdout
    /// carries `--json-events -`, which the task must not be able to forge
    /// or break.
    InheritStdoutToStderr,
    /// As `Inherit` (or `InheritStdoutToStderr`), but relayed by the
    /// supervisor, which holds the output back while a question is on the
    /// terminal.
    Held {
        hold: TerminalHold,
        stdout_to_stderr: bool,
    },
}

/// A task to run.
#[derive(Debug)]
pub struct TaskRequest {
    pub argv: Vec<String>,
    pub policy: Policy,
    /// `cli`, `window`, or a D-Bus client's unique name.
    pub requested_by: String,
    pub output: OutputMode,
    /// A helper the caller started ahead (the command line does, with its
    /// stdio: only for [`OutputMode::Inherit`]).
    pub helper: Option<crate::sandbox::Prestarted>,
}

/// What the supervisor knows about one task right now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    pub id: TaskId,
    pub argv: Vec<String>,
    pub requested_by: String,
    pub state: TaskState,
    pub exit: Option<ExitStatus>,
    pub changed_files: u64,
    pub denial_count: u64,
    pub created_ms: u64,
}

/// A network question waiting for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingConsent {
    pub id: u64,
    pub host: String,
    pub port: u16,
}

/// Kill switch and helper pid of a running task, shared with its thread.
#[derive(Debug, Default)]
pub(crate) struct TaskCtl {
    pub(crate) kill: AtomicBool,
    /// The helper's pid while it runs; 0 before and after.
    pub(crate) pid: AtomicU32,
}

struct Slot {
    info: TaskInfo,
    /// Next sequence number; `None` until looked up in the store (tasks
    /// from an earlier run).
    seq: Option<u64>,
    ctl: Option<Arc<TaskCtl>>,
    output: Arc<Mutex<Ring>>,
    /// What the task may still put in the audit log.
    quota: quota::Quota,
}

/// State shared by the core loop, the task threads and the handles.
pub(crate) struct Shared {
    tasks: Mutex<BTreeMap<TaskId, Slot>>,
    /// Shared events: the bus keeps a slot for each of its BUS_CAPACITY
    /// places, all made at start.
    bus: broadcast::Sender<Arc<Event>>,
    audit: SyncSender<AuditMsg>,
    /// A read connection, for history and sequence numbers of old tasks;
    /// opened on first use.
    reader: Mutex<Option<AuditStore>>,
    /// Whether the writer could open the database, until asked once.
    audit_opening: Mutex<Option<store::Opening>>,
    /// The answer, once asked.
    audit_open: std::sync::OnceLock<Result<(), String>>,
    pub(crate) config: Config,
    warnings: Mutex<Vec<String>>,
    /// Where the task's network proxies send ask-mode questions.
    pub(crate) consent: ConsentSender,
    /// Which task asked each consent question (to save "always" answers).
    consent_tasks: Mutex<std::collections::HashMap<u64, TaskId>>,
    /// Subscribers that must never lose an event (the D-Bus service: its
    /// clients cannot re-read a lost signal).
    taps: Mutex<Vec<mpsc::UnboundedSender<Event>>>,
    /// A quick start's recovery, running beside the first task.
    recovering: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Shared {
    /// Runs `f` on the read connection, opening it first if need be.
    pub(crate) fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut AuditStore) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut guard = self.reader.lock().map_err(|_| poisoned())?;
        let store = match guard.take() {
            Some(s) => s,
            None => {
                // Never beside the writer's own open: on a new database both
                // would switch it to WAL and migrate it at once, and SQLite
                // answers one of them "locked" without waiting.
                self.audit_opened()?;
                AuditStore::open(&self.config.audit_path)?
            }
        };
        let store = guard.insert(store);
        f(store)
    }

    /// Whether the audit database is open for writing (a quick start opens
    /// it in the background): a task must not start without its record.
    pub(crate) fn audit_opened(&self) -> Result<(), Error> {
        let outcome = self.audit_open.get_or_init(|| {
            let pending = self.audit_opening.lock().ok().and_then(|mut r| r.take());
            match pending.map(|rx| rx.recv()) {
                None | Some(Ok(Ok(()))) => Ok(()),
                Some(Ok(Err(e))) => Err(e.to_string()),
                Some(Err(_)) => Err(gettext_f(
                    "the audit database {path} could not be opened",
                    &[("path", &self.config.audit_path.display().to_string())],
                )),
            }
        });
        outcome.clone().map_err(Error::Unsupported)
    }

    /// Waits for a quick start's recovery to end.
    fn recovered(&self) {
        let handle = self.recovering.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Emits one event of `task`: the next sequence number, the task's
    /// summary updated, the audit writer and then the bus. Under one lock,
    /// so every subscriber sees each task's events in `seq` order.
    pub(crate) fn emit(&self, task: &TaskId, kind: EventKind) -> Option<u64> {
        self.emit_counted(task, kind, true)
    }

    /// `counted`: subject to the task's [`quota::Quota`].
    fn emit_counted(&self, task: &TaskId, kind: EventKind, counted: bool) -> Option<u64> {
        if let EventKind::ConsentRequested { id, .. } = &kind {
            if let Ok(mut m) = self.consent_tasks.lock() {
                m.insert(*id, task.clone());
            }
        }
        if matches!(kind, EventKind::Exited { .. }) {
            // What was counted past a quota, said before the end.
            let summary = self
                .tasks
                .lock()
                .ok()
                .and_then(|mut t| t.get_mut(task).and_then(|s| s.quota.take_summary()));
            if let Some(message) = summary {
                self.emit_counted(task, EventKind::Warning { message }, false);
            }
        }
        let Ok(mut tasks) = self.tasks.lock() else {
            return None;
        };
        let Some(slot) = tasks.get_mut(task) else {
            tracing::error!("event for unknown task {task}: {kind:?}");
            return None;
        };
        let kind = match counted {
            false => kind,
            true => match slot.quota.admit(kind) {
                quota::Admit::Record(k) => k,
                quota::Admit::Drop => return None,
            },
        };
        let seq = match slot.seq {
            Some(s) => s,
            None => self.with_reader(|r| store::next_seq(r, task)).unwrap_or(0),
        };
        slot.seq = Some(seq + 1);
        match &kind {
            EventKind::StateChanged { to, .. } => slot.info.state = *to,
            EventKind::Exited {
                status,
                changed_files,
            } => {
                slot.info.exit = Some(*status);
                slot.info.changed_files = *changed_files;
            }
            EventKind::SyscallDenied { count, .. } | EventKind::NetAttempt { count, .. } => {
                slot.info.denial_count += count
            }
            EventKind::FileAttempt {
                count,
                denied: true,
                ..
            } => slot.info.denial_count += count,
            _ => {}
        }
        let event = Event::new(task.clone(), seq, kind);
        if self
            .audit
            .send(AuditMsg::Event(Box::new(event.clone())))
            .is_err()
        {
            tracing::error!("the audit writer is gone; event {seq} of {task} not recorded");
        }
        if let Ok(mut taps) = self.taps.lock() {
            taps.retain(|t| t.send(event.clone()).is_ok());
        }
        // No subscriber is not an error.
        let _ = self.bus.send(Arc::new(event));
        Some(seq)
    }

    /// A state transition from the task's current state.
    pub(crate) fn transition(&self, task: &TaskId, to: TaskState) {
        let from = self.info(task).map(|i| i.state);
        self.emit(task, EventKind::StateChanged { from, to });
    }

    pub(crate) fn set_changed_files(&self, task: &TaskId, n: u64) {
        if let Ok(mut t) = self.tasks.lock() {
            if let Some(s) = t.get_mut(task) {
                s.info.changed_files = n;
            }
        }
    }

    pub(crate) fn info(&self, task: &TaskId) -> Option<TaskInfo> {
        self.tasks.lock().ok()?.get(task).map(|s| s.info.clone())
    }

    fn insert(&self, info: TaskInfo, seq: Option<u64>) {
        if let Ok(mut t) = self.tasks.lock() {
            t.insert(
                info.id.clone(),
                Slot {
                    info,
                    seq,
                    ctl: None,
                    output: Arc::new(Mutex::new(Ring::default())),
                    quota: quota::Quota::default(),
                },
            );
        }
    }

    /// Registers a task thread's kill switch; returns the output ring.
    pub(crate) fn attach(&self, task: &TaskId, ctl: Arc<TaskCtl>) -> Arc<Mutex<Ring>> {
        match self.tasks.lock() {
            Ok(mut t) => match t.get_mut(task) {
                Some(slot) => {
                    slot.ctl = Some(ctl);
                    slot.output.clone()
                }
                None => Arc::default(),
            },
            Err(_) => Arc::default(),
        }
    }

    pub(crate) fn record(&self, msg: AuditMsg) {
        if self.audit.send(msg).is_err() {
            tracing::error!("the audit writer is gone");
        }
    }

    /// A finding of recovery: logged, and kept for [`SupervisorHandle::warnings`]
    /// (the caller decides whether to show it).
    pub(crate) fn warn(&self, message: String) {
        tracing::info!("{message}");
        if let Ok(mut w) = self.warnings.lock() {
            w.push(message);
        }
    }
}

enum Cmd {
    Submit(Box<TaskRequest>, oneshot::Sender<Result<TaskId, Error>>),
    Kill(TaskId, oneshot::Sender<Result<(), Error>>),
    Answer(u64, ConsentAnswer, oneshot::Sender<Result<(), Error>>),
    Pending(oneshot::Sender<Vec<PendingConsent>>),
}

/// Starts supervisors.
pub struct Supervisor;

impl Supervisor {
    /// Opens the audit store, recovers what an earlier run left behind
    /// (see [`SupervisorHandle::warnings`]), prunes old tasks, and starts
    /// the supervisor thread.
    pub fn start(config: Config) -> Result<SupervisorHandle, Error> {
        Self::start_inner(config, false)
    }

    /// [`Supervisor::start`] for a short-lived `airlock run`, whose start
    /// must not grow with the number of tasks ever run: besides retention,
    /// recovery looks only at tasks recorded as live (marking those whose
    /// supervisor died as interrupted). Interrupted commits and unknown
    /// folders are left to the long-lived supervisor (the app, `airlock
    /// serve`) and to the review commands, which recover a task's commit
    /// before touching it. Recovery runs on a thread of its own, beside the
    /// first task; [`SupervisorHandle::warnings`] and
    /// [`SupervisorHandle::flush_audit_blocking`] wait for it.
    pub fn start_quick(config: Config) -> Result<SupervisorHandle, Error> {
        Self::start_inner(config, true)
    }

    fn start_inner(config: Config, quick: bool) -> Result<SupervisorHandle, Error> {
        // A quick start opens the database beside the first task's
        // preparation; the task waits for it before its sandbox starts.
        let (audit, reader, opening) = if quick {
            let (tx, ready) = store::start_opening(&config.audit_path)?;
            (tx, None, Some(ready))
        } else {
            let tx = store::start(&config.audit_path)?;
            (tx, Some(AuditStore::open(&config.audit_path)?), None)
        };
        let (bus, _) = broadcast::channel(BUS_CAPACITY);
        let (consent_tx, consent_rx) = mpsc::unbounded_channel::<ConsentRequest>();
        let shared = Arc::new(Shared {
            tasks: Mutex::new(BTreeMap::new()),
            bus,
            audit,
            reader: Mutex::new(reader),
            audit_opening: Mutex::new(opening),
            audit_open: std::sync::OnceLock::new(),
            config,
            warnings: Mutex::new(Vec::new()),
            consent: consent_tx.clone(),
            consent_tasks: Mutex::new(Default::default()),
            taps: Mutex::new(Vec::new()),
            recovering: Mutex::new(None),
        });
        if quick {
            // Nothing of the task about to start depends on it (recovery
            // touches only tasks recorded earlier), so it runs beside it.
            let s2 = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("airlock-recovery".into())
                .spawn(move || {
                    if let Err(e) = recovery::recover_live(&s2) {
                        s2.warn(gettext_f(
                            "recovery of earlier tasks failed: {error}",
                            &[("error", &e.to_string())],
                        ));
                    }
                });
            match spawned {
                Ok(h) => {
                    if let Ok(mut r) = shared.recovering.lock() {
                        *r = Some(h);
                    }
                }
                Err(_) => recovery::recover_live(&shared)?,
            }
        } else {
            recovery::recover(&shared)?;
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (rt_tx, rt_rx) = std::sync::mpsc::channel();
        let core_shared = shared.clone();
        std::thread::Builder::new()
            .name("airlock-supervisor".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("airlock-rt")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = rt_tx.send(Err(e));
                        return;
                    }
                };
                let _ = rt_tx.send(Ok(rt.handle().clone()));
                rt.block_on(core(core_shared, cmd_rx, consent_rx));
            })
            .map_err(|e| Error::Unsupported(format!("cannot start the supervisor thread: {e}")))?;
        let runtime = rt_rx
            .recv()
            .map_err(|_| Error::Unsupported("the supervisor thread did not start".into()))?
            .map_err(|e| Error::Unsupported(format!("cannot start the supervisor runtime: {e}")))?;
        Ok(SupervisorHandle {
            shared,
            cmd: cmd_tx,
            consent: consent_tx,
            runtime,
        })
    }
}

/// The core loop: queue and concurrency. Ends when every handle is gone.
async fn core(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut consent_rx: mpsc::UnboundedReceiver<ConsentRequest>,
) {
    let mut queue: VecDeque<(TaskId, TaskRequest)> = VecDeque::new();
    let mut running = 0usize;
    let mut consents: Vec<ConsentRequest> = Vec::new();
    // Task threads report their end here; a channel of its own so that the
    // loop still ends when the last handle is dropped.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<TaskId>();
    loop {
        let cmd = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(c) => c,
                None => break,
            },
            Some(_) = done_rx.recv() => {
                running = running.saturating_sub(1);
                start_queued(&shared, &mut queue, &mut running, &done_tx);
                continue;
            }
            Some(req) = consent_rx.recv() => {
                consents.push(req);
                continue;
            }
        };
        // A question is queued before its event is emitted: an answer that
        // follows the event always finds it here.
        while let Ok(req) = consent_rx.try_recv() {
            consents.push(req);
        }
        // A question whose task has ended (or that timed out) is gone: a
        // late answer must not be taken, let alone saved as "always".
        consents.retain(|c| !c.is_withdrawn());
        match cmd {
            Cmd::Submit(req, reply) => {
                let _ = reply.send(submit(&shared, &mut queue, *req));
            }
            Cmd::Kill(id, reply) => {
                let _ = reply.send(kill(&shared, &mut queue, &id));
            }
            Cmd::Answer(id, answer, reply) => {
                let r = match consents.iter().position(|c| c.id == id) {
                    Some(i) => {
                        consents.swap_remove(i).answer(answer);
                        Ok(())
                    }
                    None => Err(Error::Invalid(gettext_f(
                        "there is no pending network question {id} (it may have timed out)",
                        &[("id", &id.to_string())],
                    ))),
                };
                let _ = reply.send(r);
            }
            Cmd::Pending(reply) => {
                let _ = reply.send(
                    consents
                        .iter()
                        .map(|c| PendingConsent {
                            id: c.id,
                            host: c.host.clone(),
                            port: c.port,
                        })
                        .collect(),
                );
            }
        }
        start_queued(&shared, &mut queue, &mut running, &done_tx);
    }
}

fn start_queued(
    shared: &Arc<Shared>,
    queue: &mut VecDeque<(TaskId, TaskRequest)>,
    running: &mut usize,
    done: &mpsc::UnboundedSender<TaskId>,
) {
    while *running < shared.config.concurrency.max(1) {
        let Some((id, req)) = queue.pop_front() else {
            break;
        };
        runner::start(shared.clone(), id, req, done.clone());
        *running += 1;
    }
}

fn submit(
    shared: &Arc<Shared>,
    queue: &mut VecDeque<(TaskId, TaskRequest)>,
    req: TaskRequest,
) -> Result<TaskId, Error> {
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(Error::Invalid(crate::i18n::gettext("no command to run")));
    }
    req.policy.check_textual()?;
    // The folder and its owner file exist from the start, so that another
    // supervisor starting meanwhile (`airlock run --local`) sees that this
    // queued task is alive and does not declare it interrupted. The folder
    // must be new: ids are only unique per second and random suffix, and
    // two processes starting tasks at once must never share a folder.
    crate::dirs::create_private_dir(&shared.config.tasks_dir)?;
    let (id, dir) = loop {
        let id = TaskId::generate();
        if shared.info(&id).is_some() {
            continue;
        }
        let dir = crate::task::TaskDir::new(&shared.config.tasks_dir, &id);
        let made = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(dir.path());
        match made {
            Ok(()) => break (id, dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(dir.path(), e)),
        }
    };
    recovery::write_owner(&dir, 0)?;
    let created_ms = crate::event::now_ms();
    shared.record(AuditMsg::Task(Box::new(TaskManifest {
        id: id.clone(),
        argv: req.argv.clone(),
        policy: req.policy.clone(),
        rw_layers: Vec::new(),
        created_ms,
        requested_by: req.requested_by.clone(),
    })));
    shared.insert(
        TaskInfo {
            id: id.clone(),
            argv: req.argv.clone(),
            requested_by: req.requested_by.clone(),
            state: TaskState::Queued,
            exit: None,
            changed_files: 0,
            denial_count: 0,
            created_ms,
        },
        Some(0),
    );
    shared.emit(
        &id,
        EventKind::StateChanged {
            from: None,
            to: TaskState::Queued,
        },
    );
    queue.push_back((id.clone(), req));
    Ok(id)
}

fn kill(
    shared: &Arc<Shared>,
    queue: &mut VecDeque<(TaskId, TaskRequest)>,
    id: &TaskId,
) -> Result<(), Error> {
    if let Some(i) = queue.iter().position(|(q, _)| q == id) {
        queue.remove(i);
        shared.transition(id, TaskState::Killed);
        return Ok(());
    }
    let ctl = {
        let tasks = shared.tasks.lock().map_err(|_| poisoned())?;
        let slot = tasks
            .get(id)
            .ok_or_else(|| Error::NoSuchTask(id.to_string()))?;
        if slot.info.state.is_finished_running() {
            return Err(Error::Invalid(gettext_f(
                "task {id} is not running (it is {state})",
                &[("id", id.as_str()), ("state", slot.info.state.as_str())],
            )));
        }
        slot.ctl.clone()
    };
    if let Some(ctl) = ctl {
        ctl.kill.store(true, Ordering::SeqCst);
        let pid = ctl.pid.load(Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: our own helper; its PID 1 and the whole sandbox follow.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    Ok(())
}

fn poisoned() -> Error {
    Error::Unsupported(
        "the supervisor's task table is unusable after a crash of one of its threads".into(),
    )
}

/// A cloneable handle to a running supervisor. Async methods work on any
/// executor; the `_blocking` ones must not be called from inside a tokio
/// runtime.
#[derive(Clone)]
pub struct SupervisorHandle {
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<Cmd>,
    consent: ConsentSender,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorHandle").finish_non_exhaustive()
    }
}

fn gone() -> Error {
    Error::Unsupported("the supervisor has stopped".into())
}

impl SupervisorHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    fn ask_blocking<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).map_err(|_| gone())?;
        rx.blocking_recv().map_err(|_| gone())
    }

    /// Queues a task; its first event (`state_changed` to `queued`) is on
    /// the bus before this returns.
    pub async fn submit(&self, req: TaskRequest) -> Result<TaskId, Error> {
        self.ask(|tx| Cmd::Submit(Box::new(req), tx)).await?
    }

    pub fn submit_blocking(&self, req: TaskRequest) -> Result<TaskId, Error> {
        self.ask_blocking(|tx| Cmd::Submit(Box::new(req), tx))?
    }

    /// Kills a running task (or removes a queued one): state `killed`.
    pub async fn kill(&self, id: &TaskId) -> Result<(), Error> {
        self.ask(|tx| Cmd::Kill(id.clone(), tx)).await?
    }

    pub fn kill_blocking(&self, id: &TaskId) -> Result<(), Error> {
        self.ask_blocking(|tx| Cmd::Kill(id.clone(), tx))?
    }

    /// Every task this supervisor knows (this run's and earlier ones'),
    /// oldest first.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        let mut v: Vec<TaskInfo> = self
            .shared
            .tasks
            .lock()
            .map(|t| t.values().map(|s| s.info.clone()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        v
    }

    pub fn task(&self, id: &TaskId) -> Option<TaskInfo> {
        self.shared.info(id)
    }

    /// The last [`RING_BYTES`] of a captured task's output (the whole
    /// output is in its `output.log`).
    pub fn output(&self, id: &TaskId) -> Option<Vec<u8>> {
        let t = self.shared.tasks.lock().ok()?;
        let ring = t.get(id)?.output.clone();
        drop(t);
        let r = ring.lock().ok()?;
        Some(r.contents())
    }

    /// Adds an event to a task's stream from a part that runs beside the
    /// supervisor (a network proxy, a monitor): it gets the task's next
    /// sequence number, goes to the audit store and to every subscriber.
    /// Returns that sequence number.
    pub fn report(&self, id: &TaskId, kind: EventKind) -> Result<u64, Error> {
        self.shared
            .emit(id, kind)
            .ok_or_else(|| Error::NoSuchTask(id.to_string()))
    }

    /// Subscribes to every event of every task from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.shared.bus.subscribe(),
        }
    }

    /// Every event from now on, never dropped: for a consumer that keeps
    /// up on average but must not lose events when it falls behind for a
    /// while (the D-Bus service). Memory grows while it lags; drop the
    /// receiver to unsubscribe.
    pub fn subscribe_lossless(&self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut taps) = self.shared.taps.lock() {
            taps.push(tx);
        }
        rx
    }

    /// What recovery at start found (interrupted tasks, orphaned folders,
    /// pruned tasks), one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        self.shared.recovered();
        self.shared
            .warnings
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default()
    }

    /// The sender a network proxy uses for ask-mode questions; they queue
    /// here until [`SupervisorHandle::answer_consent`].
    pub fn consent_sender(&self) -> ConsentSender {
        self.consent.clone()
    }

    /// Questions waiting for an answer.
    pub async fn pending_consents(&self) -> Result<Vec<PendingConsent>, Error> {
        self.ask(Cmd::Pending).await
    }

    /// Answers question `id` with `allow_once`, `allow_task`,
    /// `allow_always` or `deny`.
    pub async fn answer_consent(&self, id: u64, answer: &str) -> Result<(), Error> {
        let a = parse_answer(answer)?;
        let question = match a {
            ConsentAnswer::AllowAlways => self
                .pending_consents()
                .await?
                .into_iter()
                .find(|c| c.id == id),
            _ => None,
        };
        self.ask(|tx| Cmd::Answer(id, a, tx)).await??;
        if let Some(q) = question {
            self.remember_always(&q);
        }
        Ok(())
    }

    /// Saves an "always" answer to the agent profile the task came from;
    /// without one it lasted for the task, and the task's events say so.
    fn remember_always(&self, q: &PendingConsent) {
        let task = self
            .shared
            .consent_tasks
            .lock()
            .ok()
            .and_then(|m| m.get(&q.id).cloned());
        let Some(task) = task else { return };
        let dir = crate::task::TaskDir::new(&self.shared.config.tasks_dir, &task);
        let agent = dir.read_manifest().ok().and_then(|m| m.policy.agent);
        let entry = crate::netproxy::consent::allow_entry(&q.host, q.port);
        let message = match agent {
            Some(name) => match crate::policy::profile::remember_host(&name, &entry) {
                Ok(path) => gettext_f(
                    "{host} is now always allowed for agent {agent} ({path})",
                    &[("host", &entry), ("agent", &name), ("path", &path.display().to_string())],
                ),
                Err(e) => gettext_f(
                    "{host} could not be saved to agent {agent}'s profile: {error}; it is allowed for this task only",
                    &[("host", &entry), ("agent", &name), ("error", &e.to_string())],
                ),
            },
            None => gettext_f(
                "{host} is allowed for this task only: the task was not started from an agent profile",
                &[("host", &entry)],
            ),
        };
        self.shared.emit(&task, EventKind::Warning { message });
    }

    /// The change set of a finished task, per read-write grant.
    pub async fn changes(&self, id: &TaskId) -> Result<Vec<ChangeSummary>, Error> {
        let (s, id) = (self.shared.clone(), id.clone());
        self.blocking(move || review::changes(&s, &id)).await
    }

    /// Commits the given paths (real paths, or relative to their grant) of
    /// a finished task; empty commits everything.
    pub async fn commit(&self, id: &TaskId, paths: Vec<String>) -> Result<CommitSummary, Error> {
        let (s, id) = (self.shared.clone(), id.clone());
        self.blocking(move || review::commit(&s, &id, &paths)).await
    }

    /// Discards a finished task's changes.
    pub async fn reject(&self, id: &TaskId) -> Result<(), Error> {
        let (s, id) = (self.shared.clone(), id.clone());
        self.blocking(move || review::reject(&s, &id)).await
    }

    /// Puts back what the task's last commit replaced.
    pub async fn undo(&self, id: &TaskId) -> Result<u64, Error> {
        let (s, id) = (self.shared.clone(), id.clone());
        self.blocking(move || review::undo(&s, &id)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.runtime
            .spawn_blocking(f)
            .await
            .map_err(|e| Error::Unsupported(format!("a review worker failed: {e}")))?
    }

    /// Waits until a quick start's recovery has ended and every event
    /// emitted so far is in the audit store.
    pub fn flush_audit_blocking(&self) {
        self.shared.recovered();
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared.record(AuditMsg::Flush(tx));
        let _ = rx.recv();
    }

    /// The supervisor's runtime, for services that run beside it (D-Bus).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }
}

/// Parses a consent answer word.
pub fn parse_answer(s: &str) -> Result<ConsentAnswer, Error> {
    Ok(match s {
        "allow_once" => ConsentAnswer::AllowOnce,
        "allow_task" => ConsentAnswer::AllowTask,
        "allow_always" => ConsentAnswer::AllowAlways,
        "deny" => ConsentAnswer::Deny,
        other => {
            return Err(Error::Invalid(gettext_f(
                "{answer} is not an answer: use allow_once, allow_task, allow_always or deny",
                &[("answer", other)],
            )))
        }
    })
}

/// One subscriber's view of the event bus. A subscriber that falls more
/// than the bus's capacity behind gets a `warning` event saying how many
/// events it lost (they are all in the audit store), never silence.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
}

fn lag_warning(n: u64) -> Event {
    Event::new(
        TaskId::parse(SUPERVISOR_TASK).unwrap_or_else(|_| TaskId::generate()),
        0,
        EventKind::Warning {
            message: gettext_f(
                "{n} events were dropped for this subscriber because it fell behind; the audit log (airlock log) has them all",
                &[("n", &n.to_string())],
            ),
        },
    )
}

impl Subscription {
    /// The next event; `None` once the supervisor is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(e) => Some(Arc::try_unwrap(e).unwrap_or_else(|a| (*a).clone())),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(lag_warning(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Same, for plain threads (not inside a tokio runtime).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        match self.rx.blocking_recv() {
            Ok(e) => Some(Arc::try_unwrap(e).unwrap_or_else(|a| (*a).clone())),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(lag_warning(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// A task's summary loaded from the store (earlier runs).
pub(crate) fn info_from_record(r: &crate::audit::TaskRecord) -> TaskInfo {
    TaskInfo {
        id: r.id.clone(),
        argv: r.argv.clone(),
        requested_by: r.requested_by.clone(),
        state: r.state,
        exit: r.exit,
        changed_files: r.changed_files.unwrap_or(0),
        denial_count: r.denial_count,
        created_ms: r.created_ms,
    }
}
