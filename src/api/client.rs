//! The CLI's side of the D-Bus API: is the app running, submit and follow
//! a task, list tasks, kill one. Blocking calls over a private
//! current-thread runtime, each with a time limit so a hung bus never
//! hangs the CLI.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use zbus::export::futures_util::StreamExt;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, MessageStream};

use super::{policy_to_dict, task_id_of, task_path, SUPERVISOR_IFACE, SUPERVISOR_PATH, TASK_IFACE};
use crate::event::Event;
use crate::policy::Policy;
use crate::task::TaskId;

/// How long finding the bus and the app may take before the CLI runs the
/// task itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the running app's supervisor.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    conn: Connection,
}

/// A task as the app describes it.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteTask {
    pub id: String,
    pub state: String,
    pub exit_status: i32,
    pub changed_files: u64,
    pub denial_count: u64,
    pub argv: Vec<String>,
    pub requested_by: String,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(crate::i18n::gettext_f(
        "D-Bus: {error}",
        &[("error", &e.to_string())]
    ))
}

async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = zbus::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(err(crate::i18n::gettext(
            "the Airlock app did not answer in time",
        ))),
    }
}

impl Remote {
    /// The app's supervisor, if a session bus exists and something owns
    /// [`crate::config::DBUS_NAME`] on it.
    pub fn connect() -> Option<Remote> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let conn = rt.block_on(async {
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::session())
                .await
                .ok()?
                .ok()?;
            let dbus = zbus::fdo::DBusProxy::new(&conn).await.ok()?;
            let name = zbus::names::BusName::try_from(crate::config::DBUS_NAME).ok()?;
            let owned = tokio::time::timeout(CONNECT_TIMEOUT, dbus.name_has_owner(name))
                .await
                .ok()?
                .ok()?;
            owned.then_some(conn)
        })?;
        Some(Remote { rt, conn })
    }

    async fn call<B, R>(&self, path: &str, iface: &str, method: &str, body: &B) -> anyhow::Result<R>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
    {
        let reply = within(
            CALL_TIMEOUT,
            self.conn.call_method(
                Some(crate::config::DBUS_NAME),
                path,
                Some(iface),
                method,
                body,
            ),
        )
        .await?;
        reply.body().deserialize::<R>().map_err(err)
    }

    /// Every task, oldest first.
    pub fn list(&self) -> anyhow::Result<Vec<RemoteTask>> {
        self.rt.block_on(async {
            let paths: Vec<OwnedObjectPath> = self
                .call(SUPERVISOR_PATH, SUPERVISOR_IFACE, "ListTasks", &())
                .await?;
            let mut out = Vec::new();
            for p in paths {
                let props: HashMap<String, OwnedValue> = self
                    .call(
                        p.as_str(),
                        "org.freedesktop.DBus.Properties",
                        "GetAll",
                        &(TASK_IFACE,),
                    )
                    .await?;
                let s = |k: &str| {
                    props
                        .get(k)
                        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
                        .unwrap_or_default()
                };
                let n = |k: &str| {
                    props
                        .get(k)
                        .and_then(|v| u64::try_from(v.try_clone().ok()?).ok())
                        .unwrap_or(0)
                };
                out.push(RemoteTask {
                    id: s("Id"),
                    state: s("State"),
                    exit_status: props
                        .get("ExitStatus")
                        .and_then(|v| i32::try_from(v.try_clone().ok()?).ok())
                        .unwrap_or(-1),
                    changed_files: n("ChangedFiles"),
                    denial_count: n("DenialCount"),
                    argv: props
                        .get("Argv")
                        .and_then(|v| Vec::<String>::try_from(v.try_clone().ok()?).ok())
                        .unwrap_or_default(),
                    requested_by: s("RequestedBy"),
                });
            }
            Ok(out)
        })
    }

    /// Kills task `id` in the app.
    pub fn kill(&self, id: &TaskId) -> anyhow::Result<()> {
        let path = task_path(id).map_err(err)?;
        self.rt.block_on(async {
            self.call::<_, ()>(path.as_str(), TASK_IFACE, "Kill", &())
                .await
        })
    }

    /// Writes what the app captured of task `path`'s output.
    async fn show_output(&self, path: &str, to_stderr: bool) -> anyhow::Result<()> {
        let out: Vec<u8> = self.call(path, TASK_IFACE, "Output", &()).await?;
        let mut sink: Box<dyn std::io::Write> = match to_stderr {
            true => Box::new(std::io::stderr().lock()),
            false => Box::new(std::io::stdout().lock()),
        };
        let _ = sink.write_all(&out);
        let _ = sink.flush();
        Ok(())
    }

    /// Submits a task and calls `on_event` with each of its events until it
    /// returns an exit code.
    pub fn submit_and_follow(
        &self,
        policy: &Policy,
        argv: &[String],
        output_to_stderr: bool,
        on_event: &mut dyn FnMut(&Event) -> Option<i32>,
    ) -> anyhow::Result<i32> {
        let cwd = std::env::current_dir().map_err(|e| crate::Error::io(".", e))?;
        let dict = policy_to_dict(policy, &cwd);
        self.rt.block_on(async {
            // Listen before submitting, so the first events are not missed.
            let rule = MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .interface(TASK_IFACE)
                .map_err(err)?
                .member("Event")
                .map_err(err)?
                .build();
            let mut stream = MessageStream::for_match_rule(rule, &self.conn, Some(65536))
                .await
                .map_err(err)?;
            let path: OwnedObjectPath = self
                .call(
                    SUPERVISOR_PATH,
                    SUPERVISOR_IFACE,
                    "SubmitTask",
                    &(dict, argv),
                )
                .await?;
            let id = task_id_of(path.as_str());
            // Ctrl+C kills the task in the app (as it would a local one);
            // we stay to report how it ended.
            let mut interrupted = false;
            let mut shown = false;
            loop {
                let msg = tokio::select! {
                    m = stream.next() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c(), if !interrupted => {
                        interrupted = true;
                        if let Err(e) = self.call::<_, ()>(path.as_str(), TASK_IFACE, "Kill", &()).await {
                            eprintln!("airlock: {e:#}");
                        }
                        continue;
                    }
                };
                let msg = msg.map_err(err)?;
                let header = msg.header();
                if header.path().map(|p| p.as_str()) != Some(path.as_str()) {
                    continue;
                }
                let json: String = msg.body().deserialize().map_err(err)?;
                let ev: Event = serde_json::from_str(&json).map_err(err)?;
                if Some(&ev.task) != id.as_ref() {
                    continue;
                }
                // The agent's output was captured by the app: shown before
                // the line that says how the task ended, which must come
                // last (output after it could overwrite it).
                // Once: the end comes as `exited` and then (with changes)
                // as `reviewing`, and output printed after the summary
                // could erase it.
                let ends = matches!(ev.kind, crate::event::EventKind::Exited { .. });
                if ends && !shown {
                    self.show_output(path.as_str(), output_to_stderr).await?;
                    shown = true;
                }
                if let Some(code) = on_event(&ev) {
                    if !shown {
                        self.show_output(path.as_str(), output_to_stderr).await?;
                    }
                    return Ok(code);
                }
            }
            Err(err(crate::i18n::gettext(
                "the connection to the Airlock app was lost before the task ended",
            )))
        })
    }
}

/// `airlock run` over the app when it is running: `None` when it is not.
/// The task's captured output goes to our stdout, or to our stderr when
/// `output_to_stderr` (our stdout carries `--json-events -`).
pub fn run_remote(
    policy: &Policy,
    argv: &[String],
    output_to_stderr: bool,
    on_event: &mut dyn FnMut(&Event) -> Option<i32>,
) -> anyhow::Result<Option<i32>> {
    let Some(remote) = Remote::connect() else {
        return Ok(None);
    };
    eprintln!(
        "{}",
        crate::i18n::gettext(
            "airlock: the Airlock app is running; the task runs there (use --local to run it here)"
        )
    );
    remote
        .submit_and_follow(policy, argv, output_to_stderr, on_event)
        .map(Some)
}
