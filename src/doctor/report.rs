//! What the probe results mean: one [`Check`] per layer, saying what Airlock
//! enforces because of it or what it falls back to, and how to fix a gap.
//! Pure logic over [`Probes`], so every case is testable without the kernel.

use serde::Serialize;

use super::probe::{Portal, Probes, Service, SessionBus, Tray, APPARMOR_PROFILE};
use crate::i18n::{gettext, gettext_f};

/// How a layer stands. Only [`Status::Missing`] stops Airlock from running
/// tasks; it is used for exactly the layers it cannot run without.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Optional desktop integration that is absent; nothing is weaker.
    Info,
    /// Airlock runs, with a weaker fallback.
    Warning,
    /// Airlock will not run tasks.
    Missing,
}

impl Status {
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Info => "·",
            Status::Warning => "!",
            Status::Missing => "✗",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier for scripts and tests.
    pub id: &'static str,
    pub title: String,
    pub status: Status,
    /// What Airlock enforces because of this, or what it falls back to.
    pub consequence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The technical finding (failing step, versions, paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Check {
    fn new(id: &'static str, title: String, status: Status, consequence: String) -> Self {
        Check {
            id,
            title,
            status,
            consequence,
            fix: None,
            detail: None,
        }
    }

    fn fix(mut self, fix: String) -> Self {
        self.fix = Some(fix);
        self
    }

    fn detail(mut self, detail: Option<String>) -> Self {
        self.detail = detail;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn from_probes(p: &Probes) -> Report {
        Report {
            checks: vec![
                user(p),
                userns(p),
                apparmor(p),
                overlay(p),
                seccomp(p),
                seccomp_notify(p),
                landlock(p),
                landlock_audit(p),
                limits(p),
                session_bus(p),
                portal(p),
                tray(p),
            ],
        }
    }

    /// False when a layer Airlock cannot run without is missing.
    pub fn can_run(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Missing)
    }

    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// One sentence on the whole machine.
    pub fn summary(&self) -> String {
        if self.can_run() {
            gettext("Airlock can run sandboxed tasks on this machine.")
        } else {
            gettext("Airlock cannot run tasks on this machine until the lines marked ✗ are fixed.")
        }
    }
}

fn user(p: &Probes) -> Check {
    if p.uid == 0 {
        Check::new(
            "user",
            gettext("Running as root"),
            Status::Ok,
            gettext("Each task runs as the unprivileged user nobody (uid 65534), never as root."),
        )
    } else {
        Check::new(
            "user",
            gettext("Running as an ordinary user"),
            Status::Ok,
            gettext_f(
                "Each task runs as you (uid {uid}) with every capability dropped.",
                &[("uid", &p.uid.to_string())],
            ),
        )
    }
}

fn userns(p: &Probes) -> Check {
    let title = gettext("User namespaces");
    if p.userns.ok {
        return Check::new(
            "userns",
            title,
            Status::Ok,
            gettext("Each task gets its own user, mount, PID, network, IPC, UTS and cgroup namespaces and a fresh /proc."),
        );
    }
    let fix = if p.apparmor.restricts_userns {
        gettext("AppArmor blocks them: see the AppArmor line.")
    } else if p.userns_sysctl.max_user_namespaces == Some(0) {
        gettext("Allow them: sudo sysctl -w user.max_user_namespaces=15000")
    } else if p.userns_sysctl.unprivileged_userns_clone == Some(0) {
        gettext("Allow them: sudo sysctl -w kernel.unprivileged_userns_clone=1")
    } else {
        gettext("Use a kernel with user namespaces (CONFIG_USER_NS); inside a container, the container must allow creating namespaces and must not mask parts of /proc.")
    };
    Check::new(
        "userns",
        title,
        Status::Missing,
        gettext("Airlock cannot build a sandbox without them, so it will not run tasks."),
    )
    .fix(fix)
    .detail(p.userns.error.clone())
}

fn apparmor(p: &Probes) -> Check {
    let title = gettext("AppArmor");
    if !p.apparmor.restricts_userns {
        return Check::new(
            "apparmor",
            title,
            Status::Ok,
            gettext("No AppArmor policy restricts user namespaces."),
        );
    }
    if p.userns.ok {
        return Check::new(
            "apparmor",
            title,
            Status::Ok,
            gettext("AppArmor restricts unprivileged user namespaces, but allows Airlock to create them."),
        );
    }
    let args = [("profile", APPARMOR_PROFILE)];
    let fix = if p.apparmor.profile_installed {
        gettext_f(
            "Load Airlock's profile: sudo apparmor_parser -r {profile} (it covers the installed airlock binary, not a development build).",
            &args,
        )
    } else {
        gettext_f(
            "Install Airlock with meson, which installs the AppArmor profile {profile}, then load it: sudo apparmor_parser -r {profile}",
            &args,
        )
    };
    Check::new(
        "apparmor",
        title,
        Status::Missing,
        gettext(
            "AppArmor restricts unprivileged user namespaces and stops Airlock from creating them.",
        ),
    )
    .fix(fix)
}

fn overlay(p: &Probes) -> Check {
    let title = gettext("Overlay file system in a user namespace");
    let o = &p.overlay;
    let tasks = o.state_dir.join("tasks");
    let tasks = tasks.display().to_string();
    let fs = o.state_fs.clone().unwrap_or_else(|| "?".to_owned());
    if o.ok {
        let whiteout = match o.whiteout {
            Some(super::Whiteout::Xattr) => "xattr",
            _ => "char-device",
        };
        return Check::new(
            "overlay",
            title,
            Status::Ok,
            gettext_f(
                "Read-write folders are overlays: an agent's changes go to {dir} and reach your files only after you approve them.",
                &[("dir", &tasks)],
            ),
        )
        .detail(Some(format!("upper layers on {fs}; {whiteout} whiteouts")));
    }
    let state = o.state_dir.display().to_string();
    let fix = if !o.state_dir_writable {
        gettext_f(
            "Airlock cannot write in its state folder {dir}: make it a folder you can write, or set XDG_STATE_HOME to one.",
            &[("dir", &state)],
        )
    } else if !p.userns.ok {
        gettext("Fix user namespaces first.")
    } else {
        match o.state_fs.as_deref() {
            Some("tmpfs") => gettext_f(
                "The state folder {dir} is on tmpfs, which takes user extended attributes only from Linux 6.6: set XDG_STATE_HOME to a folder on ext4, btrfs or xfs.",
                &[("dir", &state)],
            ),
            Some(other @ ("overlay" | "nfs" | "fuse")) => gettext_f(
                "The state folder {dir} is on {fs}, which cannot hold an overlay's upper layer: set XDG_STATE_HOME to a folder on ext4, btrfs or xfs.",
                &[("dir", &state), ("fs", other)],
            ),
            _ => gettext_f(
                "Overlayfs in a user namespace needs Linux 5.11 or later and a state folder ({dir}) on a file system with user extended attributes, such as ext4, btrfs or xfs.",
                &[("dir", &state)],
            ),
        }
    };
    Check::new(
        "overlay",
        title,
        Status::Missing,
        gettext(
            "Airlock cannot keep an agent's writes away from your files, so it will not run tasks.",
        ),
    )
    .fix(fix)
    .detail(o.error.clone())
}

fn seccomp(p: &Probes) -> Check {
    let title = gettext("Seccomp filter");
    if p.seccomp.ok {
        return Check::new(
            "seccomp",
            title,
            Status::Ok,
            gettext("A system-call filter blocks what agents never need: ptrace, mount, bpf, new namespaces, io_uring, keyrings and more."),
        );
    }
    Check::new(
        "seccomp",
        title,
        Status::Missing,
        gettext("Airlock will not run tasks without a system-call filter."),
    )
    .fix(gettext(
        "Use a kernel with seccomp filters (CONFIG_SECCOMP_FILTER); inside a container, allow the seccomp() system call.",
    ))
    .detail(p.seccomp.error.clone())
}

fn seccomp_notify(p: &Probes) -> Check {
    let title = gettext("Seccomp user notification");
    let n = &p.seccomp_notify;
    if n.listener && n.continue_flag {
        return Check::new(
            "seccomp_notify",
            title,
            Status::Ok,
            gettext("Blocked system calls and file access outside the granted folders are reported live."),
        );
    }
    let consequence = if n.listener {
        gettext("Blocked system calls are reported live, but file access outside the granted folders is not: letting a watched call continue needs Linux 5.5.")
    } else {
        gettext("Blocked system calls still fail, but denials are then invisible: nothing reports them.")
    };
    Check::new("seccomp_notify", title, Status::Warning, consequence)
        .fix(gettext("Use Linux 5.5 or later."))
        .detail(n.error.clone())
}

/// What each Landlock ABI version adds that Airlock uses, in order. (ABI
/// 4's TCP port rules are not used: the sandbox's network namespace
/// confines its connections.)
fn landlock_features() -> [(u32, String); 5] {
    [
        (1, gettext("file access rules")),
        (2, gettext("moving files between folders (refer)")),
        (3, gettext("truncation")),
        (5, gettext("device ioctl rules")),
        (6, gettext("abstract unix socket and signal scoping")),
    ]
}

fn landlock(p: &Probes) -> Check {
    let title = gettext("Landlock");
    let l = &p.landlock;
    if l.abi >= 1 {
        let (have, lack): (Vec<_>, Vec<_>) = landlock_features()
            .into_iter()
            .partition(|(abi, _)| *abi <= l.abi);
        let names = |v: Vec<(u32, String)>| {
            v.into_iter()
                .map(|(_, name)| name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let detail = (!lack.is_empty()).then(|| {
            gettext_f(
                "not available at this ABI: {features}",
                &[("features", &names(lack))],
            )
        });
        return Check::new(
            "landlock",
            title,
            Status::Ok,
            gettext_f(
                "Landlock ABI {abi} puts a second, kernel-enforced wall around the granted folders: {features}.",
                &[("abi", &l.abi.to_string()), ("features", &names(have))],
            ),
        )
        .detail(detail);
    }
    let fix = if l.errno == Some(libc::EOPNOTSUPP) {
        gettext("Landlock is built into this kernel but switched off: add landlock to the lsm= kernel boot parameter.")
    } else {
        gettext("Use a kernel with Landlock (Linux 5.13 or later, CONFIG_SECURITY_LANDLOCK).")
    };
    Check::new(
        "landlock",
        title,
        Status::Warning,
        gettext("Landlock is not available: the mounts alone decide what an agent can reach, with no second wall."),
    )
    .fix(fix)
    .detail(l.lsm.as_ref().map(|lsm| {
        gettext_f("active security modules: {lsm}", &[("lsm", lsm)])
    }))
}

fn landlock_audit(p: &Probes) -> Check {
    let kernel = match p.landlock.abi {
        0 => None,
        1..=6 => Some(gettext("This kernel does not log Landlock denials.")),
        _ => Some(gettext(
            "This kernel logs Landlock denials to the audit log, which an unprivileged program cannot read.",
        )),
    };
    // When the watch is missing, the seccomp notification line carries the
    // warning; this line only explains where file denials go.
    let (status, watch) = if p.seccomp_notify.listener && p.seccomp_notify.continue_flag {
        (
            Status::Ok,
            gettext("Airlock reports file access outside the granted folders with its own seccomp file watch."),
        )
    } else {
        (
            Status::Info,
            gettext("File access outside the granted folders is blocked but not reported."),
        )
    };
    let consequence = match kernel {
        Some(kernel) => format!("{kernel} {watch}"),
        None => watch,
    };
    Check::new(
        "landlock_audit",
        gettext("File denial reports"),
        status,
        consequence,
    )
}

fn limits(p: &Probes) -> Check {
    let title = gettext("Resource limits");
    let cg = &p.cgroup;
    let needed = ["memory", "pids", "cpu"];
    let lacking: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !cg.controllers.iter().any(|have| have == c))
        .collect();
    let folder = cg.folder.as_ref().map(|f| f.display().to_string());
    // Scopes get the controllers our own cgroup has, no more.
    if let (Service::Answered { version }, true) = (&p.systemd_user, lacking.is_empty()) {
        return Check::new(
            "limits",
            title,
            Status::Ok,
            gettext_f(
                "A systemd transient scope (systemd {version}) limits memory, processes and CPU share for the whole task.",
                &[("version", version)],
            ),
        );
    }
    if let (true, true, Some(folder)) = (cg.writable, lacking.is_empty(), &folder) {
        return Check::new(
            "limits",
            title,
            Status::Ok,
            gettext_f(
                "The cgroup v2 folder {folder} limits memory, processes and CPU share for the whole task.",
                &[("folder", folder)],
            ),
        );
    }
    let systemd = match &p.systemd_user {
        Service::Answered { version } => gettext_f(
            "the user systemd manager (systemd {version}) makes each task a scope, without the {controllers} controllers",
            &[("version", version), ("controllers", &lacking.join(", "))],
        ),
        Service::NotChecked => gettext("no user systemd manager (no session bus)"),
        Service::NoAnswer { error } => gettext_f(
            "no user systemd manager on the session bus ({error})",
            &[("error", error)],
        ),
    };
    let cgroup = match (&cg.mount, &folder) {
        (None, _) => gettext("no cgroup v2 mounted"),
        (Some(_), None) => gettext("this process's cgroup v2 folder was not found"),
        (Some(_), Some(folder)) if !cg.writable => gettext_f(
            "cgroup v2 folder {folder} is not writable",
            &[("folder", folder)],
        ),
        (Some(_), Some(folder)) => gettext_f(
            "cgroup v2 folder {folder} lacks the {controllers} controllers",
            &[("folder", folder), ("controllers", &lacking.join(", "))],
        ),
    };
    let fix = if cg.mount.is_some() && cg.v1_mounted && !lacking.is_empty() {
        gettext("This machine mounts cgroups in hybrid mode, which keeps the memory, pids and cpu controllers in cgroup v1: boot with systemd.unified_cgroup_hierarchy=1.")
    } else {
        gettext("Run Airlock in a desktop session with a systemd user manager, or delegate a cgroup v2 folder with the memory, pids and cpu controllers to your user.")
    };
    Check::new(
        "limits",
        title,
        Status::Warning,
        gettext("Limits fall back to rlimits, which are weaker: memory is capped per process rather than for the whole task, the process cap counts every process of the task's user, and there is no CPU share."),
    )
    .fix(fix)
    .detail(Some(format!("{systemd}; {cgroup}")))
}

fn session_bus(p: &Probes) -> Check {
    let title = gettext("Session bus");
    match &p.session_bus {
        SessionBus::Connected => Check::new(
            "session_bus",
            title,
            Status::Ok,
            gettext("Agents can ask Airlock for tasks over D-Bus, and Airlock can show notifications."),
        ),
        SessionBus::Unavailable { error } => Check::new(
            "session_bus",
            title,
            Status::Info,
            gettext("No session bus: the command line works, but agents cannot reach Airlock over D-Bus and there are no portal dialogs, notifications or tray icon."),
        )
        .detail(Some(error.clone())),
    }
}

fn not_checked() -> String {
    gettext("Not checked: there is no session bus.")
}

fn portal(p: &Probes) -> Check {
    let title = gettext("Desktop portal");
    let backend = || {
        gettext(
            "Install a portal backend such as xdg-desktop-portal-gnome or xdg-desktop-portal-gtk.",
        )
    };
    match &p.portal {
        Portal::FileChooser { version } => Check::new(
            "portal",
            title,
            Status::Ok,
            gettext_f(
                "Folders are chosen in your desktop's file chooser (xdg-desktop-portal, FileChooser version {version}).",
                &[("version", &version.to_string())],
            ),
        ),
        Portal::NotChecked => Check::new("portal", title, Status::Info, not_checked()),
        Portal::NoFileChooser { error } => Check::new(
            "portal",
            title,
            Status::Info,
            gettext("xdg-desktop-portal answers but offers no file chooser: folders are granted by path."),
        )
        .fix(backend())
        .detail(Some(error.clone())),
        Portal::NoAnswer { error } => Check::new(
            "portal",
            title,
            Status::Info,
            gettext("xdg-desktop-portal does not answer: folders are granted by path, without the file chooser."),
        )
        .fix(gettext_f(
            "Install xdg-desktop-portal. {backend}",
            &[("backend", &backend())],
        ))
        .detail(Some(error.clone())),
    }
}

fn tray(p: &Probes) -> Check {
    let title = gettext("Tray icon");
    let absent = gettext("No tray host: the window and notifications show task status instead.");
    let extension = gettext(
        "On GNOME, the “AppIndicator and KStatusNotifierItem Support” extension provides a tray host.",
    );
    match &p.tray {
        Tray::Watcher {
            host_registered: true,
        } => Check::new(
            "tray",
            title,
            Status::Ok,
            gettext("A tray host is present: Airlock shows a status icon."),
        ),
        Tray::Watcher {
            host_registered: false,
        } => Check::new(
            "tray",
            title,
            Status::Info,
            gettext("A StatusNotifierWatcher runs but no tray host is registered, so the status icon would not be shown; the window and notifications show task status instead."),
        ),
        Tray::NoWatcher => Check::new("tray", title, Status::Info, absent).fix(extension),
        Tray::NoAnswer { error } => Check::new("tray", title, Status::Info, absent)
            .fix(extension)
            .detail(Some(error.clone())),
        Tray::NotChecked => Check::new("tray", title, Status::Info, not_checked()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::doctor::probe::{
        AppArmor, Cgroup, Landlock, Outcome, Overlay, SeccompNotify, UsernsSysctl,
    };
    use crate::doctor::Whiteout;

    /// A machine where everything works, as an ordinary desktop user.
    fn all_good() -> Probes {
        Probes {
            uid: 1000,
            userns: Outcome {
                ok: true,
                error: None,
            },
            userns_sysctl: UsernsSysctl {
                max_user_namespaces: Some(15000),
                unprivileged_userns_clone: None,
            },
            apparmor: AppArmor::default(),
            overlay: Overlay {
                ok: true,
                error: None,
                whiteout: Some(Whiteout::CharDevice),
                state_dir: PathBuf::from("/home/u/.local/state/airlock"),
                state_fs: Some("ext4".into()),
                state_dir_writable: true,
            },
            landlock: Landlock {
                abi: 6,
                errno: None,
                lsm: Some("lockdown,capability,landlock,yama".into()),
            },
            seccomp: Outcome {
                ok: true,
                error: None,
            },
            seccomp_notify: SeccompNotify {
                listener: true,
                continue_flag: true,
                error: None,
            },
            cgroup: Cgroup {
                mount: Some("/sys/fs/cgroup".into()),
                v1_mounted: false,
                folder: Some("/sys/fs/cgroup/user.slice/user-1000.slice/app.scope".into()),
                writable: true,
                controllers: vec!["cpu".into(), "memory".into(), "pids".into()],
            },
            session_bus: SessionBus::Connected,
            systemd_user: Service::Answered {
                version: "252.38".into(),
            },
            portal: Portal::FileChooser { version: 3 },
            tray: Tray::Watcher {
                host_registered: true,
            },
        }
    }

    fn failed(error: &str) -> Outcome {
        Outcome {
            ok: false,
            error: Some(error.into()),
        }
    }

    fn status(r: &Report, id: &str) -> Status {
        r.check(id).unwrap().status
    }

    fn consequence(r: &Report, id: &str) -> String {
        r.check(id).unwrap().consequence.clone()
    }

    fn fix(r: &Report, id: &str) -> String {
        r.check(id).unwrap().fix.clone().unwrap_or_default()
    }

    #[test]
    fn everything_present_runs_with_every_layer_ok() {
        let r = Report::from_probes(&all_good());
        assert!(r.can_run());
        for c in &r.checks {
            assert_eq!(c.status, Status::Ok, "{}: {}", c.id, c.consequence);
            assert!(c.fix.is_none(), "{}", c.id);
        }
        assert!(consequence(&r, "user").contains("uid 1000"));
        assert!(consequence(&r, "overlay").contains("/home/u/.local/state/airlock/tasks"));
        assert!(consequence(&r, "limits").contains("systemd 252.38"));
        assert!(consequence(&r, "landlock").contains("abstract unix socket"));
        assert!(r.check("landlock").unwrap().detail.is_none());
        assert!(r.summary().contains("can run"));
    }

    #[test]
    fn every_check_has_a_unique_id() {
        let r = Report::from_probes(&all_good());
        let mut ids: Vec<_> = r.checks.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), r.checks.len());
    }

    #[test]
    fn root_runs_tasks_as_nobody() {
        let mut p = all_good();
        p.uid = 0;
        let r = Report::from_probes(&p);
        assert!(r.can_run());
        assert_eq!(status(&r, "user"), Status::Ok);
        assert!(consequence(&r, "user").contains("65534"));
        assert!(consequence(&r, "user").contains("never as root"));
    }

    #[test]
    fn missing_user_namespaces_stop_airlock() {
        let mut p = all_good();
        p.userns = failed("unshare(CLONE_NEWUSER): EPERM");
        let r = Report::from_probes(&p);
        assert!(!r.can_run());
        assert_eq!(status(&r, "userns"), Status::Missing);
        assert!(consequence(&r, "userns").contains("will not run tasks"));
        assert_eq!(
            r.check("userns").unwrap().detail.as_deref(),
            Some("unshare(CLONE_NEWUSER): EPERM")
        );
        assert!(fix(&r, "userns").contains("CONFIG_USER_NS"));
        assert!(r.summary().contains("cannot run"));
        // Without AppArmor in the way, that line stays fine.
        assert_eq!(status(&r, "apparmor"), Status::Ok);
    }

    #[test]
    fn user_namespace_sysctls_name_their_fix() {
        let mut p = all_good();
        p.userns = failed("unshare(CLONE_NEWUSER): ENOSPC");
        p.userns_sysctl.max_user_namespaces = Some(0);
        let r = Report::from_probes(&p);
        assert!(fix(&r, "userns").contains("user.max_user_namespaces"));

        p.userns_sysctl = UsernsSysctl {
            max_user_namespaces: Some(15000),
            unprivileged_userns_clone: Some(0),
        };
        let r = Report::from_probes(&p);
        assert!(fix(&r, "userns").contains("kernel.unprivileged_userns_clone=1"));
    }

    #[test]
    fn apparmor_restriction_without_profile_names_meson_and_apparmor_parser() {
        let mut p = all_good();
        p.userns = failed("unshare(CLONE_NEWNS): EPERM");
        p.apparmor = AppArmor {
            restricts_userns: true,
            profile_installed: false,
        };
        let r = Report::from_probes(&p);
        assert!(!r.can_run());
        assert_eq!(status(&r, "apparmor"), Status::Missing);
        let f = fix(&r, "apparmor");
        assert!(f.contains("meson"));
        assert!(f.contains("sudo apparmor_parser -r /etc/apparmor.d/io.github.airlock.Airlock"));
        assert!(fix(&r, "userns").contains("AppArmor"));
    }

    #[test]
    fn apparmor_restriction_with_profile_installed_says_load_it() {
        let mut p = all_good();
        p.userns = failed("unshare(CLONE_NEWNS): EPERM");
        p.apparmor = AppArmor {
            restricts_userns: true,
            profile_installed: true,
        };
        let r = Report::from_probes(&p);
        assert_eq!(status(&r, "apparmor"), Status::Missing);
        let f = fix(&r, "apparmor");
        assert!(f.contains("apparmor_parser -r"));
        assert!(!f.contains("meson"));
    }

    #[test]
    fn apparmor_restriction_that_lets_us_through_is_fine() {
        let mut p = all_good();
        p.apparmor = AppArmor {
            restricts_userns: true,
            profile_installed: true,
        };
        let r = Report::from_probes(&p);
        assert!(r.can_run());
        assert_eq!(status(&r, "apparmor"), Status::Ok);
    }

    #[test]
    fn missing_overlay_stops_airlock_and_names_the_file_system() {
        let mut p = all_good();
        p.overlay.ok = false;
        p.overlay.whiteout = None;
        p.overlay.error = Some("mount overlay with userxattr: EINVAL".into());
        p.overlay.state_fs = Some("tmpfs".into());
        let r = Report::from_probes(&p);
        assert!(!r.can_run());
        assert_eq!(status(&r, "overlay"), Status::Missing);
        assert!(consequence(&r, "overlay").contains("will not run tasks"));
        assert!(fix(&r, "overlay").contains("Linux 6.6"));
        assert!(fix(&r, "overlay").contains("XDG_STATE_HOME"));

        p.overlay.state_fs = Some("overlay".into());
        let r = Report::from_probes(&p);
        assert!(fix(&r, "overlay").contains("is on overlay"));

        p.overlay.state_fs = Some("ext4".into());
        let r = Report::from_probes(&p);
        assert!(fix(&r, "overlay").contains("Linux 5.11"));

        p.userns = failed("unshare(CLONE_NEWUSER): EPERM");
        let r = Report::from_probes(&p);
        assert!(fix(&r, "overlay").contains("user namespaces first"));

        p.overlay.state_dir_writable = false;
        let r = Report::from_probes(&p);
        let f = fix(&r, "overlay");
        assert!(f.contains("cannot write in its state folder /home/u/.local/state/airlock"));
        assert!(f.contains("XDG_STATE_HOME"));
    }

    #[test]
    fn missing_seccomp_stops_airlock() {
        let mut p = all_good();
        p.seccomp = failed("install the seccomp filter: EINVAL");
        p.seccomp_notify = SeccompNotify {
            listener: false,
            continue_flag: false,
            error: Some("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER): EINVAL".into()),
        };
        let r = Report::from_probes(&p);
        assert!(!r.can_run());
        assert_eq!(status(&r, "seccomp"), Status::Missing);
        assert!(fix(&r, "seccomp").contains("CONFIG_SECCOMP_FILTER"));
    }

    #[test]
    fn missing_user_notification_is_a_warning_about_invisible_denials() {
        let mut p = all_good();
        p.seccomp_notify = SeccompNotify {
            listener: false,
            continue_flag: false,
            error: Some("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER): EINVAL".into()),
        };
        let r = Report::from_probes(&p);
        assert!(r.can_run());
        assert_eq!(status(&r, "seccomp_notify"), Status::Warning);
        assert!(consequence(&r, "seccomp_notify").contains("denials are then invisible"));
        assert_eq!(status(&r, "landlock_audit"), Status::Info);
        assert!(consequence(&r, "landlock_audit").contains("not reported"));
    }

    #[test]
    fn user_notification_without_continue_loses_only_the_file_watch() {
        let mut p = all_good();
        p.seccomp_notify.continue_flag = false;
        let r = Report::from_probes(&p);
        assert!(r.can_run());
        assert_eq!(status(&r, "seccomp_notify"), Status::Warning);
        let c = consequence(&r, "seccomp_notify");
        assert!(c.contains("Blocked system calls are reported live"));
        assert!(c.contains("file access outside the granted folders is not"));
        assert!(consequence(&r, "landlock_audit").contains("not reported"));
    }

    #[test]
    fn missing_landlock_is_a_warning_and_mounts_still_enforce() {
        let mut p = all_good();
        p.landlock = Landlock {
            abi: 0,
            errno: Some(libc::EOPNOTSUPP),
            lsm: Some("capability,apparmor".into()),
        };
        let r = Report::from_probes(&p);
        assert!(r.can_run());
        assert_eq!(status(&r, "landlock"), Status::Warning);
        assert!(consequence(&r, "landlock").contains("the mounts alone"));
        assert!(fix(&r, "landlock").contains("lsm="));
        assert!(r
            .check("landlock")
            .unwrap()
            .detail
            .as_deref()
            .unwrap()
            .contains("capability,apparmor"));

        p.landlock.errno = Some(libc::ENOSYS);
        let r = Report::from_probes(&p);
        assert!(fix(&r, "landlock").contains("Linux 5.13"));
    }

    #[test]
    fn landlock_lists_what_each_abi_adds() {
        let mut p = all_good();
        p.landlock.abi = 3;
        let r = Report::from_probes(&p);
        let c = consequence(&r, "landlock");
        assert!(c.contains("ABI 3"));
        assert!(c.contains("file access rules"));
        assert!(c.contains("truncation"));
        let d = r.check("landlock").unwrap().detail.clone().unwrap();
        assert!(d.contains("device ioctl rules"));
        assert!(d.contains("abstract unix socket"));
    }

    #[test]
    fn landlock_audit_logging_is_unreadable_and_the_file_watch_covers_it() {
        let mut p = all_good();
        p.landlock.abi = 7;
        let r = Report::from_probes(&p);
        let c = consequence(&r, "landlock_audit");
        assert_eq!(status(&r, "landlock_audit"), Status::Ok);
        assert!(c.contains("audit log"));
        assert!(c.contains("seccomp file watch"));

        p.landlock.abi = 5;
        let r = Report::from_probes(&p);
        assert!(consequence(&r, "landlock_audit").contains("does not log"));
    }

    #[test]
    fn delegated_cgroup_enforces_limits_without_systemd() {
        let mut p = all_good();
        p.systemd_user = Service::NoAnswer {
            error: "org.freedesktop.DBus.Error.ServiceUnknown".into(),
        };
        let r = Report::from_probes(&p);
        assert_eq!(status(&r, "limits"), Status::Ok);
        assert!(consequence(&r, "limits").contains("app.scope"));
    }

    #[test]
    fn no_systemd_and_no_cgroup_falls_back_to_rlimits() {
        let mut p = all_good();
        p.systemd_user = Service::NotChecked;
        p.cgroup.writable = false;
        let r = Report::from_probes(&p);
        assert!(r.can_run());
        assert_eq!(status(&r, "limits"), Status::Warning);
        let c = consequence(&r, "limits");
        assert!(c.contains("rlimits"));
        assert!(c.contains("per process"));
        assert!(c.contains("no CPU share"));
        assert!(r
            .check("limits")
            .unwrap()
            .detail
            .clone()
            .unwrap()
            .contains("not writable"));
        assert!(fix(&r, "limits").contains("delegate"));
    }

    #[test]
    fn a_user_manager_without_controllers_is_not_called_enforcing() {
        let mut p = all_good();
        p.cgroup.controllers = vec!["hugetlb".into()];
        p.cgroup.v1_mounted = true;
        let r = Report::from_probes(&p);
        assert_eq!(status(&r, "limits"), Status::Warning);
        let detail = r.check("limits").unwrap().detail.clone().unwrap();
        assert!(
            detail.contains("makes each task a scope, without the memory, pids, cpu controllers"),
            "{detail}"
        );
    }

    #[test]
    fn hybrid_cgroups_without_controllers_fall_back_and_say_why() {
        let mut p = all_good();
        p.systemd_user = Service::NotChecked;
        p.cgroup = Cgroup {
            mount: Some("/sys/fs/cgroup/unified".into()),
            v1_mounted: true,
            folder: Some("/sys/fs/cgroup/unified".into()),
            writable: true,
            controllers: vec!["hugetlb".into()],
        };
        let r = Report::from_probes(&p);
        assert_eq!(status(&r, "limits"), Status::Warning);
        assert!(r
            .check("limits")
            .unwrap()
            .detail
            .clone()
            .unwrap()
            .contains("lacks the memory, pids, cpu controllers"));
        assert!(fix(&r, "limits").contains("systemd.unified_cgroup_hierarchy=1"));

        p.cgroup.mount = None;
        p.cgroup.folder = None;
        let r = Report::from_probes(&p);
        assert!(r
            .check("limits")
            .unwrap()
            .detail
            .clone()
            .unwrap()
            .contains("no cgroup v2"));
    }

    #[test]
    fn no_session_bus_is_its_own_line_and_only_informational() {
        let mut p = all_good();
        p.session_bus = SessionBus::Unavailable {
            error: "DBUS_SESSION_BUS_ADDRESS is not set".into(),
        };
        p.systemd_user = Service::NotChecked;
        p.portal = Portal::NotChecked;
        p.tray = Tray::NotChecked;
        let r = Report::from_probes(&p);
        assert!(r.can_run());
        assert_eq!(status(&r, "session_bus"), Status::Info);
        assert!(consequence(&r, "session_bus").contains("No session bus"));
        assert_eq!(status(&r, "portal"), Status::Info);
        assert!(consequence(&r, "portal").contains("no session bus"));
        assert_eq!(status(&r, "tray"), Status::Info);
        // The limits still come from the delegated cgroup.
        assert_eq!(status(&r, "limits"), Status::Ok);
    }

    #[test]
    fn missing_portal_and_tray_are_informational() {
        let mut p = all_good();
        p.portal = Portal::NoAnswer {
            error: "org.freedesktop.DBus.Error.ServiceUnknown".into(),
        };
        p.tray = Tray::NoWatcher;
        let r = Report::from_probes(&p);
        assert!(r.can_run());
        assert_eq!(status(&r, "portal"), Status::Info);
        assert!(consequence(&r, "portal").contains("does not answer"));
        assert!(fix(&r, "portal").contains("Install xdg-desktop-portal."));
        assert!(fix(&r, "portal").contains("xdg-desktop-portal-gnome"));
        assert_eq!(status(&r, "tray"), Status::Info);
        assert!(fix(&r, "tray").contains("AppIndicator"));

        p.portal = Portal::NoFileChooser {
            error: "No such interface".into(),
        };
        p.tray = Tray::Watcher {
            host_registered: false,
        };
        let r = Report::from_probes(&p);
        assert_eq!(status(&r, "portal"), Status::Info);
        assert!(consequence(&r, "portal").contains("no file chooser"));
        assert!(fix(&r, "portal").contains("backend"));
        assert_eq!(status(&r, "tray"), Status::Info);
        assert!(consequence(&r, "tray").contains("no tray host is registered"));
    }

    #[test]
    fn only_missing_layers_stop_airlock() {
        // Every optional layer gone at once still runs.
        let mut p = all_good();
        p.landlock = Landlock::default();
        p.seccomp_notify = SeccompNotify::default();
        p.systemd_user = Service::NotChecked;
        p.cgroup = Cgroup::default();
        p.session_bus = SessionBus::Unavailable {
            error: "no bus".into(),
        };
        p.portal = Portal::NotChecked;
        p.tray = Tray::NotChecked;
        let r = Report::from_probes(&p);
        assert!(r.can_run());
        assert!(r.checks.iter().all(|c| c.status != Status::Missing));
    }

    #[test]
    fn report_serialises_with_lowercase_statuses() {
        let mut p = all_good();
        p.landlock.abi = 0;
        let json = serde_json::to_value(Report::from_probes(&p)).unwrap();
        let landlock = json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "landlock")
            .unwrap();
        assert_eq!(landlock["status"], "warning");
    }
}
