//! Runs a task from the window the simple, honest way: by spawning this same
//! binary as `airlock run --grant … -- sh -c COMMAND` in a `gio::Subprocess`.
//! `airlock run` writes its lifecycle events as JSON lines to a pipe we hand
//! it as fd 3 (`--json-events /dev/fd/3`); the sandbox marks every fd above 2
//! close-on-exec, so the agent cannot write into that channel. The `exited`
//! (or `failed`) event becomes one sentence for a toast. The in-process
//! supervisor replaces this once it exists.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::task::Poll;

use gtk::prelude::*;
use gtk::{gio, glib};

use crate::event::{Event, EventKind};
use crate::i18n::{gettext, gettext_f};
use crate::policy::{Access, Grant};

/// The fd number `airlock run` finds its event pipe at.
const EVENTS_FD: i32 = 3;

/// What the New Task dialog asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    /// Run with `sh -c` inside the sandbox.
    pub command: String,
    pub grants: Vec<Grant>,
}

/// How a finished task went, as one sentence for a toast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub success: bool,
    pub message: String,
    /// The end of the error output (airlock's and the agent's), for the
    /// details of a failure.
    pub details: String,
}

/// How many lines of error output a failure's details keep.
const DETAIL_LINES: usize = 20;

fn tail(text: &str, lines: usize) -> String {
    let kept: Vec<&str> = text
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(lines)
        .collect();
    kept.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// How the `airlock run` process itself ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// The program that runs tasks. Inside Flatpak the app cannot create
/// namespaces, so it asks the host's own `airlock` through `flatpak-spawn`
/// (see flatpak/README.md); elsewhere it is this very binary.
pub fn launcher(in_flatpak: bool, current_exe: Option<PathBuf>) -> Vec<OsString> {
    if in_flatpak {
        let forward = format!("--forward-fd={EVENTS_FD}");
        return ["flatpak-spawn", "--host", &forward, "airlock"]
            .map(OsString::from)
            .to_vec();
    }
    vec![current_exe.map_or_else(|| OsString::from("airlock"), PathBuf::into_os_string)]
}

/// Linux names a replaced executable "PATH (deleted)", as after a package
/// upgrade while the window is open; the new file at PATH is the one to run.
fn without_deleted_suffix(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) if Path::new(path).exists() => PathBuf::from(path),
        _ => exe,
    }
}

/// [`launcher`] for the process we are running in.
pub fn this_launcher() -> Vec<OsString> {
    let in_flatpak = Path::new("/.flatpak-info").exists();
    // The window runs as `airlock-window`; tasks go to `airlock` beside it.
    let exe = match std::env::current_exe() {
        Ok(exe) => Some(without_deleted_suffix(exe).with_file_name("airlock")),
        Err(err) => {
            tracing::warn!("cannot find our own executable, using `airlock` from PATH: {err}");
            None
        }
    };
    launcher(in_flatpak, exe)
}

/// The full command line for `request`, starting with `launcher`.
pub fn argv(launcher: Vec<OsString>, request: &TaskRequest) -> Vec<OsString> {
    let mut argv = launcher;
    argv.push("run".into());
    argv.push("--json-events".into());
    argv.push(format!("/dev/fd/{EVENTS_FD}").into());
    for grant in &request.grants {
        // Always spell out the access: `Grant::parse` strips only the last
        // suffix, so a folder whose own name ends in ":rw" stays intact.
        let mut spec = grant.path.clone().into_os_string();
        spec.push(match grant.access {
            Access::Ro => ":ro",
            Access::Rw => ":rw",
        });
        argv.push("--grant".into());
        argv.push(spec);
    }
    argv.extend(["--", "sh", "-c"].map(OsString::from));
    argv.push(request.command.clone().into());
    argv
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rev().find(|l| !l.is_empty())
}

fn changed_files(n: u64) -> String {
    let text = if n == 0 {
        gettext("no files changed")
    } else {
        gettextrs::ngettext(
            "{n} file changed, waiting for review",
            "{n} files changed, waiting for review",
            u32::try_from(n).unwrap_or(u32::MAX),
        )
    };
    text.replace("{n}", &n.to_string())
}

