//! `airlock run`: one task in a fresh sandbox, from the terminal. When the
//! Airlock app (or `airlock serve`) owns its name on the session bus, the
//! task is submitted there over D-Bus and its events are followed; otherwise
//! (or with `--local`) an in-process supervisor runs it with the terminal's
//! stdio passed through. The same audit database either way.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::event::{Enforced, Event, EventKind};
use crate::i18n::{gettext, gettext_f};
use crate::policy::{parse_size, Grant, Policy, SeccompChoice};
use crate::sandbox;
use crate::supervisor::{
    Config, OutputMode, Supervisor, SupervisorHandle, TaskRequest, TerminalHold,
};
use crate::task::{TaskId, TaskState};

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
    /// Write lifecycle events as JSON lines to FILE (`-` for stdout; the
    /// task's own stdout then goes to stderr).
    #[arg(long, value_name = "FILE")]
    pub json_events: Option<String>,
    /// When the task has ended, review its changes here on the terminal
    /// (approve, skip or look at each file) before anything is committed.
    #[arg(long)]
    pub review: bool,
    /// Give the task a pseudo-terminal of its own (for interactive agents);
    /// your terminal is relayed to it, never handed over.
    #[arg(long)]
    pub tty: bool,
    /// Let the task create unix sockets (for agents that run a local server
    /// of their own). Off by default: a socket file in a granted folder,
    /// such as an ssh agent's or a terminal multiplexer's, would let the
    /// task act outside the sandbox.
    #[arg(long)]
    pub allow_unix_sockets: bool,
    /// What the monitor reports: `denials` (blocked calls and paths outside
    /// the grants), `all` (every file access, for forensic runs), or `off`
    /// (denials stay silent; only for measuring the monitor's cost).
    #[arg(long, value_name = "LEVEL")]
    pub watch: Option<String>,
    /// Use the agent profile NAME ($XDG_CONFIG_HOME/airlock/agents/NAME.toml):
    /// its command, grants, network, limits; options given here add to it,
    /// and a COMMAND given here is appended to the profile's command.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Network: `none` (the default: no proxy, loopback only), `allow`
    /// (only the --allow-host hosts, through Airlock's proxy) or `ask`
    /// (other hosts are held while you are asked).
    #[arg(long = "net", value_name = "none|allow|ask")]
    pub net: Option<String>,
    /// A host the task may reach: HOST[:PORT] (ports 80 and 443 without
    /// one), *.example.com, an IP address or a CIDR network.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    pub allow_hosts: Vec<String>,
    /// Seconds a held connection waits for your answer before it is denied.
    #[arg(long, value_name = "SECONDS")]
    pub consent_timeout: Option<u64>,
    /// Run the task in this process even when the Airlock app is running.
    #[arg(long)]
    pub local: bool,
    /// The command and its arguments.
    #[arg(
        trailing_var_arg = true,
        required_unless_present = "agent",
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// Builds the policy from the options; errors say which option is wrong.
pub fn policy_from_args(a: &RunArgs) -> Result<Policy, crate::Error> {
    policy_onto(Policy::default(), a)
}

/// A `--grant` or `--deny` path as the user meant it: `~` is the home
/// folder (a shell leaves it as it is in `--deny=~/x`), a relative path is
/// from the current folder. Looked up inside the sandbox as given, a path
/// that is not absolute would hide nothing; and the app, when the task runs
/// there, has a current folder of its own.
fn absolute_path(flag: &str, d: &std::path::Path) -> Result<PathBuf, crate::Error> {
    let s = d.as_os_str();
    let home = crate::dirs::home_dir;
    let p = if s == "~" {
        home()
    } else if let Ok(rest) = d.strip_prefix("~") {
        home().join(rest)
    } else if d.is_absolute() {
        d.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| {
                crate::Error::Invalid(format!(
                    "{flag} {}: {e} (the current folder is needed for a relative path; give an absolute one)",
                    d.display()
                ))
            })?
            .join(d)
    };
    Ok(p)
}

