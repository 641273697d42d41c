//! One task from `Starting` to its end, on a dedicated thread: the helper's
//! parent-death signal is tied to the thread that spawns it, so that thread
//! lives exactly as long as the sandbox.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::output::{pump, Ring};
use super::{recovery, usage, OutputMode, Shared, TaskCtl, TaskRequest};
use crate::event::{Enforced, EventKind, ExitStatus};
use crate::i18n::{gettext, gettext_f};
use crate::netproxy::session::NetSession;
use crate::policy::Policy;
use crate::sandbox::{self, SandboxSpec};
use crate::task::{RwLayer, TaskDir, TaskId, TaskManifest, TaskState};
use crate::workspace::{snapshot::snapshot_path, Snapshot};
use crate::Error;

/// Starts the task's thread. `done` hears the task id when it has ended.
pub(crate) fn start(
    shared: Arc<Shared>,
    id: TaskId,
    req: TaskRequest,
    done: UnboundedSender<TaskId>,
) {
    let name = format!("airlock-task-{id}");
    let (s2, id2, done2) = (shared.clone(), id.clone(), done.clone());
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        run(&s2, &id2, req);
        let _ = done2.send(id2);
    });
    if let Err(e) = spawned {
        shared.transition(&id, TaskState::Starting);
        shared.emit(
            &id,
            EventKind::Failed {
                error: format!("cannot start a thread for the task: {e}"),
            },
        );
        shared.transition(&id, TaskState::Failed);
        let _ = done.send(id);
    }
}

