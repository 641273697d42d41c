//! The D-Bus service over a [`SupervisorHandle`]: `io.github.airlock.Supervisor1`
//! at [`SUPERVISOR_PATH`] and one `io.github.airlock.Task1` object per task.
//! The interface is documented for agent authors in `docs/dbus-api.md`;
//! `data/dbus/io.github.airlock.Supervisor1.xml` is its introspection.

use std::collections::HashMap;

use zbus::fdo;
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalContext};
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};
use zbus::{interface, Connection};

use super::{policy_from_dict, task_path, SUPERVISOR_PATH};
use crate::event::EventKind;
use crate::supervisor::{OutputMode, SupervisorHandle, TaskRequest};
use crate::task::TaskId;

fn failed(e: crate::Error) -> fdo::Error {
    match e {
        crate::Error::Invalid(m) => fdo::Error::InvalidArgs(m),
        crate::Error::NoSuchTask(_) => fdo::Error::UnknownObject(e.to_string()),
        other => fdo::Error::Failed(other.to_string()),
    }
}

/// Refuses a caller that runs in another user namespace than ours: every
/// Airlock sandbox has its own, so no task can drive this service (submit
/// a task, answer a network question, commit or read another task), even
/// one allowed unix sockets that found the bus's socket in a grant.
async fn outside_sandbox(conn: &Connection, header: &Header<'_>) -> fdo::Result<()> {
    let denied = || {
        fdo::Error::AccessDenied(crate::i18n::gettext(
            "calls from inside a sandbox are refused",
        ))
    };
    let sender = header.sender().ok_or_else(denied)?;
    let bus = fdo::DBusProxy::new(conn).await?;
    let pid = bus
        .get_connection_unix_process_id(sender.clone().into())
        .await
        .map_err(|_| denied())?;
    let ours = std::fs::read_link("/proc/self/ns/user");
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/user"));
    match (ours, theirs) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        _ => Err(denied()),
    }
}

fn path(id: &TaskId) -> fdo::Result<OwnedObjectPath> {
    task_path(id).map_err(|e| fdo::Error::Failed(e.to_string()))
}

/// Registers the object of task `id` (again is fine).
async fn register(conn: &Connection, handle: &SupervisorHandle, id: &TaskId) -> zbus::Result<()> {
    let p = task_path(id)?;
    conn.object_server()
        .at(
            p,
            TaskObject {
                handle: handle.clone(),
                id: id.clone(),
            },
        )
        .await?;
    Ok(())
}

struct SupervisorObject {
    handle: SupervisorHandle,
}

#[interface(name = "io.github.airlock.Supervisor1")]
impl SupervisorObject {
    /// Queues a task; returns its object. `policy` keys: docs/dbus-api.md.
    async fn submit_task(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        policy: HashMap<String, OwnedValue>,
        argv: Vec<String>,
    ) -> fdo::Result<OwnedObjectPath> {
        outside_sandbox(conn, &header).await?;
        let (policy, argv) = policy_from_dict(&policy, argv).map_err(fdo::Error::InvalidArgs)?;
        let requested_by = header
            .sender()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "dbus".into());
        let id = self
            .handle
            .submit(TaskRequest {
                argv,
                policy,
                requested_by,
                output: OutputMode::Capture,
                helper: None,
            })
            .await
            .map_err(failed)?;
        register(conn, &self.handle, &id).await?;
        path(&id)
    }

    /// Every task the supervisor knows, oldest first.
    async fn list_tasks(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Vec<OwnedObjectPath>> {
        outside_sandbox(conn, &header).await?;
        self.handle.tasks().iter().map(|t| path(&t.id)).collect()
    }

    /// Answers network question `id` (from a task's `consent_requested`
    /// event): `allow_once`, `allow_task`, `allow_always` or `deny`.
    async fn answer_consent(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        id: u64,
        answer: String,
    ) -> fdo::Result<()> {
        outside_sandbox(conn, &header).await?;
        self.handle
            .answer_consent(id, &answer)
            .await
            .map_err(failed)
    }
}

struct TaskObject {
    handle: SupervisorHandle,
    id: TaskId,
}

impl TaskObject {
    fn info(&self) -> fdo::Result<crate::supervisor::TaskInfo> {
        self.handle
            .task(&self.id)
            .ok_or_else(|| fdo::Error::UnknownObject(self.id.to_string()))
    }
}

#[interface(name = "io.github.airlock.Task1")]
impl TaskObject {
    #[zbus(property)]
    fn id(&self) -> String {
        self.id.to_string()
    }

    #[zbus(property)]
    fn state(&self) -> fdo::Result<String> {
        Ok(self.info()?.state.as_str().to_string())
    }

    /// The agent's exit code (128 + signal when killed), -1 before it ended.
    #[zbus(property)]
    fn exit_status(&self) -> fdo::Result<i32> {
        Ok(self.info()?.exit.map(|e| e.code).unwrap_or(-1))
    }

    #[zbus(property)]
    fn changed_files(&self) -> fdo::Result<u64> {
        Ok(self.info()?.changed_files)
    }

    #[zbus(property)]
    fn denial_count(&self) -> fdo::Result<u64> {
        Ok(self.info()?.denial_count)
    }

    #[zbus(property)]
    fn argv(&self) -> fdo::Result<Vec<String>> {
        Ok(self.info()?.argv)
    }