/// Adds the options to `p` (the defaults, or an agent profile's policy).
pub fn policy_onto(mut p: Policy, a: &RunArgs) -> Result<Policy, crate::Error> {
    for g in &a.grants {
        let mut g = Grant::parse(g)?;
        g.path = absolute_path("--grant", &g.path)?;
        p.grants.push(g);
    }
    for d in &a.deny {
        p.deny.push(absolute_path("--deny", d)?);
    }
    for e in &a.env {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| crate::Error::Invalid(format!("--env {e:?}: write KEY=VALUE")))?;
        p.env.push((k.to_string(), v.to_string()));
    }
    let mut l = p.limits.clone();
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
    if let Some((key, why)) = l.problem() {
        return Err(crate::Error::Invalid(format!("--{key}: {why}")));
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
    p.tty = a.tty;
    p.unix_sockets |= a.allow_unix_sockets;
    super::net::apply(&mut p, a.net.as_deref(), &a.allow_hosts, a.consent_timeout)?;
    match a.watch.as_deref() {
        None => {}
        Some("denials") => p.watch = crate::policy::WatchLevel::Denials,
        Some("all") => p.watch = crate::policy::WatchLevel::All,
        Some("off") => p.unmonitored = true,
        Some(other) => {
            return Err(crate::Error::Invalid(format!(
                "--watch {other}: use denials, all or off"
            )))
        }
    }
    Ok(p)
}

/// Writes events as JSON lines, in order, to a file or stdout.
struct EventSink {
    out: Option<Box<dyn Write + Send>>,
}

impl EventSink {
    fn open(arg: Option<&str>) -> Result<EventSink, crate::Error> {
        Ok(EventSink {
            out: match arg {
                None => None,
                Some("-") => Some(Box::new(std::io::stdout())),
                Some(f) => Some(Box::new(
                    std::fs::File::create(f).map_err(|e| crate::Error::io(f, e))?,
                )),
            },
        })
    }

    fn write(&mut self, ev: &Event) {
        if let Some(out) = &mut self.out {
            if let Ok(line) = serde_json::to_string(ev) {
                // Possibly a terminal: C1 and bidi controls as \u escapes.
                let line = crate::audit::escape_json_for_terminal(&line);
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }
}

fn print_layers(layers: &[Enforced]) {
    for l in layers {
        let note = l
            .note
            .as_deref()
            .map(|n| format!(" — {n}"))
            .unwrap_or_default();
        super::say!("  {:<14} {:<28} [{}]{}", l.what, l.value, l.mechanism, note);
    }
}

/// Follows one task's events (from either path) and says when it is over
/// and with which exit code.
pub(crate) struct Follow {
    sink: EventSink,
    verbose: bool,
    /// Changed files from the `exited` event, once seen.
    changed: Option<u64>,
    code: Option<i32>,
}

impl Follow {
    /// Handles one event of our task; returns the exit code once the task
    /// has ended (and reached review, when it changed files).
    pub(crate) fn event(&mut self, ev: &Event) -> Option<i32> {
        self.sink.write(ev);
        match &ev.kind {
            EventKind::Enforcement { layers } if self.verbose => {
                super::say!("{}", gettext("Enforced in this sandbox:"));
                print_layers(layers);
            }
            // Messages can carry names the agent chose: nothing in them
            // may act on the terminal.
            EventKind::Warning { message } => {
                super::say!("airlock: {}", super::log::escape_unsafe(message))
            }
            EventKind::Failed { error } => {
                super::say!("airlock: {}", super::log::escape_unsafe(error));
                self.code = Some(sandbox::SETUP_FAILED);
            }
            EventKind::LimitHit { detail, .. } => super::say!(
                "airlock: {}",
                gettext_f(
                    "the task was stopped: it {detail}",
                    &[("detail", &super::log::escape_unsafe(detail))]
                )
            ),
            EventKind::Exited {
                status,
                changed_files,
            } => {
                self.changed = Some(*changed_files);
                self.code = Some(status.code);
                // The agent's output may have left the terminal drawing
                // invisible or recoloured text (SGR 8), a recoloured
                // palette (which hid the review's warnings, pass 19B),
                // without line wrap, or in a scrolling region: this line,
                // and a review after it, must be seen as they are. The
                // full reset Airlock's own questions use.
                // SAFETY: isatty only queries.
                if unsafe { libc::isatty(2) } == 1 {
                    {
                        use std::io::Write as _;
                        let _ = write!(std::io::stderr(), "{}", super::terminal::RESET_DRAWING);
                    }
                }
                let changes = if *changed_files == 0 {
                    gettext("no files changed")
                } else {
                    gettextrs::ngettext(
                        "{n} file changed, waiting for review",
                        "{n} files changed, waiting for review",
                        u32::try_from(*changed_files).unwrap_or(u32::MAX),
                    )
                    .replace("{n}", &changed_files.to_string())
                };
                super::say!(
                    "{}",
                    gettext_f(
                        "airlock: task {id} exited with status {status}; {changes}",
                        &[
                            ("id", ev.task.as_str()),
                            ("status", &status.code.to_string()),
                            ("changes", &changes)
                        ]
                    )
                );
            }
            EventKind::StateChanged { to, .. } => {
                let over = match to {
                    TaskState::Failed | TaskState::Interrupted | TaskState::Reviewing => true,
                    TaskState::Exited | TaskState::Killed => self.changed.unwrap_or(0) == 0,
                    _ => false,
                };
                if over {
                    // Killed before it ran: the shell's code for SIGKILL.
                    return Some(self.code.unwrap_or(128 + libc::SIGKILL));
                }
            }
            _ => {}
        }
        None
    }
}

pub fn main(args: RunArgs, verbose: bool) -> ExitCode {
    match run(args, verbose) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            super::say!("airlock: {e:#}");
            ExitCode::from(sandbox::SETUP_FAILED as u8)
        }
    }
}

