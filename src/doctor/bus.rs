//! Probes that ask the session bus: the user's systemd manager (for
//! transient scopes), xdg-desktop-portal and a StatusNotifierWatcher.
//!
//! zbus's blocking API has no per-call timeout, and a portal that is being
//! activated may take long or never answer; so the calls run on a private
//! current-thread tokio runtime, each bounded by `tokio::time::timeout`.

use std::future::Future;
use std::time::Duration;

use zbus::zvariant::OwnedValue;
use zbus::Connection;

use super::probe::{Portal, Service, SessionBus, Tray};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bus activation of xdg-desktop-portal starts its backends first.
const PORTAL_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct BusFacts {
    pub session_bus: SessionBus,
    pub systemd_user: Service,
    pub portal: Portal,
    pub tray: Tray,
}

/// Asks the session bus everything at once.
pub(super) fn probe() -> BusFacts {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(probe_async()),
        Err(e) => no_bus(format!("tokio runtime: {e}")),
    }
}

fn no_bus(error: String) -> BusFacts {
    BusFacts {
        session_bus: SessionBus::Unavailable { error },
        systemd_user: Service::NotChecked,
        portal: Portal::NotChecked,
        tray: Tray::NotChecked,
    }
}

async fn bounded<T, E: std::fmt::Display>(
    wait: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(wait, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} seconds", wait.as_secs())),
    }
}

async fn probe_async() -> BusFacts {
    let conn = match bounded(CONNECT_TIMEOUT, Connection::session()).await {
        Ok(conn) => conn,
        Err(error) => return no_bus(format!("{}: {error}", session_address())),
    };
    let systemd_user = service(
        get_property(
            &conn,
            CALL_TIMEOUT,
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "Version",
        )
        .await
        .and_then(|v| String::try_from(v).map_err(|e| e.to_string())),
    );
    let portal = portal(&conn).await;
    let tray = tray(&conn).await;
    BusFacts {
        session_bus: SessionBus::Connected,
        systemd_user,
        portal,
        tray,
    }
}

/// Where zbus looked for the session bus, for the report.
fn session_address() -> String {
    match std::env::var("DBUS_SESSION_BUS_ADDRESS") {
        Ok(address) => address,
        Err(_) => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(dir) => format!(
                "DBUS_SESSION_BUS_ADDRESS is not set; {}",
                std::path::Path::new(&dir).join("bus").display()
            ),
            None => "DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are not set".to_owned(),
        },
    }
}

fn service(r: Result<String, String>) -> Service {
    match r {
        Ok(version) => Service::Answered { version },
        Err(error) => Service::NoAnswer { error },
    }
}

const PORTAL: &str = "org.freedesktop.portal.Desktop";
const PORTAL_PATH: &str = "/org/freedesktop/portal/desktop";

/// Pings the portal (which bus-activates it), then reads the FileChooser
/// version: a portal without a file chooser backend answers the first only.
async fn portal(conn: &Connection) -> Portal {
    let ping = conn.call_method(
        Some(PORTAL),
        PORTAL_PATH,
        Some("org.freedesktop.DBus.Peer"),
        "Ping",
        &(),
    );
    if let Err(error) = bounded(PORTAL_TIMEOUT, ping).await {
        return Portal::NoAnswer { error };
    }
    match get_property(
        conn,
        CALL_TIMEOUT,
        PORTAL,
        PORTAL_PATH,
        "org.freedesktop.portal.FileChooser",
        "version",
    )
    .await
    .and_then(|v| u32::try_from(v).map_err(|e| e.to_string()))
    {
        Ok(version) => Portal::FileChooser { version },
        Err(error) => Portal::NoFileChooser { error },
    }
}

const WATCHER: &str = "org.kde.StatusNotifierWatcher";

async fn tray(conn: &Connection) -> Tray {
    let owned = async {
        let dbus = zbus::fdo::DBusProxy::new(conn)
            .await
            .map_err(|e| e.to_string())?;
        let name = zbus::names::BusName::try_from(WATCHER).map_err(|e| e.to_string())?;
        dbus.name_has_owner(name).await.map_err(|e| e.to_string())
    };
    match bounded(CALL_TIMEOUT, owned).await {
        Ok(false) => Tray::NoWatcher,
        Err(error) => Tray::NoAnswer { error },
        Ok(true) => match get_property(
            conn,
            CALL_TIMEOUT,
            WATCHER,
            "/StatusNotifierWatcher",
            WATCHER,
            "IsStatusNotifierHostRegistered",
        )
        .await
        .and_then(|v| bool::try_from(v).map_err(|e| e.to_string()))
        {
            Ok(host_registered) => Tray::Watcher { host_registered },
            Err(error) => Tray::NoAnswer { error },
        },
    }
}

/// `org.freedesktop.DBus.Properties.Get`, called directly so that no
/// property cache or signal match is set up for a one-off read.
async fn get_property(
    conn: &Connection,
    wait: Duration,
    dest: &str,
    path: &str,
    iface: &str,
    name: &str,
) -> Result<OwnedValue, String> {
    let reply = bounded(
        wait,
        conn.call_method(
            Some(dest),
            path,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(iface, name),
        ),
    )
    .await?;
    reply
        .body()
        .deserialize::<OwnedValue>()
        .map_err(|e| e.to_string())
}
