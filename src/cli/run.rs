//! `airlock run`: one task in a fresh sandbox, from the terminal.

use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::event::{Enforced, Event, EventKind, ExitStatus};
use crate::i18n::{gettext, gettext_f};
use crate::policy::{parse_size, Grant, Limits, Policy, SeccompChoice};
use crate::sandbox;
use crate::task::{TaskDir, TaskId, TaskManifest, TaskState};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A folder the task may use: PATH (read-only), PATH:ro or PATH:rw.
    /// Writes to rw grants wait for review in the task's own layer.
    #[arg(long = "grant", short = 'g', value_name = "PATH[:ro|:rw]")]
    pub grants: Vec<String>,
    /// A path the task must never see, even inside a grant.
    #[arg(long = "deny", value_name = "PATH")]
    pub deny: Vec<PathBuf>,
    /// An extra environment variable for the task.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Memory limit (e.g. 2G).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Maximum number of processes and threads.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// CPU share in cores (e.g. 0.5).
    #[arg(long, value_name = "CORES")]
    pub cpu: Option<f64>,
    /// Open files per process.
    #[arg(long, value_name = "N")]
    pub nofile: Option<u64>,
    /// Size of the task's /tmp (and empty home).
    #[arg(long, value_name = "SIZE")]
    pub tmp_size: Option<String>,
    /// Stop the task after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Stop the task when it has written more than this into its grants.
    #[arg(long, value_name = "SIZE")]
    pub max_upper: Option<String>,
    /// Refuse to run unless this layer is fully enforced (`landlock`).
    #[arg(long = "require", value_name = "LAYER")]
    pub require: Vec<String>,
    /// Use a Docker/OCI seccomp profile instead of Airlock's default.
    #[arg(long, value_name = "FILE.json")]
    pub seccomp_profile: Option<PathBuf>,
    /// Write lifecycle events as JSON lines to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json_events: Option<String>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Builds the policy from the options; errors say which option is wrong.
pub fn policy_from_args(a: &RunArgs) -> Result<Policy, crate::Error> {
    let mut p = Policy::default();
    for g in &a.grants {
        p.grants.push(Grant::parse(g)?);
    }
    p.deny = a.deny.clone();
    for e in &a.env {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| crate::Error::Invalid(format!("--env {e:?}: write KEY=VALUE")))?;
        p.env.push((k.to_string(), v.to_string()));
    }
    let mut l = Limits::default();
    if let Some(m) = &a.memory {
        l.memory = parse_size(m)?;
    }
    if let Some(n) = a.pids {
        l.pids = n;
    }
    if let Some(c) = a.cpu {
        if !(c > 0.0 && c.is_finite()) {
            return Err(crate::Error::Invalid(format!(
                "--cpu {c}: give a positive number of cores"
            )));
        }
        l.cpu = c;
    }
    if let Some(n) = a.nofile {
        l.nofile = n;
    }
    if let Some(s) = &a.tmp_size {
        l.tmp_size = parse_size(s)?;
    }
    if let Some(t) = a.timeout {
        l.timeout_secs = t;
    }
    if let Some(s) = &a.max_upper {
        l.max_upper = parse_size(s)?;
    }
    p.limits = l;
    for r in &a.require {
        match r.as_str() {
            "landlock" => p.require_landlock = true,
            other => {
                return Err(crate::Error::Invalid(format!(
                    "--require {other}: the only layer that can be required is `landlock`"
                )))
            }
        }
    }
    if let Some(f) = &a.seccomp_profile {
        p.seccomp = SeccompChoice::OciFile(f.clone());
    }
    Ok(p)
}

/// Writes events as JSON lines, in order, to a file or stdout.
struct EventSink {
    out: Option<Box<dyn Write + Send>>,
    task: TaskId,
    seq: u64,
}

impl EventSink {
    fn emit(&mut self, kind: EventKind) {
        let ev = Event::new(self.task.clone(), self.seq, kind);
        self.seq += 1;
        if let Some(out) = &mut self.out {
            if let Ok(line) = serde_json::to_string(&ev) {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }
}

/// Bytes used by the task's upper layers (what it wrote into its grants).
pub fn upper_usage(task_dir: &TaskDir, layers: usize) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &std::path::Path, total: &mut u64) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            *total += m.blocks() * 512;
            if m.is_dir() {
                walk(&e.path(), total);
            }
        }
    }
    let mut total = 0;
    for i in 0..layers {
        walk(&task_dir.upper(i), &mut total);
    }
    total
}