fn run(args: RunArgs, verbose: bool) -> anyhow::Result<i32> {
    let (policy, argv) = match &args.agent {
        Some(name) => {
            let profile = crate::policy::profile::load(name)?;
            let mut argv = profile.command.clone();
            argv.extend(args.command.iter().cloned());
            let mut policy = policy_onto(profile.policy, &args)?;
            policy.agent = Some(name.clone());
            (policy, argv)
        }
        None => (policy_from_args(&args)?, args.command.clone()),
    };
    // Before the app is asked: D-Bus carries paths as text, and a lossy
    // copy of a `--deny` path would hide another file.
    policy.check_textual()?;
    let mut follow = Follow {
        sink: EventSink::open(args.json_events.as_deref())?,
        verbose,
        changed: None,
        code: None,
    };
    // The local supervisor (audit database, recovery) starts while we ask
    // the session bus whether the app is running: most of the time it is
    // not, and the two together are most of what `airlock run` waits for
    // before its sandbox.
    let local = std::thread::Builder::new()
        .name("airlock-start".into())
        .spawn(|| Config::new().and_then(Supervisor::start_quick));
    // The sandbox helper starts now, so that its program start overlaps
    // the supervisor's; it waits for its plan meanwhile. From this thread,
    // which outlives the task (the helper's parent-death signal is tied to
    // it). Should it fail, the task starts one the usual way.
    // `--json-events -`: our stdout carries the events, so the task's own
    // stdout goes to our stderr, and a helper with our stdio is no use.
    let events_on_stdout = args.json_events.as_deref() == Some("-");
    // Network questions asked on this terminal: the task's output is
    // relayed through us, to be held back while a question is shown.
    let asks_here = policy.net.mode == crate::policy::NetMode::Ask && super::net::interactive();
    let helper = match events_on_stdout || asks_here {
        true => None,
        false => crate::sandbox::helper_exe()
            .and_then(|exe| crate::sandbox::prestart(&exe))
            .ok(),
    };
    let local = move || -> anyhow::Result<SupervisorHandle> {
        match local {
            Ok(h) => match h.join() {
                Ok(r) => Ok(r?),
                Err(_) => anyhow::bail!(gettext("the supervisor failed to start")),
            },
            Err(_) => Ok(Supervisor::start_quick(Config::new()?)?),
        }
    };
    if !args.local {
        let remote = crate::api::client::run_remote(&policy, &argv, events_on_stdout, &mut |ev| {
            follow.event(ev)
        });
        if !matches!(remote, Ok(None)) {
            drop(helper);
            // What the local start recovered must be on disk before we exit.
            if let Ok(sup) = local() {
                sup.flush_audit_blocking();
            }
            let code = remote?.unwrap_or(sandbox::SETUP_FAILED);
            if args.review {
                super::say!(
                    "airlock: {}",
                    gettext("the task ran in the Airlock window: review its changes there")
                );
            }
            return Ok(code);
        }
    }
    if asks_here && policy.tty {
        anyhow::bail!(gettext(
            "--net ask asks on this terminal, which --tty gives to the agent: list the hosts it needs with --allow-host, or start the Airlock app, whose window asks"
        ));
    }
    let output = match (asks_here, events_on_stdout) {
        (true, stdout_to_stderr) => OutputMode::Held {
            hold: TerminalHold::new(),
            stdout_to_stderr,
        },
        (false, true) => OutputMode::InheritStdoutToStderr,
        (false, false) => OutputMode::Inherit,
    };
    let tty = policy.tty;
    let modes = TerminalModes::save(tty);
    let ran = run_local(local()?, policy, argv, helper, output, follow, verbose);
    drop(modes);
    let (code, id) = ran?;
    // SAFETY: isatty on our own standard descriptors.
    let terminal = unsafe { libc::isatty(0) == 1 && libc::isatty(2) == 1 };
    if terminal && !tty {
        // Keys typed while the agent had the screen (at a prompt it
        // printed) must not reach the shell, or a review, as commands.
        // SAFETY: our own stdin, open for the process's life.
        super::terminal::discard_typeahead(unsafe { std::os::fd::BorrowedFd::borrow_raw(0) });
    }
    if args.review {
        if terminal {
            let dir = crate::task::TaskDir::new(&crate::dirs::tasks_dir(), &id);
            // Held as for `airlock commit`: what an earlier grant
            // committed must reach the log before a hang-up or SIGTERM
            // ends us (pass 21A). At a prompt, a closed terminal ends the
            // review as an end of input would.
            let _held = super::review::HeldSignals::new();
            super::review::interactive_review(&dir)?;
        } else {
            super::say!(
                "airlock: {}",
                gettext_f(
                    "--review needs a terminal; review later with `airlock changes {id}`",
                    &[("id", id.as_str())]
                )
            );
        }
    }
    Ok(code)
}

