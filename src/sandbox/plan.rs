//! Supervisor side: turns a policy into a checked [`SandboxSpec`] — grants
//! resolved and validated, overlay layers created, hidden paths expanded,
//! environment scrubbed — so that the helper only carries out a plan.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::seccomp;
use super::spec::{RwMount, SandboxBase, SandboxSpec, SandboxUser};
use crate::policy::{Access, Policy, SeccompChoice};
use crate::task::{RwLayer, TaskDir};
use crate::Error;

/// The unprivileged identity a task runs as when Airlock itself is root.
pub const ROOT_FALLBACK_ID: u32 = 65534;

/// Folders a grant may not be or lie in: the sandbox supplies its own
/// read-only system, `/proc` and `/dev`.
const SYSTEM_PREFIXES: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/dev",
    "/sys", "/boot",
];

/// Folders of the desktop's sockets and session state: no grant may be
/// inside one or hold one.
const RUNTIME_PREFIXES: &[&str] = &["/run", "/var/run"];
/// The sockets our own environment names: the session bus, the ssh agent,
/// a container engine, the sound server, the Wayland display. Hidden
/// wherever a grant would show them: a task allowed unix sockets could
/// otherwise use the bus (and eavesdrop on it) or the keys of the agent.
fn env_sockets() -> Vec<PathBuf> {
    let var = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    let mut v = Vec::new();
    if let Some(addr) = var("DBUS_SESSION_BUS_ADDRESS") {
        // unix:path=/run/user/1000/bus,guid=…;unix:path=… (several may follow)
        for part in addr.split([';', ',']) {
            if let Some(p) = part
                .strip_prefix("unix:path=")
                .or_else(|| part.strip_prefix("path="))
            {
                v.push(PathBuf::from(p));
            }
        }
    }
    for (key, prefix) in [
        ("SSH_AUTH_SOCK", ""),
        ("DOCKER_HOST", "unix://"),
        ("PULSE_SERVER", "unix:"),
    ] {
        if let Some(p) = var(key).as_deref().and_then(|s| s.strip_prefix(prefix)) {
            v.push(PathBuf::from(p));
        }
    }
    if let Some(w) = var("WAYLAND_DISPLAY") {
        let p = PathBuf::from(&w);
        if p.is_absolute() {
            v.push(p);
        } else if let Some(rt) = var("XDG_RUNTIME_DIR") {
            v.push(Path::new(&rt).join(p));
        }
    }
    v.retain(|p| p.is_absolute());
    v
}

/// Environment variables passed through from the caller; everything else
/// (display, session bus, agent sockets, tokens) stays outside.
fn passes_through(key: &str) -> bool {
    matches!(
        key,
        "PATH" | "LANG" | "LANGUAGE" | "TERM" | "TZ" | "COLORTERM" | "NO_COLOR"
    ) || key.starts_with("LC_")
}

/// `p` with `.` dropped and each `..` taking away the name before it, by
/// the names alone (`/..` stays `/`).
pub fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if out.parent().is_some() {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Resolves and checks one grant path.
fn resolve_grant(path: &Path, access: Access) -> Result<PathBuf, Error> {
    let real = path.canonicalize().map_err(|e| {
        Error::Invalid(format!(
            "--grant {}: {e} (grant a folder that exists)",
            path.display()
        ))
    })?;
    if real == Path::new("/") {
        return Err(Error::Invalid(
            "--grant /: the whole file system cannot be granted".into(),
        ));
    }
    if let Some(p) = SYSTEM_PREFIXES.iter().find(|p| real.starts_with(p)) {
        return Err(Error::Invalid(format!(
            "--grant {}: {p} is provided read-only by the sandbox itself and cannot be granted",
            real.display()
        )));
    }
    // The desktop's sockets live there (session bus, display, agents): no
    // part of it may be granted, nor a folder that holds it (`/`).
    if let Some(p) = RUNTIME_PREFIXES
        .iter()
        .map(Path::new)
        .find(|p| real.starts_with(p) || p.starts_with(&real))
    {
        return Err(Error::Invalid(format!(
            "--grant {}: {} holds the desktop's sockets (session bus, display, key agents) and cannot be granted; grant a folder of your own",
            real.display(),
            p.display()
        )));
    }
    // Other sessions keep their secrets there (Kerberos tickets, ssh and
    // gpg agents, multiplexers' sockets) under names that appear at any
    // time, which no list made at the start can hide.
    if real == Path::new("/tmp") {
        return Err(Error::Invalid(format!(
            "--grant {}: /tmp as a whole holds other sessions' secrets (Kerberos tickets, ssh agents), which can appear while the task runs; grant the folder inside it that the task needs",
            path.display()
        )));
    }
    if access == Access::Rw && !real.is_dir() {
        return Err(Error::Invalid(format!(
            "--grant {}:rw: read-write grants must be folders (grant the folder that contains the file)",
            real.display()
        )));
    }
    Ok(real)
}

/// The overlay's root folder takes its mode and owner from the upper layer:
/// make them the real folder's, so the agent sees the folder as it is.
fn match_root_of_layer(real: &Path, upper: &Path, outer_root: bool) -> Result<(), Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(real).map_err(|e| Error::io(real, e))?;
    std::fs::set_permissions(upper, std::fs::Permissions::from_mode(meta.mode() & 0o1777))
        .map_err(|e| Error::io(upper, e))?;
    if outer_root {
        std::os::unix::fs::chown(upper, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| Error::io(upper, e))?;
    }
    Ok(())
}