    #[zbus(property)]
    fn requested_by(&self) -> fdo::Result<String> {
        Ok(self.info()?.requested_by)
    }

    async fn kill(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        outside_sandbox(conn, &header).await?;
        self.handle.kill(&self.id).await.map_err(failed)
    }

    /// JSON: `[{grant, changes: [{path, kind, conflict, risks}]}]`.
    async fn changes(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<String> {
        outside_sandbox(conn, &header).await?;
        let c = self.handle.changes(&self.id).await.map_err(failed)?;
        serde_json::to_string(&c).map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    /// Commits `paths` (all when empty). JSON: `{committed, conflicts, refused, state}`.
    async fn commit(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        paths: Vec<String>,
    ) -> fdo::Result<String> {
        outside_sandbox(conn, &header).await?;
        let c = self.handle.commit(&self.id, paths).await.map_err(failed)?;
        serde_json::to_string(&c).map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    async fn reject(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        outside_sandbox(conn, &header).await?;
        self.handle.reject(&self.id).await.map_err(failed)
    }

    async fn undo(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        outside_sandbox(conn, &header).await?;
        self.handle.undo(&self.id).await.map(|_| ()).map_err(failed)
    }

    /// The last 256 KiB the task printed (stdout and stderr together);
    /// the whole output is in the task folder's `output.log`.
    async fn output(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Vec<u8>> {
        outside_sandbox(conn, &header).await?;
        self.handle
            .output(&self.id)
            .ok_or_else(|| fdo::Error::UnknownObject(self.id.to_string()))
    }

    /// Every event of the task, as the JSON of `airlock run --json-events`.
    #[zbus(signal)]
    async fn event(ctxt: &SignalContext<'_>, json: &str) -> zbus::Result<()>;

    #[zbus(signal, name = "StateChanged")]
    async fn emit_state_changed(ctxt: &SignalContext<'_>, from: &str, to: &str)
        -> zbus::Result<()>;
}

/// Serves the supervisor on `conn` (objects and signals), then asks for
/// the well-known name [`crate::config::DBUS_NAME`]; fails if another
/// process owns it.
pub async fn serve(handle: SupervisorHandle, conn: &Connection) -> Result<(), crate::Error> {
    let bus_err = |e: zbus::Error| crate::Error::Unsupported(format!("D-Bus: {e}"));
    conn.object_server()
        .at(
            SUPERVISOR_PATH,
            SupervisorObject {
                handle: handle.clone(),
            },
        )
        .await
        .map_err(bus_err)?;
    for t in handle.tasks() {
        register(conn, &handle, &t.id).await.map_err(bus_err)?;
    }
    // Lossless: a D-Bus client cannot re-read a signal it never got.
    let mut sub = handle.subscribe_lossless();
    let (c2, h2) = (conn.clone(), handle.clone());
    handle.runtime().spawn(async move {
        let mut objects: HashMap<TaskId, InterfaceRef<TaskObject>> = HashMap::new();
        while let Some(ev) = sub.recv().await {
            if let Err(e) = forward(&c2, &h2, &mut objects, &ev).await {
                tracing::warn!("D-Bus: event {} of {} not forwarded: {e}", ev.seq, ev.task);
            }
        }
    });
    use zbus::fdo::{RequestNameFlags, RequestNameReply};
    match conn
        .request_name_with_flags(crate::config::DBUS_NAME, RequestNameFlags::DoNotQueue.into())
        .await
        .map_err(bus_err)?
    {
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner => Ok(()),
        _ => Err(crate::Error::Unsupported(crate::i18n::gettext_f(
            "another Airlock already owns {name} on the session bus (the app or `airlock serve` is running)",
            &[("name", crate::config::DBUS_NAME)],
        ))),
    }
}

/// One event as signals of its task's object.
async fn forward(
    conn: &Connection,
    handle: &SupervisorHandle,
    objects: &mut HashMap<TaskId, InterfaceRef<TaskObject>>,
    ev: &crate::event::Event,
) -> zbus::Result<()> {
    let iface = match objects.get(&ev.task) {
        Some(i) => i,
        None => {
            register(conn, handle, &ev.task).await?;
            let p: ObjectPath<'_> = task_path(&ev.task)?.into();
            let i = conn.object_server().interface::<_, TaskObject>(&p).await?;
            objects.entry(ev.task.clone()).or_insert(i)
        }
    };
    let ctxt = iface.signal_context();
    let json = serde_json::to_string(ev).map_err(|e| zbus::Error::Failure(e.to_string()))?;
    TaskObject::event(ctxt, &json).await?;
    match &ev.kind {
        EventKind::StateChanged { from, to } => {
            let from = from.map(|f| f.as_str()).unwrap_or("");
            TaskObject::emit_state_changed(ctxt, from, to.as_str()).await?;
            iface.get().await.state_changed(ctxt).await?;
        }
        EventKind::Exited { .. } => {
            let obj = iface.get().await;
            obj.exit_status_changed(ctxt).await?;
            obj.changed_files_changed(ctxt).await?;
        }
        EventKind::SyscallDenied { .. }
        | EventKind::FileAttempt { denied: true, .. }
        | EventKind::NetAttempt { .. } => {
            iface.get().await.denial_count_changed(ctxt).await?;
        }
        _ => {}
    }
    Ok(())
}