/// Turns the end of an `airlock run` into a sentence: from its `exited` or
/// `failed` event when it sent one, otherwise from its exit status and the
/// last line of its error output.
pub fn outcome(exit: Exit, events: &[Event], stderr: &str) -> Outcome {
    for event in events.iter().rev() {
        match &event.kind {
            EventKind::Exited {
                status,
                changed_files: n,
            } => {
                let changes = changed_files(*n);
                let message = match (status.signal, status.code) {
                    (Some(signal), _) => gettext_f(
                        "Task was stopped by signal {signal}: {changes}",
                        &[("signal", &signal.to_string()), ("changes", &changes)],
                    ),
                    (None, 0) => gettext_f("Task finished: {changes}", &[("changes", &changes)]),
                    (None, code) => gettext_f(
                        "Task ended with exit status {code}: {changes}",
                        &[("code", &code.to_string()), ("changes", &changes)],
                    ),
                };
                return Outcome {
                    success: status.code == 0,
                    message,
                    details: tail(stderr, DETAIL_LINES),
                };
            }
            EventKind::Failed { error } => {
                return Outcome {
                    success: false,
                    message: gettext_f("The task could not run: {error}", &[("error", error)]),
                    details: tail(stderr, DETAIL_LINES),
                };
            }
            _ => {}
        }
    }
    let reason = last_line(stderr);
    let message = match (exit, reason) {
        (Exit::Signal(signal), _) => gettext_f(
            "Airlock was stopped by signal {signal}",
            &[("signal", &signal.to_string())],
        ),
        (Exit::Code(code), Some(reason)) => gettext_f(
            "Task ended with exit status {code}: {reason}",
            &[("code", &code.to_string()), ("reason", reason)],
        ),
        (Exit::Code(code), None) => gettext_f(
            "Task ended with exit status {code}",
            &[("code", &code.to_string())],
        ),
    };
    Outcome {
        success: exit == Exit::Code(0),
        message,
        details: tail(stderr, DETAIL_LINES),
    }
}

/// The events among `text`'s lines; a line that is no event is logged and
/// skipped (a newer `airlock` may send kinds we do not know yet).
pub fn parse_events(text: &str) -> Vec<Event> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| match serde_json::from_str(line) {
            Ok(event) => Some(event),
            Err(err) => {
                tracing::debug!("not an event ({err}): {line}");
                None
            }
        })
        .collect()
}

/// Polls two futures on the current task until both are done.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        match (ra.take(), rb.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                (ra, rb) = (a, b);
                Poll::Pending
            }
        }
    })
    .await
}

/// Everything until end of file; a read error ends it early (and is logged).
async fn read_to_end(stream: gio::UnixInputStream) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        match stream
            .read_bytes_future(64 * 1024, glib::Priority::DEFAULT)
            .await
        {
            Ok(bytes) if bytes.is_empty() => return data,
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(err) => {
                tracing::warn!("reading the task's events: {err}");
                return data;
            }
        }
    }
}

fn failure(message: String) -> Outcome {
    Outcome {
        success: false,
        message,
        details: String::new(),
    }
}

/// A started `airlock run`; [`Running::finish`] waits for its end.
pub struct Running {
    argv: Vec<OsString>,
    process: gio::Subprocess,
    events: gio::UnixInputStream,
}

/// Starts `argv` with its event pipe as fd 3; the error is the outcome to
/// show when it cannot start.
pub fn start(argv: Vec<OsString>) -> Result<Running, Outcome> {
    let args: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
    let (events_read, events_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|err| {
            tracing::warn!("pipe2: {err}");
            failure(gettext_f(
                "Could not start the task: {error}",
                &[("error", err.desc())],
            ))
        })?;
    // The agent's own output is not ours to read; stderr carries airlock's
    // messages (and the agent's), of which the last line explains a failure.
    // stdin is an empty pipe: a task reads nothing from the window.
    let launcher = gio::SubprocessLauncher::new(
        gio::SubprocessFlags::STDIN_PIPE
            | gio::SubprocessFlags::STDOUT_SILENCE
            | gio::SubprocessFlags::STDERR_PIPE,
    );
    launcher.take_fd(events_write, EVENTS_FD);
    let spawned = launcher.spawn(&args);
    // Closes our copy of the pipe's write end, so that its reader sees the
    // end of the file when airlock run is done.
    drop(launcher);
    let process = spawned.map_err(|err| {
        tracing::warn!("cannot start {argv:?}: {err}");
        failure(gettext_f(
            "Could not start the task: {error}",
            &[("error", err.message())],
        ))
    })?;
    // SAFETY: the read end is ours alone; the stream takes it over.
    let events = unsafe { gio::UnixInputStream::take_fd(events_read) };
    Ok(Running {
        argv,
        process,
        events,
    })
}

impl Running {
    /// The process, to stop it when the window goes away.
    pub fn process(&self) -> gio::Subprocess {
        self.process.clone()
    }