/// Who the agent is inside, and whether Airlock itself runs as root.
fn sandbox_user(real_home: &Path) -> (SandboxUser, bool) {
    let outer_root = nix::unistd::geteuid().is_root();
    let user = if outer_root {
        SandboxUser {
            uid: ROOT_FALLBACK_ID,
            gid: ROOT_FALLBACK_ID,
            name: "airlock".into(),
            home: PathBuf::from("/home/airlock"),
        }
    } else {
        let uid = nix::unistd::getuid();
        let name = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                nix::unistd::User::from_uid(uid)
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .unwrap_or_else(|| "agent".into());
        SandboxUser {
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            name,
            home: real_home
                .canonicalize()
                .unwrap_or_else(|_| real_home.to_path_buf()),
        }
    };
    (user, outer_root)
}

/// The hostname every sandbox has.
const HOSTNAME: &str = "airlock";

/// What the helper may build before the task is planned (see
/// [`SandboxBase`]); creates the folder the root is built in. [`plan`]
/// builds on it.
pub fn base(policy: &Policy, task_dir: &TaskDir) -> Result<SandboxBase, Error> {
    let root_mount = task_dir.root_mount();
    crate::dirs::create_private_dir(&root_mount)?;
    let (user, outer_root) = sandbox_user(&crate::dirs::home_dir());
    Ok(SandboxBase {
        root_mount,
        hostname: HOSTNAME.into(),
        user,
        outer_root,
        tty: policy.tty,
    })
}

