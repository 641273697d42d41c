//! Test-only entry for the network forwarder: run it inside a fresh user,
//! network and mount namespace (`unshare --user --map-root-user --net
//! --mount`) to do what the sandbox will do, then run one command against it.
//!
//! ```text
//! forwarder_probe SOCKET PORT TOKEN EXTRA_PORTS -- COMMAND [ARGS...]
//! ```
//! `EXTRA_PORTS` is `-` for proxy mode only, or a comma list of ports caught
//! in transparent mode besides 80 and 443 (`+` for none): the probe then
//! makes the pool local on `lo`, puts `nameserver 127.0.0.1` over
//! `/etc/resolv.conf`, and starts the DNS responder. The exit status is the
//! command's.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{exit, Command};

use airlock::netproxy::{
    configure_pool_address, run_forwarder, ForwarderConfig, TransparentConfig,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(sep) = args.iter().position(|a| a == "--") else {
        eprintln!("usage: forwarder_probe SOCKET PORT TOKEN EXTRA_PORTS -- COMMAND [ARGS...]");
        exit(2)
    };
    if sep != 5 || sep + 1 >= args.len() {
        eprintln!("usage: forwarder_probe SOCKET PORT TOKEN EXTRA_PORTS -- COMMAND [ARGS...]");
        exit(2)
    }
    let port: u16 = args[2].parse().expect("PORT is a number");
    let transparent = match args[4].as_str() {
        "-" => None,
        "+" => Some(TransparentConfig::new(&[])),
        list => Some(TransparentConfig::new(
            &list
                .split(',')
                .map(|p| p.parse().expect("EXTRA_PORTS are numbers"))
                .collect::<Vec<u16>>(),
        )),
    };
    if transparent.is_some() {
        configure_pool_address().expect("configure the pool address");
        // Unique per run and user: a file left in /tmp by another user's run
        // with a reused pid must not be in the way.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let conf = std::env::temp_dir().join(format!(
            "forwarder-probe-resolv-{}-{}-{nanos}",
            nix::unistd::getuid(),
            std::process::id()
        ));
        std::fs::write(&conf, "nameserver 127.0.0.1\n").expect("write resolv.conf");
        nix::mount::mount(
            Some(&conf),
            "/etc/resolv.conf",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind resolv.conf (run under unshare --mount)");
    } else {
        // Proxy mode still needs loopback up, as the sandbox does.
        bring_lo_up();
    }

    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors we own from here on.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created.
    let (mut ready_r, ready_w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };

    // SAFETY: the process is single-threaded here; the child only calls
    // run_forwarder, which starts its own runtime.
    match unsafe { libc::fork() } {
        -1 => panic!("fork failed"),
        0 => {
            drop(ready_r);
            run_forwarder(ForwarderConfig {
                socket_path: PathBuf::from(&args[1]),
                port,
                control_token: args[3].clone(),
                transparent,
                ready: Some(ready_w),
            })
        }
        child => {
            drop(ready_w);
            let mut b = [0u8; 1];
            if ready_r.read(&mut b).unwrap_or(0) != 1 {
                eprintln!("forwarder_probe: the forwarder did not start");
                exit(3)
            }
            let status = Command::new(&args[sep + 1])
                .args(&args[sep + 2..])
                .status()
                .expect("run the command");
            // SAFETY: killing our own child.
            unsafe { libc::kill(child, libc::SIGKILL) };
            exit(status.code().unwrap_or(125))
        }
    }
}

fn bring_lo_up() {
    let ok = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        // Without iproute2: the pool set-up also brings lo up.
        configure_pool_address().expect("bring lo up");
    }
}