fn run(shared: &Arc<Shared>, id: &TaskId, mut req: TaskRequest) {
    let ctl = Arc::new(TaskCtl::default());
    let ring = shared.attach(id, ctl.clone());
    shared.transition(id, TaskState::Starting);
    let task_dir = TaskDir::new(&shared.config.tasks_dir, id);
    // The helper starts first, and builds the namespaces and the part of
    // the root no task decides while the task is planned below.
    let base = match crate::dirs::create_private_dir(task_dir.path())
        .and_then(|()| sandbox::plan::base(&req.policy, &task_dir))
    {
        Ok(b) => b,
        Err(e) => return fail(shared, id, e.to_string()),
    };
    let (stdin, stdout, stderr, pumps) = match stdio(req.output.clone(), &task_dir, ring) {
        Ok(v) => v,
        Err(e) => return fail(shared, id, e.to_string()),
    };
    if ctl.kill.load(Ordering::SeqCst) {
        return shared.transition(id, TaskState::Killed);
    }
    // Whole-task limits: the helper goes into a cgroup of the task's own
    // before it makes anything.
    let mut placement = None;
    let launch = match req.helper.take() {
        // A helper started ahead has the caller's stdio: only right when
        // the output is inherited (then there is nothing to place).
        Some(p) if stdin.is_none() && stdout.is_none() && stderr.is_none() => {
            sandbox::Launch::Prestarted(p)
        }
        _ => sandbox::Launch::New {
            exe: &shared.config.helper_exe,
            stdin,
            stdout,
            stderr,
        },
    };
    let starting = sandbox::start(&base, launch, |pid| {
        placement = Some(sandbox::cgroup::place(pid, id.as_str(), &req.policy.limits));
        Ok(())
    });
    let (cgroup, cgroup_report) = match placement {
        Some(p) => (p.cgroup, p.report),
        None => (None, Vec::new()),
    };
    let release_cgroup = || {
        if let Some(cg) = &cgroup {
            cg.release();
        }
    };
    // Until the plan is sent, an error ends the helper (dropping `starting`
    // kills and reaps it) before its cgroup goes.
    let planned = starting.and_then(|starting| {
        let (mut spec, layers, home_lock) = prepare(shared, id, &req, &task_dir, &base)?;
        spec.memory_by_cgroup = cgroup_report
            .iter()
            .any(|c| c.what == "memory" && c.mechanism == "cgroup");
        // The task's network proxy (none for `--net none`), until the
        // sandbox ends.
        let emit = {
            let (shared, id) = (shared.clone(), id.clone());
            move |ev| {
                shared.emit(&id, ev);
            }
        };
        let consent = Some(shared.consent.clone());
        let net =
            NetSession::start_for(&mut spec, &req.policy.net, task_dir.path(), emit, consent)?;
        Ok((starting, spec, layers, net, home_lock))
    });
    // `_home_lock` is held until the task's last process has gone.
    let (starting, spec, layers, net, _home_lock) = match planned {
        Ok(v) => v,
        Err(e) => {
            release_cgroup();
            return fail(shared, id, e.to_string());
        }
    };
    if ctl.kill.load(Ordering::SeqCst) {
        drop(starting);
        release_cgroup();
        return shared.transition(id, TaskState::Killed);
    }
    let started = Instant::now();
    // No task runs without its audit record (a quick start opens the
    // database meanwhile).
    let spawned = shared.audit_opened().and_then(|()| starting.plan(&spec));
    let release = |running: &mut sandbox::Running| {
        running.reap();
        release_cgroup();
    };
    let mut running = match spawned {
        Ok(r) => r,
        Err(e) => {
            release_cgroup();
            return fail(shared, id, e.to_string());
        }
    };
    ctl.pid.store(running.pid(), Ordering::SeqCst);
    if let Err(e) = recovery::write_owner(&task_dir, running.pid()) {
        shared.emit(
            id,
            EventKind::Warning {
                message: e.to_string(),
            },
        );
    }
    // A kill that came while the helper was being started.
    if ctl.kill.load(Ordering::SeqCst) {
        running.kill();
    }
    let mut written = usage::layer_roots(&task_dir, &layers);
    written.extend(spec.persistent_home.iter().map(|h| usage::Root {
        dir: h.clone(),
        shown: h.clone(),
    }));
    let watchdog = Watchdog::start(ctl.clone(), written, &req.policy, started);
    // The monitor's denials join the task's event stream as they happen.
    let monitor_events = running.take_events().map(|rx| {
        let (shared, id) = (shared.clone(), id.clone());
        std::thread::spawn(move || {
            for ev in rx {
                shared.emit(&id, ev);
            }
        })
    });
    let report = running.setup();
    if let Some((stage, message)) = &report.error {
        let status = running.wait().unwrap_or(sandbox::SETUP_FAILED);
        release(&mut running);
        ctl.pid.store(0, Ordering::SeqCst);
        watchdog.stop(u64::MAX);
        pumps.finish();
        let error = format!("{stage}: {message}");
        // An exec failure (command not found) is the agent's exit, not a
        // sandbox failure.
        if stage == "run command" {
            shared.emit(id, EventKind::Warning { message: error });
            shared.transition(id, TaskState::Running);
            return finish(shared, id, &task_dir, &layers, status, None);
        }
        if ctl.kill.load(Ordering::SeqCst) {
            write_exit(shared, id, &task_dir, status);
            return shared.transition(id, TaskState::Killed);
        }
        return fail(
            shared,
            id,
            gettext_f(
                "the sandbox could not be set up ({error}); run `airlock doctor` to see what this machine supports",
                &[("error", &error)],
            ),
        );
    }
    shared.emit(
        id,
        EventKind::Started {
            argv: req.argv.clone(),
            helper_pid: running.pid(),
        },
    );
    shared.emit(
        id,
        EventKind::Enforcement {
            layers: enforced(&report.layers, &cgroup_report, &req.policy),
        },
    );
    shared.transition(id, TaskState::Running);
    let status = running.wait().unwrap_or(sandbox::SETUP_FAILED);
    ctl.pid.store(0, Ordering::SeqCst);
    // Its last flows are reported before the task's end.
    drop(net);
    if let Some(t) = monitor_events {
        let _ = t.join();
    }
    let (hit, over_at_end) = watchdog.stop(req.policy.limits.max_upper);
    pumps.finish();
    // What the cgroup's limits did to the task (refused forks, OOM kills).
    for (limit, detail) in cgroup
        .as_ref()
        .map(|c| c.limits_hit(&req.policy.limits))
        .unwrap_or_default()
    {
        shared.emit(id, EventKind::LimitHit { limit, detail });
    }
    for (limit, detail) in hit.iter().chain(&over_at_end) {
        shared.emit(
            id,
            EventKind::LimitHit {
                limit: limit.clone(),
                detail: detail.clone(),
            },
        );
    }
    // `airlock kill` from another process leaves a marker (see kill_local).
    let killed = hit.is_some()
        || ctl.kill.load(Ordering::SeqCst)
        || task_dir.path().join(recovery::KILL_MARKER).exists();
    let end = killed.then_some(TaskState::Killed);
    // A cgroup folder of ours can only go once the helper has: before the
    // end is announced, or a short-lived `airlock run` would leave it.
    // Otherwise the namespaces' teardown need not hold the end back.
    let before_end = cgroup.as_ref().is_some_and(|c| c.made_here());
    if before_end {
        release(&mut running);
    }
    finish(shared, id, &task_dir, &layers, status, end);
    if !before_end {
        release(&mut running);
    }
}