/// Builds the plan on `base` (from [`base`]) and creates the task's
/// overlay layers under `task_dir`.
pub fn plan(
    policy: &Policy,
    argv: &[String],
    task_dir: &TaskDir,
    base: &SandboxBase,
) -> Result<(SandboxSpec, Vec<RwLayer>), Error> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(Error::Invalid("no command to run".into()));
    }
    if let Some((key, why)) = policy.limits.problem() {
        return Err(Error::Invalid(format!("{key}: {why}")));
    }
    let real_home = crate::dirs::home_dir();
    let SandboxBase {
        root_mount,
        hostname,
        user,
        outer_root,
        tty,
    } = base.clone();

    // By their real paths: grants are compared canonical.
    let own_dirs = [
        crate::dirs::state_dir(),
        crate::dirs::data_dir(),
        crate::dirs::config_dir(),
    ]
    .map(|d| crate::dirs::canonical_lenient(&d));
    let mut seen = BTreeSet::new();
    let mut ro = Vec::new();
    let mut rw = Vec::new();
    let mut layers = Vec::new();
    let mut grant_ids = Vec::new();
    let mut aliases = Vec::new();
    for g in &policy.grants {
        let real = resolve_grant(&g.path, g.access)?;
        // Granted by a link (a dotfile manager's `~/.gitconfig`): the
        // sandbox shows the link too, not only what it points to.
        if let Ok(cwd) = std::env::current_dir() {
            let given = lexical(&cwd.join(&g.path));
            if given != real && given.is_absolute() {
                aliases.push((given, real.clone()));
            }
        }
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(&real).map_err(|e| Error::io(&real, e))?;
            grant_ids.push(super::spec::GrantId {
                path: real.clone(),
                dev: m.dev(),
                ino: m.ino(),
            });
        }
        if !seen.insert(real.clone()) {
            return Err(Error::Invalid(format!(
                "--grant {}: granted twice; give each folder once",
                real.display()
            )));
        }
        if real.starts_with(task_dir.path()) {
            return Err(Error::Invalid(format!(
                "--grant {}: Airlock's own task folders cannot be granted",
                real.display()
            )));
        }
        match g.access {
            Access::Ro => ro.push(real),
            Access::Rw => {
                // overlayfs refuses an upper layer inside its lower layer.
                if let Some(own) = own_dirs.iter().find(|d| d.starts_with(&real)) {
                    return Err(Error::Invalid(format!(
                        "--grant {}:rw: this folder contains Airlock's own folder {}; grant a folder inside it instead",
                        real.display(),
                        own.display()
                    )));
                }
                let index = layers.len();
                let (upper, work) = (task_dir.upper(index), task_dir.work(index));
                for d in [&upper, &work] {
                    crate::dirs::create_private_dir(d)?;
                }
                match_root_of_layer(&real, &upper, outer_root)?;
                layers.push(RwLayer {
                    path: real.clone(),
                    index,
                });
                rw.push(RwMount {
                    path: real,
                    upper,
                    work,
                });
            }
        }
    }
    // Hidden paths: the built-in list, --deny, Airlock's own folders (a task
    // must not see pending changes, the audit log or agent profiles), and
    // the real targets of any that are symlinks.
    let mut deny: Vec<PathBuf> = policy.denied_paths(&real_home);
    deny.extend(own_dirs.iter().cloned());
    deny.extend(env_sockets());
    let mut expanded = BTreeSet::new();
    let mut canonical = crate::dirs::Canonicalizer::default();
    for d in deny {
        // `a/missing/../b` is `a/b`: the part that does not exist could
        // only be resolved by name, and the sandbox looks names up as they
        // are, `..` never.
        let d = lexical(&d);
        expanded.insert(lexical(&canonical.resolve(&d)));
        expanded.insert(d);
    }

    // A grant in a hidden folder would be covered with the folder: the
    // agent would meet "permission denied" with nothing saying why.
    for g in ro.iter().chain(rw.iter().map(|m| &m.path)) {
        if let Some(d) = expanded.iter().find(|d| g.starts_with(d)) {
            return Err(Error::Invalid(format!(
                "--grant {}: {} is hidden from every task (Airlock's list of secrets and its own folders, or --deny); grant something outside it",
                g.display(),
                d.display()
            )));
        }
    }

    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| passes_through(k))
        .collect();
    // Only PATH entries that exist inside: a search through folders the
    // sandbox hides would show up as attempts to reach them.
    for (k, v) in env.iter_mut() {
        if k == "PATH" {
            let keep: Vec<&str> = v
                .split(':')
                .filter(|d| {
                    let d = Path::new(d);
                    d.is_absolute()
                        && (["/usr", "/bin", "/sbin"].iter().any(|p| d.starts_with(p))
                            || ro.iter().any(|g| d.starts_with(g))
                            || rw.iter().any(|g| d.starts_with(&g.path)))
                })
                .collect();
            *v = keep.join(":");
        }
    }
    env.retain(|(k, v)| k != "PATH" || !v.is_empty());
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env.push(("HOME".into(), user.home.to_string_lossy().into_owned()));
    env.push(("USER".into(), user.name.clone()));
    env.push(("LOGNAME".into(), user.name.clone()));
    env.push(("SHELL".into(), "/bin/sh".into()));
    env.push((
        "AIRLOCK_TASK".into(),
        task_dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ));
    for (k, v) in &policy.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Error::Invalid(format!(
                "--env {k:?}: not a valid variable name"
            )));
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }

    let mut seccomp_profile = match &policy.seccomp {
        SeccompChoice::Default => seccomp::default_profile(),
        SeccompChoice::OciFile(path) => crate::policy::oci::import_file(path)?,
    };
    // Whatever the profile: the rules Airlock's limits rely on, and unless
    // the policy allows them, the unix-socket rules. Calls newer than this
    // build's table answer ENOSYS under an imported profile too: no rule
    // here can guard what it does not know (pass 20A: `file_setattr` set
    // an extent-size hint that filled the disk).
    seccomp_profile.rules.extend(seccomp::limit_rules());
    seccomp_profile.refuse_unknown = true;
    if !policy.unix_sockets {
        seccomp_profile.rules.extend(seccomp::unix_socket_rules());
    }
    let cwd = rw
        .first()
        .map(|m| m.path.clone())
        .or_else(|| ro.first().cloned())
        .unwrap_or_else(|| user.home.clone());
    let spec = SandboxSpec {
        task_id: task_dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        argv: argv.to_vec(),
        env,
        cwd,
        root_mount,
        hostname,
        user,
        outer_root,
        ro,
        rw,
        grant_ids,
        aliases,
        deny: expanded.into_iter().collect(),
        persistent_home: None,
        limits: policy.limits.clone(),
        memory_by_cgroup: false,
        require_landlock: policy.require_landlock,
        seccomp: seccomp_profile,
        resolv_conf: "# This sandbox has no network.\n".into(),
        net: None,
        watch: (!policy.unmonitored).then_some(policy.watch),
        tty,
    };
    Ok((spec, layers))
}
