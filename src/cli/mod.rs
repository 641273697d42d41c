//! The `airlock` command line (clap). Each subcommand lives in its own file;
//! this one only parses and dispatches. `airlock` with no subcommand opens
//! the window.

/// `eprintln!` that never panics: `airlock run` goes on (and records its
/// task's end) when nobody reads its standard error any more
/// (`2>&1 | head -1`). What it says may hold names an agent chose (an
/// error about a file of its): control and invisible characters are shown
/// escaped, so no message can be redrawn into another (pass 20B: a failed
/// commit's error read as its success line).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let line = $crate::cli::terminal_safe(&format!($($t)*));
        let _ = writeln!(std::io::stderr(), "{line}");
    }};
}
pub(crate) use say;

/// `s` with every character unsafe on a terminal escaped (`\u{1b}`), but
/// line breaks and tabs as they are.
pub(crate) fn terminal_safe(s: &str) -> String {
    escape_where(s, |c| {
        c != '\n' && c != '\t' && crate::audit::is_terminal_unsafe(c)
    })
}

/// `s` with the characters `unsafe_here` picks written as `\u{…}`.
pub(crate) fn escape_where(s: &str, unsafe_here: impl Fn(char) -> bool) -> String {
    if !s.chars().any(&unsafe_here) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if unsafe_here(c) {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `println!` that never panics. A closed stdout (`airlock commit | head`)
/// must not stop a commit half-way, between grants, before the decision
/// reaches the audit log.
macro_rules! tell {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
pub(crate) use tell;

pub mod doctor;
pub mod log;
pub mod net;
pub mod review;
pub mod run;
pub mod tasks;
pub mod terminal;

use std::process::ExitCode;

use crate::i18n::gettext_f;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "Run AI agents on your files in a sandbox, and review every change before it lands",
    long_about = None
)]
pub struct Cli {
    /// Say more about what is enforced and how.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new sandbox.
    Run(Box<run::RunArgs>),
    /// Check what this machine lets Airlock enforce.
    Doctor(doctor::DoctorArgs),
    /// Show the audit log: tasks, denials, network flows, commits.
    Log(log::LogArgs),
    /// List the changes a finished task made, with risk flags.
    Changes(review::ChangesArgs),
    /// Show a task's changes as diffs.
    Diff(review::DiffArgs),
    /// Copy approved changes into your folders (all, some files, some hunks).
    Commit(review::CommitArgs),
    /// Discard a task's changes.
    Reject(review::TaskArg),
    /// Put back what the last commit of a task replaced.
    Undo(review::TaskArg),
    /// List tasks: queued, running, waiting for review, finished.
    Tasks(tasks::TasksArgs),
    /// Kill a running task.
    Kill(tasks::KillArgs),
    /// Run the supervisor and its D-Bus service without the window.
    Serve(tasks::ServeArgs),
    /// Run one probe of `airlock doctor` in this fresh process (internal).
    #[command(name = crate::doctor::PROBE_SUBCOMMAND, hide = true)]
    Probe(doctor::ProbeArgs),
}

/// Logging to standard error; `AIRLOCK_LOG` overrides the level.
pub fn init_tracing(verbose: bool) {
    let default = if verbose {
        "airlock=debug"
    } else {
        "airlock=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The window's program, installed next to `airlock`.
pub const WINDOW_BIN: &str = "airlock-window";

/// `airlock` with no command opens the window: it runs `airlock-window`,
/// which holds the GTK stack. Keeping GTK out of `airlock` itself spares
/// every `airlock run` the loading of some seventy libraries.
fn open_window(verbose: bool) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("airlock: {}", crate::Error::io("/proc/self/exe", e));
            return ExitCode::FAILURE;
        }
    };
    let window = exe.with_file_name(WINDOW_BIN);
    let mut cmd = std::process::Command::new(&window);
    if verbose {
        cmd.arg("--verbose");
    }
    let err = cmd.exec();
    eprintln!(
        "airlock: {}",
        gettext_f(
            "cannot open the window: {path}: {error}. Reinstall Airlock so that {name} is next to airlock; “airlock --help” lists what works without it.",
            &[
                ("path", &window.display().to_string()),
                ("error", &err.to_string()),
                ("name", WINDOW_BIN),
            ],
        )
    );
    ExitCode::FAILURE
}

/// Entry point of the `airlock` binary after the helper dispatch.
pub fn main() -> ExitCode {
    crate::i18n::init();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    if matches!(
        cli.command,
        Some(Command::Changes(_) | Command::Diff(_) | Command::Log(_) | Command::Tasks(_))
    ) {
        // Commands that only print end quietly when their reader does
        // (`airlock diff ID | head`), as other Unix tools do, instead of
        // panicking on the broken pipe. Not the others: a commit must
        // finish what it started.
        // SAFETY: restoring the default disposition in our own process.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Some(Command::Run(args)) => run::main(*args, cli.verbose),
        Some(Command::Doctor(args)) => doctor::main(args, cli.verbose),
        Some(Command::Log(args)) => log::main(args),
        Some(Command::Changes(args)) => review::changes(args),
        Some(Command::Diff(args)) => review::diff(args),
        Some(Command::Commit(args)) => review::commit(args),
        Some(Command::Reject(args)) => review::reject(args),
        Some(Command::Undo(args)) => review::undo(args),
        Some(Command::Tasks(args)) => tasks::tasks(args),
        Some(Command::Kill(args)) => tasks::kill(args),
        Some(Command::Serve(args)) => tasks::serve(args),
        // Single-threaded here: nothing above starts a thread.
        Some(Command::Probe(args)) => doctor::probe_main(args),
        None => open_window(cli.verbose),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_cannot_redraw_the_terminal() {
        let said =
            super::terminal_safe("no space left on zz\r\x1b[2Kx: 2 changes committed.\x1b[8m\n");
        assert!(!said.contains('\r') && !said.contains('\x1b'), "{said}");
        assert!(said.ends_with("committed.\\u{1b}[8m\n"), "{said}");
        assert_eq!(super::terminal_safe("a\tb\nc"), "a\tb\nc");
        assert_eq!(super::terminal_safe("x\u{200b}y"), "x\\u{200b}y");
    }
}