/// Plans the sandbox on `base`, creates its layers, the snapshots of the
/// read-write grants (the base for conflict detection) and the manifest.
fn prepare(
    shared: &Shared,
    id: &TaskId,
    req: &TaskRequest,
    task_dir: &TaskDir,
    base: &sandbox::SandboxBase,
) -> Result<(SandboxSpec, Vec<RwLayer>, Option<HomeLock>), Error> {
    let (mut spec, layers) = sandbox::plan::plan(&req.policy, &req.argv, task_dir, base)?;
    let mut home_lock = None;
    if let Some(agent) = &req.policy.persistent_home {
        let (home, lock) = agent_home(agent, id, &spec, req.policy.limits.max_upper)?;
        spec.persistent_home = Some(home);
        home_lock = Some(lock);
    }
    for l in &layers {
        let snap = Snapshot::capture(&l.path)?;
        if let Some(message) = unmapped_owners(&snap, &l.path, &spec) {
            shared.emit(id, EventKind::Warning { message });
        }
        snap.save(&snapshot_path(task_dir, l.index))?;
    }
    let manifest = TaskManifest {
        id: id.clone(),
        argv: req.argv.clone(),
        policy: req.policy.clone(),
        rw_layers: layers.clone(),
        created_ms: shared
            .info(id)
            .map(|i| i.created_ms)
            .unwrap_or_else(crate::event::now_ms),
        requested_by: req.requested_by.clone(),
    };
    task_dir.write_manifest(&manifest)?;
    shared.record(super::store::AuditMsg::Task(Box::new(manifest)));
    Ok((spec, layers, home_lock))
}

/// A persistent agent home held by one task: tasks of one agent take
/// turns. A home is a folder the agent writes and the sandbox is built
/// through (grants nested in `$HOME` are mounted in it): a task running
/// beside the start of another could otherwise move its folders while
/// mounts and hidden paths are placed. Released when dropped (or when the
/// supervisor dies: it is an `flock`).
#[derive(Debug)]
pub(crate) struct HomeLock {
    _held: std::fs::File,
}

/// Takes `agent`'s home (`lock` beside it, out of the agent's reach) for
/// task `id`, or says which task has it.
fn lock_home(agent: &str, dir: &std::path::Path, id: &TaskId) -> Result<HomeLock, Error> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io(&path, e));
        }
        let mut holder = String::new();
        let _ = f.take(64).read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(Error::Refused(gettext_f(
            "the persistent home of agent {name} is in use by task {task}; tasks of an agent with a persistent home run one at a time: wait for it to end, or stop it with `airlock kill {task}`",
            &[
                ("name", agent),
                ("task", if holder.is_empty() { "?" } else { holder }),
            ],
        )));
    }
    // Who has it, for the next task's message.
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = f.write_all(id.as_str().as_bytes());
    Ok(HomeLock { _held: f })
}

/// A user namespace made without privileges maps only our own user and
/// group, so the overlay cannot copy up an entry owned by anyone else: the
/// agent's change fails with EOVERFLOW ("Value too large"). Said up front,
/// naming the first such entry, instead of leaving the agent to fail.
fn unmapped_owners(snap: &Snapshot, grant: &std::path::Path, spec: &SandboxSpec) -> Option<String> {
    let (uids, gids) = if spec.outer_root {
        ([0, spec.user.uid], [0, spec.user.gid])
    } else {
        ([spec.user.uid; 2], [spec.user.gid; 2])
    };
    let mut foreign = snap
        .entries
        .iter()
        .filter(|(_, m)| !uids.contains(&m.uid) || !gids.contains(&m.gid));
    let (first, _) = foreign.next()?;
    let n = 1 + foreign.count();
    Some(gettext_f(
        "{n} entries in {grant} belong to another user or group (the first: {path}); the agent can read them but not change them, since a sandbox without privileges can only map your own user and group",
        &[
            ("n", &n.to_string()),
            ("grant", &crate::workspace::names::escape_path(grant)),
            ("path", &crate::workspace::names::escape(first)),
        ],
    ))
}