/// Entries in the upper layers that are not folders: a quick count of the
/// files a review will show.
pub fn changed_files(task_dir: &TaskDir, layers: usize) -> u64 {
    fn walk(p: &std::path::Path, n: &mut u64) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path(), n),
                Ok(_) => *n += 1,
                Err(_) => {}
            }
        }
    }
    let mut n = 0;
    for i in 0..layers {
        walk(&task_dir.upper(i), &mut n);
    }
    n
}

fn print_layers(layers: &[Enforced]) {
    for l in layers {
        let note = l
            .note
            .as_deref()
            .map(|n| format!(" — {n}"))
            .unwrap_or_default();
        eprintln!("  {:<14} {:<28} [{}]{}", l.what, l.value, l.mechanism, note);
    }
}

pub fn main(args: RunArgs, verbose: bool) -> ExitCode {
    match run(args, verbose) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::from(sandbox::SETUP_FAILED as u8)
        }
    }
}

fn run(args: RunArgs, verbose: bool) -> anyhow::Result<i32> {
    let policy = policy_from_args(&args)?;
    let id = TaskId::generate();
    let tasks = crate::dirs::tasks_dir();
    let task_dir = TaskDir::new(&tasks, &id);
    crate::dirs::create_private_dir(task_dir.path())?;
    let mut sink = EventSink {
        out: match args.json_events.as_deref() {
            None => None,
            Some("-") => Some(Box::new(std::io::stdout())),
            Some(f) => Some(Box::new(
                std::fs::File::create(f).map_err(|e| crate::Error::io(f, e))?,
            )),
        },
        task: id.clone(),
        seq: 0,
    };
    sink.emit(EventKind::StateChanged {
        from: None,
        to: TaskState::Starting,
    });
    let (spec, layers) = match sandbox::plan::plan(&policy, &args.command, &task_dir) {
        Ok(v) => v,
        Err(e) => {
            sink.emit(EventKind::Failed {
                error: e.to_string(),
            });
            return Err(e.into());
        }
    };
    let manifest = TaskManifest {
        id: id.clone(),
        argv: args.command.clone(),
        policy: policy.clone(),
        rw_layers: layers.clone(),
        created_ms: crate::event::now_ms(),
        requested_by: "cli".into(),
    };
    task_dir.write_manifest(&manifest)?;

    let exe = std::env::current_exe().map_err(|e| crate::Error::io("/proc/self/exe", e))?;
    // Ctrl+C reaches the helper through the terminal's process group and is
    // forwarded to the agent; we stay to report how it ended.
    // SAFETY: ignoring SIGINT/SIGQUIT in our own process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let started = Instant::now();
    let mut running = sandbox::spawn(
        &spec,
        &exe,
        Stdio::inherit(),
        Stdio::inherit(),
        Stdio::inherit(),
    )?;
    let report = running.setup();
    if let Some((stage, message)) = &report.error {
        let status = running.wait().unwrap_or(sandbox::SETUP_FAILED);
        let error = format!("{stage}: {message}");
        // An exec failure (command not found) is the agent's exit, not a
        // sandbox failure.
        if stage == "run command" {
            eprintln!("airlock: {error}");
            finish(&mut sink, &task_dir, layers.len(), status, None);
            return Ok(status);
        }
        sink.emit(EventKind::Failed {
            error: error.clone(),
        });
        sink.emit(EventKind::StateChanged {
            from: Some(TaskState::Starting),
            to: TaskState::Failed,
        });
        anyhow::bail!(gettext_f(
            "the sandbox could not be set up ({error}); run `airlock doctor` to see what this machine supports",
            &[("error", &error)]
        ));
    }
    let mut all_layers = report.layers.clone();
    all_layers.extend(sandbox::unenforced_limits(&policy.limits));
    all_layers.push(Enforced {
        what: "tmp-size".into(),
        value: crate::policy::format_size(policy.limits.tmp_size),
        mechanism: "tmpfs".into(),
        note: None,
    });
    all_layers.push(Enforced {
        what: "max-upper".into(),
        value: crate::policy::format_size(policy.limits.max_upper),
        mechanism: "watchdog".into(),
        note: None,
    });
    if policy.limits.timeout_secs > 0 {
        all_layers.push(Enforced {
            what: "timeout".into(),
            value: format!("{} s", policy.limits.timeout_secs),
            mechanism: "watchdog".into(),
            note: None,
        });
    }
    sink.emit(EventKind::Started {
        argv: args.command.clone(),
        helper_pid: running.pid(),
    });
    sink.emit(EventKind::Enforcement {
        layers: all_layers.clone(),
    });
    sink.emit(EventKind::StateChanged {
        from: Some(TaskState::Starting),
        to: TaskState::Running,
    });
    if verbose {
        eprintln!("{}", gettext("Enforced in this sandbox:"));
        print_layers(&all_layers);
    }

    // The watchdog: wall-clock timeout and the size of what the task wrote.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let hit: Arc<Mutex<Option<(String, String)>>> = Arc::new(Mutex::new(None));
    let watchdog = {
        let hit = hit.clone();
        let (td, n, limits, pid) = (
            task_dir.clone(),
            layers.len(),
            policy.limits.clone(),
            running.pid(),
        );
        std::thread::spawn(move || {
            // Wakes every 100 ms to check, or at once when the task ends.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                done_rx.recv_timeout(Duration::from_millis(100))
            {
                let reason = if limits.timeout_secs > 0
                    && started.elapsed() >= Duration::from_secs(limits.timeout_secs)
                {
                    Some((
                        "timeout".to_string(),
                        format!("ran longer than {} s", limits.timeout_secs),
                    ))
                } else if n > 0 {
                    let used = upper_usage(&td, n);
                    (used > limits.max_upper).then(|| {
                        (
                            "max-upper".to_string(),
                            format!(
                                "wrote {} into its grants, more than the {} allowed",
                                crate::policy::format_size(used),
                                crate::policy::format_size(limits.max_upper)
                            ),
                        )
                    })
                } else {
                    None
                };
                if let Some(r) = reason {
                    if let Ok(mut h) = hit.lock() {
                        *h = Some(r);
                    }
                    // SAFETY: killing our own helper; PID 1 and the whole
                    // namespace follow it.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    break;
                }
            }
        })
    };
    let status = running.wait().unwrap_or(sandbox::SETUP_FAILED);
    drop(done_tx);
    let _ = watchdog.join();
    let limit = hit.lock().ok().and_then(|h| h.clone());
    if let Some((l, detail)) = &limit {
        sink.emit(EventKind::LimitHit {
            limit: l.clone(),
            detail: detail.clone(),
        });
        eprintln!(
            "airlock: {}",
            gettext_f("the task was stopped: it {detail}", &[("detail", detail)])
        );
    }
    finish(
        &mut sink,
        &task_dir,
        layers.len(),
        status,
        limit.as_ref().map(|_| TaskState::Killed),
    );
    Ok(status)
}

fn finish(
    sink: &mut EventSink,
    task_dir: &TaskDir,
    layers: usize,
    status: i32,
    state: Option<TaskState>,
) {
    let changed = changed_files(task_dir, layers);
    let exit = ExitStatus {
        code: status,
        signal: (status > 128).then_some(status - 128),
    };
    if let Ok(data) = serde_json::to_vec(&exit) {
        if let Err(e) = crate::dirs::write_atomic(&task_dir.path().join("exit.json"), &data) {
            eprintln!("airlock: {e}");
        }
    }
    sink.emit(EventKind::Exited {
        status: exit,
        changed_files: changed,
    });
    sink.emit(EventKind::StateChanged {
        from: Some(TaskState::Running),
        to: state.unwrap_or(TaskState::Exited),
    });
    let id = sink.task.to_string();
    eprintln!(
        "{}",
        gettext_f(
            "airlock: task {id} exited with status {status}; {n} files changed, waiting for review",
            &[
                ("id", &id),
                ("status", &status.to_string()),
                ("n", &changed.to_string())
            ]
        )
    );
}
