//! The sandbox's end of the network path (DESIGN.md step 4): the proxy's
//! socket bound in at [`SOCKET_IN_SANDBOX`], the forwarder forked from PID 1
//! before the agent exists, and the agent's environment pointing at it.
//! Without a [`NetSpec`] none of this happens and the sandbox has loopback
//! only.

use nix::sys::resource::{setrlimit, Resource};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::mounts::{under, StepError};
use super::spec::{NetSpec, SandboxSpec};
use super::sys::{
    self, bind_with_attrs, To, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID,
};
use crate::netproxy::{configure_pool_address, run_forwarder, ForwarderConfig, TransparentConfig};

/// Where the proxy's socket appears inside the sandbox.
pub const SOCKET_IN_SANDBOX: &str = "/run/airlock/proxy.sock";

/// Gives `spec` a way out through the proxy described by `net`: proxy
/// variables (both cases, as tools disagree), `NO_PROXY` for the sandbox's
/// own loopback, and the transparent-mode resolver.
pub fn attach(spec: &mut SandboxSpec, net: NetSpec) {
    let url = format!("http://127.0.0.1:{}", net.port);
    let socks = format!("socks5h://127.0.0.1:{}", net.port);
    let vars = [
        ("HTTP_PROXY", url.as_str()),
        ("HTTPS_PROXY", url.as_str()),
        ("ALL_PROXY", socks.as_str()),
        ("NO_PROXY", "localhost,127.0.0.1,::1"),
    ];
    for (k, v) in vars {
        let lower = k.to_ascii_lowercase();
        spec.env.retain(|(ek, _)| ek != k && *ek != lower);
        spec.env.push((k.to_string(), v.to_string()));
        spec.env.push((lower, v.to_string()));
    }
    spec.resolv_conf =
        "# Answered inside the sandbox; every lookup is logged by Airlock.\nnameserver 127.0.0.1\n"
            .into();
    spec.net = Some(net);
}

/// The enforcement report's value for `network`.
pub fn summary(spec: &SandboxSpec) -> &str {
    spec.net.as_ref().map_or("loopback only", |n| &n.summary)
}

/// Before the pivot (called by `mounts::build_root`): binds the proxy's
/// socket into the new root while it is still writable, and lets ports
/// below 1024 be bound without privilege in the sandbox's own network
/// namespace, so the forwarder can listen on 53, 80 and 443 with no
/// capability at all (`/proc/sys` is read-only after the pivot).
pub fn before_pivot(spec: &SandboxSpec, root: &Path) -> Result<(), StepError> {
    let Some(net) = &spec.net else { return Ok(()) };
    let sysctl = Path::new("/proc/sys/net/ipv4/ip_unprivileged_port_start");
    fs::write(sysctl, "0").map_err(|e| StepError {
        stage: "let the forwarder use ports below 1024".into(),
        message: format!("{}: {e}", sysctl.display()),
    })?;
    let dst = under(root, Path::new(SOCKET_IN_SANDBOX));
    let fail = |stage: &str, p: &Path, e: &dyn std::fmt::Display| StepError {
        stage: stage.into(),
        message: format!("{}: {e}", p.display()),
    };
    if let Some(dir) = dst.parent() {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| fail("create /run/airlock", dir, &e))?;
    }
    fs::File::create(&dst).map_err(|e| fail("create mount point", &dst, &e))?;
    bind_with_attrs(
        &net.socket,
        To::Path(&dst),
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
    )
    .map_err(|e| fail("bind the network proxy's socket", &net.socket, &e))
}

/// In PID 1, after the root is built: makes the transparent-mode pool
/// local, forks the forwarder and waits until it listens (nothing without
/// network). The child never returns; PID 1 reaps it with the others.
/// The forwarder's memory: two 128 KiB copy buffers for each of its
/// [`crate::netproxy::MAX_CONNECTIONS`] connections, its runtime, and room.
const FORWARDER_MEMORY: u64 = 160 << 20;

pub fn start_forwarder(spec: &SandboxSpec) -> Result<(), String> {
    let Some(net) = &spec.net else { return Ok(()) };
    configure_pool_address().map_err(|e| e.to_string())?;
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: PID 1 is single-threaded; the child closes descriptors, drops
    // its privileges and becomes the forwarder, which builds its own runtime.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ready_r);
            close_all_but(&ready_w);
            // The forwarder reads what the agent sends: it keeps no
            // capability that could undo the sandbox (unmount a hidden path).
            let dropped = sys::drop_bounding_and_ambient().and_then(|_| sys::clear_capabilities());
            // SAFETY: prctl with integer arguments.
            let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0;
            if let Err(e) =
                dropped.and_then(|_| nnp.then_some(()).ok_or_else(std::io::Error::last_os_error))
            {
                eprintln!("airlock forwarder: cannot drop its privileges: {e}");
                // SAFETY: _exit in a forked child; the parent sees EOF.
                unsafe { libc::_exit(1) }
            }
            // The forwarder holds what the agent opens: the task's own
            // open-file limit (not the supervisor's raised one), or what
            // its most connections need (two descriptors each) where that
            // is more, and memory for their copy buffers, whatever the
            // agent's own memory limit.
            let nofile = spec
                .limits
                .nofile
                .max(2 * (crate::netproxy::MAX_CONNECTIONS as u64 + 16) + 32)
                .min(
                    nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)
                        .map(|(_, hard)| hard)
                        .unwrap_or(u64::MAX),
                );
            for (res, v) in [
                (Resource::RLIMIT_NOFILE, nofile),
                (Resource::RLIMIT_DATA, FORWARDER_MEMORY),
            ] {
                if let Err(e) = setrlimit(res, v, v) {
                    eprintln!("airlock forwarder: cannot limit itself: {e}");
                    // SAFETY: _exit in a forked child; the parent sees EOF.
                    unsafe { libc::_exit(1) }
                }
            }
            run_forwarder(ForwarderConfig {
                socket_path: SOCKET_IN_SANDBOX.into(),
                port: net.port,
                control_token: net.control_token.clone(),
                transparent: Some(TransparentConfig::new(&net.extra_ports)),
                ready: Some(ready_w),
            })
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(ready_w);
            let mut b = [0u8; 1];
            // EOF before the byte: the forwarder failed and said why on stderr.
            match nix::unistd::read(ready_r.as_raw_fd(), &mut b) {
                Ok(1) => Ok(()),
                _ => Err(
                    "the network forwarder did not start (its error is in the task's output)"
                        .into(),
                ),
            }
        }
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// Closes every descriptor above stderr except `keep`: the forwarder must
/// not hold the helper's control socket (the supervisor reads it to its end).
fn close_all_but(keep: &OwnedFd) {
    let k = keep.as_raw_fd() as libc::c_uint;
    // SAFETY: closing descriptors of this freshly forked process only.
    unsafe {
        if k > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, k - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, k + 1, u32::MAX, 0u32);
    }
}