/// `$XDG_STATE_HOME/airlock/agents/NAME/home`, created on first use and
/// owned by the uid the agent runs as. What it holds counts against
/// `--max-upper`, so a home already over the limit is refused up front
/// (earlier tasks would otherwise grow it without bound).
fn agent_home(
    agent: &str,
    id: &TaskId,
    spec: &SandboxSpec,
    max_upper: u64,
) -> Result<(std::path::PathBuf, HomeLock), Error> {
    if agent.is_empty()
        || !agent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || agent.starts_with('.')
    {
        return Err(Error::Invalid(gettext_f(
            "{name} is not a valid agent name for a persistent home (use letters, digits, - and _)",
            &[("name", agent)],
        )));
    }
    let dir = crate::dirs::state_dir().join("agents").join(agent);
    let home = dir.join("home");
    crate::dirs::create_private_dir(&home)?;
    let lock = lock_home(agent, &dir, id)?;
    if spec.outer_root {
        std::os::unix::fs::chown(&home, Some(spec.user.uid), Some(spec.user.gid))
            .map_err(|e| Error::io(&home, e))?;
    }
    let root = [usage::Root {
        dir: home.clone(),
        shown: home.clone(),
    }];
    // No task runs in it now (the lock above).
    usage::make_readable(&root);
    let held = usage::measure(&root);
    let problem = if held.unreadable {
        Some(gettext("has a folder that cannot be read"))
    } else if held.too_deep {
        Some(gettext_f(
            "has folders deeper than {n} levels",
            &[("n", &usage::MAX_DEPTH.to_string())],
        ))
    } else {
        (held.bytes > max_upper).then(|| {
            gettext_f(
                "holds {size}, more than the {limit} a task may keep on disk (--max-upper)",
                &[
                    ("size", &crate::policy::format_size(held.bytes)),
                    ("limit", &crate::policy::format_size(max_upper)),
                ],
            )
        })
    };
    match problem {
        None => Ok((home, lock)),
        Some(problem) => Err(Error::Refused(gettext_f(
            "the persistent home of agent {name} ({path}) {problem}; remove what the agent no longer needs there, or raise --max-upper",
            &[
                ("name", agent),
                ("path", &crate::workspace::names::escape_path(&home)),
                ("problem", &problem),
            ],
        ))),
    }
}

/// The helper's layers plus what the supervisor itself enforces. A limit
/// the task's cgroup enforces is reported as such (the agent's rlimit stays
/// beneath it).
fn enforced(helper: &[Enforced], cgroup: &[Enforced], policy: &Policy) -> Vec<Enforced> {
    let by_cgroup = |what: &str| {
        cgroup
            .iter()
            .find(|c| c.what == what && c.mechanism == "cgroup")
    };
    let mut all: Vec<Enforced> = helper
        .iter()
        .chain(sandbox::unenforced_limits(&policy.limits).iter())
        .map(|e| match by_cgroup(&e.what) {
            Some(c) => {
                let mut c = c.clone();
                if e.mechanism == "rlimit" {
                    c.note = Some(gettext_f(
                        "{via}; and an rlimit per process",
                        &[("via", c.note.as_deref().unwrap_or_default())],
                    ));
                }
                c
            }
            None => e.clone(),
        })
        .collect();
    // A limit only the cgroup enforces (memory, when the helper sets no
    // rlimit for it).
    let only_cgroup: Vec<Enforced> = cgroup
        .iter()
        .filter(|c| c.mechanism == "cgroup" && !all.iter().any(|a| a.what == c.what))
        .cloned()
        .collect();
    all.extend(only_cgroup);
    all.extend(cgroup.iter().filter(|c| c.mechanism != "cgroup").cloned());
    all.push(Enforced {
        what: "tmp-size".into(),
        value: crate::policy::format_size(policy.limits.tmp_size),
        mechanism: "tmpfs".into(),
        note: None,
    });
    all.push(Enforced {
        what: "max-upper".into(),
        value: crate::policy::format_size(policy.limits.max_upper),
        mechanism: "watchdog".into(),
        note: None,
    });
    all.push(Enforced {
        what: "epoll-watches".into(),
        value: usage::epoll_budget().to_string(),
        mechanism: "watchdog".into(),
        note: None,
    });
    all.push(Enforced {
        what: "mapped-files".into(),
        value: usage::mapped_files_budget().to_string(),
        mechanism: "watchdog".into(),
        note: None,
    });
    if policy.limits.timeout_secs > 0 {
        all.push(Enforced {
            what: "timeout".into(),
            value: format!("{} s", policy.limits.timeout_secs),
            mechanism: "watchdog".into(),
            note: None,
        });
    }
    all.push(if policy.unix_sockets {
        Enforced {
            what: "unix-sockets".into(),
            value: "allowed".into(),
            mechanism: "not-enforced".into(),
            note: Some(gettext(
                "the task may connect to socket files in its grants (an ssh agent's, a terminal multiplexer's): they act outside the sandbox",
            )),
        }
    } else {
        Enforced {
            what: "unix-sockets".into(),
            value: "refused".into(),
            mechanism: "seccomp".into(),
            note: None,
        }
    });
    all
}