/// The terminal's modes from before a `--tty` task, put back however it
/// ended: the helper sets the terminal raw and restores it on the way out,
/// but a task stopped by a limit or `airlock kill` ends with the helper
/// killed, which would leave the user's terminal without echo or Ctrl+C.
struct TerminalModes(Option<nix::sys::termios::Termios>);

impl TerminalModes {
    fn save(tty: bool) -> TerminalModes {
        // SAFETY: isatty only queries.
        let terminal = tty && unsafe { libc::isatty(0) } == 1;
        TerminalModes(
            terminal
                .then(|| nix::sys::termios::tcgetattr(std::io::stdin()).ok())
                .flatten(),
        )
    }
}

impl Drop for TerminalModes {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

fn run_local(
    sup: SupervisorHandle,
    policy: Policy,
    argv: Vec<String>,
    helper: Option<crate::sandbox::Prestarted>,
    output: OutputMode,
    mut follow: Follow,
    verbose: bool,
) -> anyhow::Result<(i32, TaskId)> {
    // What recovery found is printed at the end (with --verbose), after
    // the task's own output.
    // Ctrl+C reaches the helper through the terminal's process group and is
    // forwarded to the agent; we stay to report how it ended.
    // SAFETY: ignoring SIGINT/SIGQUIT in our own process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let mut sub = sup.subscribe();
    let prompt = (policy.net.mode == crate::policy::NetMode::Ask).then(|| {
        super::net::ConsentPrompt::start(
            &sup,
            policy.net.consent_timeout_secs,
            super::net::interactive(),
            match &output {
                OutputMode::Held { hold, .. } => Some(hold.clone()),
                _ => None,
            },
        )
    });
    let id: TaskId = sup.submit_blocking(TaskRequest {
        argv,
        policy,
        requested_by: "cli".into(),
        output,
        helper,
    })?;
    if let Some(p) = &prompt {
        p.follow(&id);
    }
    let mut prompt = prompt;
    let code = loop {
        let Some(ev) = sub.blocking_recv() else {
            anyhow::bail!(gettext("the supervisor stopped before the task ended"));
        };
        if ev.task != id {
            continue;
        }
        if matches!(ev.kind, EventKind::Exited { .. } | EventKind::Failed { .. }) {
            // The terminal is ours again before the summary (and a review).
            if let Some(p) = prompt.take() {
                p.finish();
            }
        }
        if let Some(code) = follow.event(&ev) {
            break code;
        }
    };
    sup.flush_audit_blocking();
    if verbose {
        for w in sup.warnings() {
            super::say!("airlock: {w}");
        }
    }
    Ok((code, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn deny_paths_are_made_absolute_as_the_user_meant_them() {
        let home = crate::dirs::home_dir();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            absolute_path("--deny", Path::new("~/p/.env")).unwrap(),
            home.join("p/.env")
        );
        assert_eq!(absolute_path("--deny", Path::new("~")).unwrap(), home);
        assert_eq!(
            absolute_path("--deny", Path::new(".env")).unwrap(),
            cwd.join(".env")
        );
        assert_eq!(
            absolute_path("--deny", Path::new("~x")).unwrap(),
            cwd.join("~x")
        );
        assert_eq!(
            absolute_path("--deny", Path::new("/a/b")).unwrap(),
            Path::new("/a/b")
        );
    }
}
