//! `airlock tasks`, `airlock kill ID` and `airlock serve` (the supervisor
//! and its D-Bus service without the window).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::api::client::{Remote, RemoteTask};
use crate::i18n::{gettext, gettext_f};
use crate::supervisor::{Config, Supervisor};
use crate::task::TaskId;

#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// The task id (as `airlock tasks` shows it).
    pub task: String,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Tasks that run at the same time.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Prune finished tasks older than this many days at start (0 keeps all).
    #[arg(long, default_value_t = 30)]
    pub retention_days: u64,
}

fn report(r: anyhow::Result<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|e| {
        super::say!("airlock: {e:#}");
        ExitCode::FAILURE
    })
}

pub fn tasks(args: TasksArgs) -> ExitCode {
    report(tasks_inner(args))
}

/// From the running app when there is one (live state), otherwise from the
/// audit store.
fn tasks_inner(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let list: Vec<RemoteTask> = match Remote::connect() {
        Some(r) => r.list()?,
        None => {
            let path = crate::audit::default_path();
            if !path.exists() {
                Vec::new()
            } else {
                crate::audit::AuditStore::open(&path)?
                    .tasks(&crate::audit::Filter::default())?
                    .into_iter()
                    .map(|t| RemoteTask {
                        id: t.id.to_string(),
                        state: t.state.as_str().to_string(),
                        exit_status: t.exit.map(|e| e.code).unwrap_or(-1),
                        changed_files: t.changed_files.unwrap_or(0),
                        denial_count: t.denial_count,
                        argv: t.argv,
                        requested_by: t.requested_by,
                    })
                    .collect()
            }
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        for t in &list {
            writeln!(
                out,
                "{}",
                crate::audit::escape_json_for_terminal(&serde_json::to_string(t)?)
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        writeln!(out, "{}", gettext("No tasks yet."))?;
        return Ok(ExitCode::SUCCESS);
    }
    let head = [
        gettext("ID"),
        gettext("STATE"),
        gettext("EXIT"),
        gettext("CHANGED"),
        gettext("DENIED"),
        gettext("BY"),
        gettext("COMMAND"),
    ];
    writeln!(
        out,
        "{:<20} {:<17} {:>5} {:>7} {:>7}  {:<10} {}",
        head[0], head[1], head[2], head[3], head[4], head[5], head[6]
    )?;
    for t in &list {
        let exit = if t.exit_status < 0 {
            "-".to_string()
        } else {
            t.exit_status.to_string()
        };
        let argv: String = t
            .argv
            .join(" ")
            .chars()
            .filter(|c| !c.is_control())
            .take(60)
            .collect();
        let by: String = t
            .requested_by
            .chars()
            .filter(|c| !c.is_control())
            .take(10)
            .collect();
        writeln!(
            out,
            "{:<20} {:<17} {:>5} {:>7} {:>7}  {:<10} {}",
            t.id, t.state, exit, t.changed_files, t.denial_count, by, argv
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn kill(args: KillArgs) -> ExitCode {
    report(kill_inner(args))
}

fn kill_inner(args: KillArgs) -> anyhow::Result<ExitCode> {
    let id = TaskId::parse(&args.task)?;
    if let Some(r) = Remote::connect() {
        if r.list()?.iter().any(|t| t.id == id.as_str()) {
            r.kill(&id)?;
            println!(
                "{}",
                gettext_f("Task {id} was killed.", &[("id", id.as_str())])
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    // A task of `airlock run --local`: its sandbox is found by its owner file.
    let dir = crate::task::TaskDir::new(&crate::dirs::tasks_dir(), &id);
    if !dir.path().exists() {
        return Err(crate::Error::NoSuchTask(id.to_string()).into());
    }
    if crate::supervisor::kill_local(&dir)? {
        println!(
            "{}",
            gettext_f("Task {id} was killed.", &[("id", id.as_str())])
        );
        Ok(ExitCode::SUCCESS)
    } else {
        anyhow::bail!(gettext_f(
            "task {id} is not running",
            &[("id", id.as_str())]
        ))
    }
}

pub fn serve(args: ServeArgs) -> ExitCode {
    report(serve_inner(args))
}

fn serve_inner(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::new()?;
    config.concurrency = args.concurrency.max(1);
    config.retention_days = args.retention_days;
    let sup = Supervisor::start(config)?;
    for w in sup.warnings() {
        eprintln!("airlock: {w}");
    }
    let rt = sup.runtime().clone();
    let conn = rt.block_on(async {
        let conn = zbus::Connection::session().await.map_err(|e| {
            anyhow::anyhow!(gettext_f(
                "no session bus: {error}",
                &[("error", &e.to_string())]
            ))
        })?;
        crate::api::service::serve(sup.clone(), &conn).await?;
        anyhow::Ok(conn)
    })?;
    eprintln!(
        "{}",
        gettext_f(
            "airlock: serving {name} on the session bus",
            &[("name", crate::config::DBUS_NAME)]
        )
    );
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // When the session bus goes away (the session ended), nobody can
        // reach the service any more: it stops as on SIGTERM instead of
        // lingering with its tasks. zbus ends every message stream of a
        // connection whose socket failed.
        let mut bus = zbus::MessageStream::from(&conn);
        let bus_gone = async {
            use zbus::export::futures_util::StreamExt;
            while let Some(Ok(_)) = bus.next().await {}
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = bus_gone => {
                eprintln!(
                    "{}",
                    gettext("airlock: the session bus went away; stopping the running tasks")
                );
            }
        }
        anyhow::Ok(())
    })?;
    // Stop cleanly: running tasks end as killed (not interrupted) and every
    // event reaches the audit store.
    for t in sup
        .tasks()
        .iter()
        .filter(|t| !t.state.is_finished_running())
    {
        let _ = sup.kill_blocking(&t.id);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && sup.tasks().iter().any(|t| !t.state.is_finished_running()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    sup.flush_audit_blocking();
    drop(conn);
    Ok(ExitCode::SUCCESS)
}