fn fail(shared: &Shared, id: &TaskId, error: String) {
    shared.emit(id, EventKind::Failed { error });
    shared.transition(id, TaskState::Failed);
}

/// The reader threads of a captured task.
struct Pumps(Vec<std::thread::JoinHandle<()>>);

impl Pumps {
    /// Waits for the output to be read to its end. The sandbox is gone, so
    /// every writer has closed its end; the bound is only a safety net.
    fn finish(self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for h in self.0 {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// The task's stdin, stdout and stderr (`None`: the supervisor's own).
type Stdios = (Option<OwnedFd>, Option<OwnedFd>, Option<OwnedFd>, Pumps);

fn stdio(mode: OutputMode, task_dir: &TaskDir, ring: Arc<Mutex<Ring>>) -> Result<Stdios, Error> {
    match mode {
        OutputMode::Inherit => return Ok((None, None, None, Pumps(Vec::new()))),
        OutputMode::InheritStdoutToStderr => {
            // SAFETY: borrowing our own stderr for the duration of the dup.
            let err = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) }
                .try_clone_to_owned()
                .map_err(|e| Error::io("stderr", e))?;
            return Ok((None, Some(err), None, Pumps(Vec::new())));
        }
        OutputMode::Held {
            hold,
            stdout_to_stderr,
        } => {
            // Our stdin stays the task's (the helper relays it); stdout and
            // stderr come back through pipes, one when they are one file,
            // so that a question on the terminal can hold them back.
            let mut pumps = Vec::new();
            let mut pipe_to = |to: std::os::fd::RawFd| -> Result<OwnedFd, Error> {
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| Error::io("pipe", std::io::Error::from(e)))?;
                let hold = hold.clone();
                let reader = std::fs::File::from(r);
                pumps.push(
                    std::thread::Builder::new()
                        .name("airlock-output".into())
                        .spawn(move || super::output::relay(reader, to, hold))
                        .map_err(|e| Error::io("pipe", e))?,
                );
                Ok(w)
            };
            let out = pipe_to(if stdout_to_stderr { 2 } else { 1 })?;
            let err = if stdout_to_stderr || sandbox::same_file(1, 2) {
                out.try_clone().map_err(|e| Error::io("pipe", e))?
            } else {
                pipe_to(2)?
            };
            return Ok((None, Some(out), Some(err), Pumps(pumps)));
        }
        OutputMode::Capture => {}
    }
    let path = task_dir.output_log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let log = Arc::new(Mutex::new(Some(log)));
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("pipe", std::io::Error::from(e)))?;
    let w2: OwnedFd = w.try_clone().map_err(|e| Error::io("pipe", e))?;
    let reader = std::fs::File::from(r);
    let h = std::thread::Builder::new()
        .name("airlock-output".into())
        .spawn(move || pump(reader, ring, log))
        .map_err(|e| Error::io("pipe", e))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| Error::io("/dev/null", e))?;
    Ok((Some(OwnedFd::from(null)), Some(w), Some(w2), Pumps(vec![h])))
}

/// Wall-clock timeout, the size of what the task wrote into its grants,
/// and kill requests.
struct Watchdog {
    stop: std::sync::mpsc::Sender<()>,
    /// What it stopped the task for, and what it watched.
    thread: std::thread::JoinHandle<(Option<LimitReason>, Vec<usage::Root>)>,
}

/// A limit's name and why the task went past it.
type LimitReason = (String, String);