    /// Waits, without blocking the main loop, for the end and reports it.
    pub async fn finish(self) -> Outcome {
        let Running {
            argv,
            process,
            events,
        } = self;
        // GLib insists on a buffer for a stdin pipe; an empty one closes it.
        let no_input = glib::Bytes::from_static(b"");
        let (communicated, events) = join(
            process.communicate_future(Some(&no_input)),
            read_to_end(events),
        )
        .await;
        // communicate completes once the pipes are closed and the process exited.
        let stderr = match communicated {
            Ok((_, stderr)) => stderr
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            Err(err) => {
                tracing::warn!("lost the output of {argv:?}: {err}");
                return failure(gettext_f(
                    "Lost contact with the task: {error}",
                    &[("error", err.message())],
                ));
            }
        };
        let exit = if process.has_signaled() {
            Exit::Signal(process.term_sig())
        } else {
            Exit::Code(process.exit_status())
        };
        if exit != Exit::Code(0) {
            tracing::info!("{argv:?} ended with {exit:?}; stderr:\n{stderr}");
        }
        outcome(
            exit,
            &parse_events(&String::from_utf8_lossy(&events)),
            &stderr,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ExitStatus;
    use crate::task::TaskId;

    fn request() -> TaskRequest {
        TaskRequest {
            command: "echo hi > out.txt".into(),
            grants: vec![
                Grant {
                    path: "/home/u/Docs".into(),
                    access: Access::Ro,
                },
                Grant {
                    path: "/home/u/odd:rw".into(),
                    access: Access::Rw,
                },
            ],
        }
    }

    fn event(kind: EventKind) -> Event {
        Event::new(TaskId::generate(), 0, kind)
    }

    fn exited(code: i32, signal: Option<i32>, changed_files: u64) -> Event {
        event(EventKind::Exited {
            status: ExitStatus { code, signal },
            changed_files,
        })
    }

    #[test]
    fn argv_spells_out_events_grants_and_the_shell_command() {
        let argv = argv(vec!["/usr/bin/airlock".into()], &request());
        let expected: Vec<OsString> = [
            "/usr/bin/airlock",
            "run",
            "--json-events",
            "/dev/fd/3",
            "--grant",
            "/home/u/Docs:ro",
            "--grant",
            "/home/u/odd:rw:rw",
            "--",
            "sh",
            "-c",
            "echo hi > out.txt",
        ]
        .map(OsString::from)
        .to_vec();
        assert_eq!(argv, expected);
    }

    #[test]
    fn the_cli_accepts_what_the_window_sends() {
        use clap::Parser;
        let argv = argv(vec!["airlock".into()], &request());
        let cli = crate::cli::Cli::try_parse_from(&argv).expect("airlock run parses our argv");
        let Some(crate::cli::Command::Run(args)) = cli.command else {
            panic!("not a run command: {:?}", cli.command);
        };
        let policy = crate::cli::run::policy_from_args(&args).unwrap();
        assert_eq!(policy.grants, request().grants);
        assert_eq!(args.json_events.as_deref(), Some("/dev/fd/3"));
        assert_eq!(args.command, ["sh", "-c", "echo hi > out.txt"]);
    }

    #[test]
    fn launcher_uses_the_host_airlock_inside_flatpak() {
        assert_eq!(
            launcher(true, Some("/app/bin/airlock".into())),
            ["flatpak-spawn", "--host", "--forward-fd=3", "airlock"]
                .map(OsString::from)
                .to_vec()
        );
        assert_eq!(
            launcher(false, Some("/usr/bin/airlock".into())),
            vec![OsString::from("/usr/bin/airlock")]
        );
        assert_eq!(launcher(false, None), vec![OsString::from("airlock")]);
    }

    #[test]
    fn a_replaced_executable_is_found_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("airlock");
        std::fs::write(&exe, "").unwrap();
        let deleted = PathBuf::from(format!("{} (deleted)", exe.display()));
        assert_eq!(without_deleted_suffix(deleted), exe);
        let gone = PathBuf::from("/nonexistent/airlock (deleted)");
        assert_eq!(without_deleted_suffix(gone.clone()), gone);
    }

    #[test]
    fn the_exited_event_gives_status_and_changes() {
        let o = outcome(Exit::Code(0), &[exited(0, None, 3)], "");
        assert!(o.success);
        assert_eq!(
            o.message,
            "Task finished: 3 files changed, waiting for review"
        );
        let o = outcome(Exit::Code(0), &[exited(0, None, 1)], "");
        assert_eq!(
            o.message,
            "Task finished: 1 file changed, waiting for review"
        );
        let o = outcome(Exit::Code(0), &[exited(0, None, 0)], "");
        assert_eq!(o.message, "Task finished: no files changed");
        let o = outcome(Exit::Code(2), &[exited(2, None, 1)], "");
        assert!(!o.success);
        assert_eq!(
            o.message,
            "Task ended with exit status 2: 1 file changed, waiting for review"
        );
        let o = outcome(Exit::Code(137), &[exited(137, Some(9), 0)], "");
        assert!(!o.success);
        assert_eq!(o.message, "Task was stopped by signal 9: no files changed");
    }

    #[test]
    fn a_failed_event_says_why() {
        let events = [event(EventKind::Failed {
            error: "no user namespaces".into(),
        })];
        let o = outcome(Exit::Code(1), &events, "airlock: something else\n");
        assert!(!o.success);
        assert_eq!(o.message, "The task could not run: no user namespaces");
    }

    #[test]
    fn without_events_the_last_error_line_says_why() {
        let o = outcome(
            Exit::Code(2),
            &[],
            "warning\nerror: unexpected argument '--x'\n\n",
        );
        assert!(!o.success);
        assert_eq!(
            o.message,
            "Task ended with exit status 2: error: unexpected argument '--x'"
        );
        assert_eq!(
            outcome(Exit::Code(127), &[], "").message,
            "Task ended with exit status 127"
        );
        let o = outcome(Exit::Signal(15), &[], "");
        assert!(!o.success);
        assert_eq!(o.message, "Airlock was stopped by signal 15");
    }

    #[test]
    fn details_keep_the_end_of_the_error_output() {
        let stderr: String = (1..=30).map(|i| format!("line {i}\n\n")).collect();
        let o = outcome(Exit::Code(0), &[exited(1, None, 0)], &stderr);
        let expected: Vec<String> = (11..=30).map(|i| format!("line {i}")).collect();
        assert_eq!(o.details, expected.join("\n"));
    }

    #[test]
    fn parse_events_skips_lines_that_are_not_events() {
        let event = exited(0, None, 2);
        let good = serde_json::to_string(&event).unwrap();
        let text = format!("{good}\nnot json\n{{\"type\":\"from_the_future\"}}\n\n");
        assert_eq!(parse_events(&text), vec![event]);
    }

    async fn run(argv: Vec<OsString>) -> Outcome {
        match start(argv) {
            Ok(running) => running.finish().await,
            Err(outcome) => outcome,
        }
    }

    /// A stand-in for `airlock run`: writes an event line to fd 3 the way
    /// `--json-events /dev/fd/3` does, prints to both outputs, and exits.
    fn fake_run(script: &str) -> Vec<OsString> {
        ["sh", "-c", script].map(OsString::from).to_vec()
    }

    #[test]
    fn run_reads_events_from_fd_3_and_ignores_stdout() {
        let ctx = glib::MainContext::new();
        let line = serde_json::to_string(&exited(0, None, 2)).unwrap();
        let script = format!(
            "echo lots of agent output; echo '{line}' > /dev/fd/3; echo 'airlock: done' >&2"
        );
        let ok = ctx.block_on(run(fake_run(&script)));
        assert_eq!(
            ok.message,
            "Task finished: 2 files changed, waiting for review"
        );
        assert!(ok.success);
    }

    #[test]
    fn run_reports_exit_status_and_errors_of_a_real_process() {
        let ctx = glib::MainContext::new();
        let failed = ctx.block_on(run(fake_run("echo oops >&2; exit 3")));
        assert!(!failed.success);
        assert_eq!(failed.message, "Task ended with exit status 3: oops");
        let killed = ctx.block_on(run(fake_run("kill -TERM $$")));
        assert_eq!(killed.message, "Airlock was stopped by signal 15");
        let missing = ctx.block_on(run(vec!["/nonexistent/airlock".into()]));
        assert!(start(vec!["/nonexistent/airlock".into()]).is_err());
        assert!(!missing.success);
        assert!(
            missing.message.contains("/nonexistent/airlock"),
            "{}",
            missing.message
        );
    }

    #[test]
    fn a_started_task_can_be_stopped() {
        let ctx = glib::MainContext::new();
        let running = start(fake_run("exec sleep 100")).unwrap();
        running.process().send_signal(libc::SIGTERM);
        let o = ctx.block_on(running.finish());
        assert!(!o.success);
        assert_eq!(o.message, "Airlock was stopped by signal 15");
    }

    #[test]
    fn run_does_not_stall_on_more_output_than_a_pipe_holds() {
        let ctx = glib::MainContext::new();
        // 1 MiB on stderr and on fd 3: both pipes must be drained together.
        let script = "head -c 1048576 /dev/zero | tr '\\0' x >&2; \
                      head -c 1048576 /dev/zero | tr '\\0' '\\n' > /dev/fd/3";
        let o = ctx.block_on(run(fake_run(script)));
        assert!(o.success, "{}", o.message);
    }
}