impl Watchdog {
    fn start(
        ctl: Arc<TaskCtl>,
        written: Vec<usage::Root>,
        policy: &Policy,
        started: Instant,
    ) -> Watchdog {
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let limits = policy.limits.clone();
        let thread = std::thread::spawn(move || {
            // The process scan runs on a thread of its own: the task
            // decides how long it takes, and neither the timeout nor the
            // size of what it writes may wait for it.
            let scan = Scanner::start(ctl.clone(), &written, &limits);
            // Wakes every 100 ms to check, or at once when the task ends. A
            // big persistent home takes a while to walk: the wait grows so
            // that walking takes at most a tenth of a core, but never past
            // a second (a tree made to be slow to walk must not buy the
            // agent minutes).
            let mut wait = Duration::from_millis(100);
            let disk = usage::DiskWatch::new(&written);
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(wait) {
                if let Some(r) = scan.reason() {
                    return (Some(r), written);
                }
                let reason = if limits.timeout_secs > 0
                    && started.elapsed() >= Duration::from_secs(limits.timeout_secs)
                {
                    Some((
                        "timeout".to_string(),
                        format!("ran longer than {} s", limits.timeout_secs),
                    ))
                } else {
                    let walk = Instant::now();
                    let over = (!written.is_empty())
                        .then(|| usage::measure(&written))
                        .and_then(|used| {
                            // The scan stops at first sight of deleted files
                            // past what this leaves.
                            scan.walked.store(used.bytes, Ordering::SeqCst);
                            over_max_upper(used, scan.held(), limits.max_upper, Some(&disk))
                        });
                    wait = (walk.elapsed() * 9)
                        .clamp(Duration::from_millis(100), Duration::from_secs(1));
                    over
                };
                if let Some(r) = reason {
                    kill_task(&ctl);
                    return (Some(r), written);
                }
            }
            // The scan may have stopped the task just before it ended.
            (scan.reason(), written)
        });
        Watchdog { stop, thread }
    }

    /// The limit the watchdog stopped the task for, and, when it did not,
    /// one the task went past just before it ended (between two checks):
    /// that is said too, though there was nothing left to stop.
    fn stop(self, max_upper: u64) -> (Option<LimitReason>, Option<LimitReason>) {
        drop(self.stop);
        match self.thread.join() {
            Ok((Some(hit), _)) => (Some(hit), None),
            Ok((None, written)) => (
                None,
                (!written.is_empty())
                    .then(|| usage::measure(&written))
                    .and_then(|used| over_max_upper(used, usage::Held::default(), max_upper, None)),
            ),
            Err(_) => (None, None),
        }
    }
}

/// Kills the task: its helper, which PID 1 and the whole namespace follow.
fn kill_task(ctl: &TaskCtl) {
    let pid = ctl.pid.load(Ordering::SeqCst);
    if pid != 0 {
        // SAFETY: killing our own helper.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// CPU time one scan of the task's processes may take. A task that holds
/// more than this can read (a few hundred thousand descriptors, or tens of
/// thousands of mappings over many processes) could otherwise slow every
/// check for as long as it liked; real work holds a small part of it.
const SCAN_BUDGET: Duration = Duration::from_secs(1);

/// The scan of the task's processes, on its own thread: what they hold
/// (for the `--max-upper` check), and the stop for what only it sees.
struct Scanner {
    /// Dropped with the scanner: the thread ends at its next wake.
    _stop: std::sync::mpsc::Sender<()>,
    state: Arc<Mutex<(usage::Held, Option<LimitReason>)>>,
    /// What the last walk of the task's layers found, in bytes.
    walked: Arc<std::sync::atomic::AtomicU64>,
}

impl Scanner {
    fn start(
        ctl: Arc<TaskCtl>,
        written: &[usage::Root],
        limits: &crate::policy::Limits,
    ) -> Scanner {
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let state = Arc::new(Mutex::new((usage::Held::default(), None)));
        let out = state.clone();
        let written = written.to_vec();
        let (memory, max_upper) = (limits.memory, limits.max_upper);
        let walked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let walk = walked.clone();
        let task = ctl.clone();
        let spawned = std::thread::Builder::new()
            .name("airlock-scan".into())
            .spawn(move || {
                let mut procs = None;
                let machine = usage::MemoryWatch::new();
                // The scan takes at most a quarter of a core, and what it
                // has not seen yet is at most about three seconds old.
                let mut wait = Duration::from_millis(100);
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(wait) {
                    let helper = task.pid.load(Ordering::SeqCst);
                    let procs =
                        procs.get_or_insert_with(|| usage::TaskProcs::new(helper, &written));
                    let took = Instant::now();
                    let held = procs.scan(usage::ScanLimits {
                        budget: SCAN_BUDGET,
                        memory,
                        bytes: max_upper.saturating_sub(walk.load(Ordering::SeqCst)),
                    });
                    wait = (took.elapsed() * 3)
                        .clamp(Duration::from_millis(100), Duration::from_secs(2));
                    let over = over_uninspectable(&held)
                        .or_else(|| over_epoll_budget(&held, procs.epoll_budget))
                        .or_else(|| over_mapped_files(&held, procs.mapped_budget))
                        .or_else(|| over_shared_memory(&held, memory))
                        .or_else(|| over_machine_memory(&machine, &held, memory));
                    let stop = over.is_some();
                    if let Ok(mut s) = out.lock() {
                        *s = (held, over);
                    }
                    if stop {
                        kill_task(&task);
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            // Without its thread nothing the scan alone sees is checked:
            // a task must not run so.
            tracing::error!("cannot start the process scan: {e}");
            if let Ok(mut s) = state.lock() {
                s.1 = Some((
                    "inspection".to_string(),
                    "could not be checked: the supervisor could not start a thread to inspect its processes".to_string(),
                ));
            }
            kill_task(&ctl);
        }
        Scanner {
            _stop: stop,
            state,
            walked,
        }
    }

    /// What the last scan found the task holds.
    fn held(&self) -> usage::Held {
        self.state.lock().map(|s| s.0).unwrap_or_default()
    }

    /// The limit the scan stopped the task for.
    fn reason(&self) -> Option<LimitReason> {
        self.state.lock().ok().and_then(|s| s.1.clone())
    }
}

/// Whether what the task keeps on disk (`used`, measured in its layers,
/// and `held` in deleted files) is past `--max-upper`, or cannot be
/// measured; the limit and why.
fn over_max_upper(
    mut used: usage::UpperUsage,
    held: usage::Held,
    max_upper: u64,
    disk: Option<&usage::DiskWatch>,
) -> Option<LimitReason> {
    // Deleted files the task still holds open count as written: they
    // take the disk until it closes them.
    used.bytes += held.bytes;
    let why = if used.unreadable {
        "made a folder in its grants or its home unreadable, so what it wrote there cannot be checked".to_string()
    } else if used.too_deep {
        format!(
            "built a folder tree deeper than {} levels in its grants or its home, whose size cannot be checked",
            usage::MAX_DEPTH
        )
    } else if used.bytes > max_upper {
        format!(
            "wrote {} into its grants and its home, more than the {} allowed",
            crate::policy::format_size(used.bytes),
            crate::policy::format_size(max_upper)
        )
    } else if let Some((at, lost)) =
        disk.and_then(|d| d.unexplained(used.bytes, max_upper.saturating_add(UNEXPLAINED_SLACK)))
    {
        format!(
            "ran while the disk holding {1} lost {0} of free space beyond what the task shows, more than its {2}, and the disk is down to its last tenth: it was stopped before the disk fills (files a task keeps out of sight, such as deleted files passed between its processes, do that; so would other programs writing to that disk)",
            crate::policy::format_size(lost),
            crate::workspace::names::escape_path(&at),
            crate::policy::format_size(max_upper)
        )
    } else {
        return None;
    };
    Some(("max-upper".to_string(), why))
}

/// Whether a process of the task hides from the scan (as an unprivileged
/// user only): what it holds (deleted files, epoll watches, shared memory)
/// could not be counted, whatever the task's grants.
fn over_uninspectable(held: &usage::Held) -> Option<LimitReason> {
    let why = if held.uninspectable {
        "runs a program that cannot be inspected (made undumpable, or run from a file it may not read), so the deleted files, epoll watches and shared memory it may hold cannot be checked".to_string()
    } else if held.too_costly {
        format!(
            "keeps so many processes, threads, open files or memory mappings that checking what they hold took more than {} s of processor time, so the deleted files, epoll watches and shared memory it may hold cannot be checked",
            SCAN_BUDGET.as_secs()
        )
    } else {
        return None;
    };
    Some(("inspection".to_string(), why))
}

/// What the disk may lose beyond the task's visible writes and its
/// `--max-upper` before the backstop stops it (metadata, the overlay's own
/// work files, the user's other programs).
const UNEXPLAINED_SLACK: u64 = 64 << 20;

/// Whether the task registered more epoll watches than its share of the
/// user's kernel quota (shared with the whole desktop; no rlimit or cgroup
/// bounds it).
fn over_epoll_budget(held: &usage::Held, budget: u64) -> Option<LimitReason> {
    (held.epoll_watches > budget).then(|| {
        (
            "epoll-watches".to_string(),
            format!(
                "registered more than {budget} epoll watches, an eighth of what the kernel allows your user in all (fs.epoll.max_user_watches): more would leave your other programs unable to watch their files and connections"
            ),
        )
    })
}

/// Whether the task keeps more files open through mappings than its share
/// of the machine's file table, which every user's programs share.
fn over_mapped_files(held: &usage::Held, budget: u64) -> Option<LimitReason> {
    (held.mapped_files > budget).then(|| {
        (
            "mapped-files".to_string(),
            format!(
                "keeps more than {budget} files open through memory mappings, an eighth of the machine's file table (fs.file-max): more would leave every program on the machine unable to open files"
            ),
        )
    })
}

/// Whether the task keeps more in memfds and shared mappings than its
/// memory limit: rlimits count only each process's own memory, and without
/// a memory cgroup nothing else would.
fn over_shared_memory(held: &usage::Held, memory: u64) -> Option<LimitReason> {
    (held.shared_memory > memory).then(|| {
        (
            "memory".to_string(),
            format!(
                "keeps {} in shared memory (memfd, shared mappings), more than the {} memory limit",
                crate::policy::format_size(held.shared_memory),
                crate::policy::format_size(memory)
            ),
        )
    })
}

/// What the machine's shared memory may gain beyond what the task shows
/// and its memory limit before the backstop stops it (the user's other
/// programs, the desktop's buffers).
const UNEXPLAINED_MEMORY_SLACK: u64 = 256 << 20;

/// Whether the machine's shared memory grew past what the task shows and
/// its memory limit while the machine ran low: memory a task keeps where
/// no scan sees it would otherwise be counted nowhere without a cgroup.
fn over_machine_memory(
    watch: &usage::MemoryWatch,
    held: &usage::Held,
    memory: u64,
) -> Option<LimitReason> {
    let lost = watch.unexplained(
        held.shared_memory,
        memory.saturating_add(UNEXPLAINED_MEMORY_SLACK),
    )?;
    Some((
        "memory".to_string(),
        format!(
            "ran while the machine's shared memory grew by {} beyond what the task shows, more than its {} memory limit, and the machine is down to its last tenth of memory: it was stopped before memory runs out (memory a task keeps out of sight, such as memfds handed between processes that come and go, does that; so would other programs)",
            crate::policy::format_size(lost),
            crate::policy::format_size(memory)
        ),
    ))
}

fn write_exit(shared: &Shared, id: &TaskId, task_dir: &TaskDir, status: i32) -> ExitStatus {
    let exit = ExitStatus {
        code: status,
        signal: (status > 128).then_some(status - 128),
    };
    // The workspace reads exit.json to know no process of the task is alive.
    // Everything else in the task folder (manifest, snapshots, the agent's
    // upper layers) is made durable first, so that a durable exit.json
    // implies a complete task.
    let synced = task_dir.sync();
    let written = serde_json::to_vec(&exit)
        .map_err(|e| Error::Invalid(e.to_string()))
        .and_then(|data| crate::dirs::write_atomic(&task_dir.path().join("exit.json"), &data));
    for e in [synced.err(), written.err()].into_iter().flatten() {
        shared.emit(
            id,
            EventKind::Warning {
                message: e.to_string(),
            },
        );
    }
    exit
}

fn finish(
    shared: &Shared,
    id: &TaskId,
    task_dir: &TaskDir,
    layers: &[RwLayer],
    status: i32,
    state: Option<TaskState>,
) {
    let (opened, first) = usage::make_readable(&usage::layer_roots(task_dir, layers));
    if let Some(first) = first {
        shared.emit(
            id,
            EventKind::Warning {
                message: gettext_f(
                    "the task left {n} entries its owner could not read (the first: {path}); they were made readable so that its changes can be reviewed",
                    &[("n", &opened.to_string()), ("path", &crate::workspace::names::escape_path(&first))],
                ),
            },
        );
    }
    let exit = write_exit(shared, id, task_dir, status);
    let changed = changed_files(task_dir, layers);
    shared.emit(
        id,
        EventKind::Exited {
            status: exit,
            changed_files: changed,
        },
    );
    shared.transition(id, state.unwrap_or(TaskState::Exited));
    if changed > 0 {
        shared.transition(id, TaskState::Reviewing);
    }
    tracing::debug!(task = %id, status, changed, "task ended");
}

/// How many changes a review of the task shows: what the agent wrote, and
/// also what it deleted and folders it replaced (`rm -rf src; mkdir src`
/// leaves only a folder in the upper layer, yet deletes what `src` held).
/// Walks the upper layers and the entries they shadow, as `airlock
/// changes` does; should that fail, the entries of the upper layers.
pub fn changed_files(task_dir: &TaskDir, layers: &[RwLayer]) -> u64 {
    let counted: Result<Vec<u64>, Error> = layers
        .iter()
        .map(|l| {
            let upper = task_dir.upper(l.index);
            if !upper.exists() {
                return Ok(0);
            }
            crate::workspace::ChangeSet::compute(&l.path, &upper, None)
                .map(|cs| cs.changes.len() as u64)
        })
        .collect();
    match counted {
        Ok(n) => n.iter().sum(),
        Err(_) => usage::measure(&usage::layer_roots(task_dir, layers)).files,
    }
}
