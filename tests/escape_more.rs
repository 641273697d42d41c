//! More escape attempts against the real `airlock run`, written as an
//! outside reviewer would try them (terminal line disciplines, foreign
//! ABIs, overlay internals, the commit, PID 1 and the network forwarder
//! through /proc, the proxy's control channel, kernel knobs). Each test
//! decides on the host side where it can: the secret was not read, the file
//! outside was not written, the user's terminal and the host's settings are
//! unchanged. Runs as root and as an unprivileged user.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const SECRET: &str = "AIRLOCK-MORE-SECRET-51c2e";

fn plant(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, SECRET).unwrap();
    chmod(path, 0o644);
    chmod(path.parent().unwrap(), 0o755);
}

fn assert_no_secret(o: &std::process::Output) {
    assert!(!text(o).contains(SECRET), "the secret leaked:\n{}", text(o));
}

/// The task's single upper layer (one rw grant).
fn upper(w: &World) -> std::path::PathBuf {
    w.tasks().pop().expect("a task folder").join("upper/0")
}

// ------------------------------------------------------------ terminal

/// Without `--tty` the agent's stdin is the user's own terminal. TIOCSETD
/// would switch its line discipline (N_NULL leaves it dead after the task)
/// and autoload ldisc kernel modules; TIOCCONS would steal console output.
#[test]
fn escape_line_discipline_of_the_users_terminal() {
    use std::os::fd::FromRawFd;
    let w = World::new();
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave.as_raw_fd();
    let script = "python3 -c 'import fcntl, struct, sys
for fd in (0, 1):
    for ld in (27, 13, 3):
        try:
            fcntl.ioctl(fd, 0x5423, struct.pack(\"i\", ld)); print(\"LDISC-SET\", fd, ld, file=sys.stderr)
        except OSError:
            pass
    for req in (0x541D, 0xffffffff00005423):
        try:
            fcntl.ioctl(fd, req, struct.pack(\"i\", 27)); print(\"IOCTL-OK\", hex(req), file=sys.stderr)
        except OSError:
            pass
print(\"tried\", file=sys.stderr)'";
    let mut c = w.cmd(&["run", "--", "sh", "-c", script]);
    // SAFETY: duplicating a descriptor we own for the child's stdio.
    let (i, o) = unsafe { (libc::dup(slave), libc::dup(slave)) };
    c.stdin(unsafe { Stdio::from_raw_fd(i) })
        .stdout(unsafe { Stdio::from_raw_fd(o) });
    let out = output_within(c, Duration::from_secs(60));
    let t = text(&out);
    assert!(t.contains("tried"), "{t}");
    assert!(!t.contains("LDISC-SET") && !t.contains("IOCTL-OK"), "{t}");
    // On the host: the terminal still has the ordinary line discipline.
    let mut ldisc: libc::c_int = -1;
    // SAFETY: TIOCGETD into an int.
    let rc = unsafe { libc::ioctl(slave, libc::TIOCGETD, &mut ldisc) };
    assert_eq!(rc, 0);
    assert_eq!(ldisc, 0, "the user's terminal got line discipline {ldisc}");
}

#[test]
fn escape_controlling_terminal_and_devices() {
    let w = World::new();
    let o = w.run(
        &[],
        "python3 -c 'import os
for p in (\"/dev/tty\", \"/dev/console\", \"/dev/tty0\", \"/dev/userfaultfd\", \"/dev/kvm\", \"/dev/mem\", \"/dev/vda\", \"/dev/fuse\", \"/dev/net/tun\"):
    try:
        os.open(p, os.O_RDWR); print(\"OPENED\", p)
    except OSError as e:
        print(\"refused\", p, e.errno)
# A pty from the sandbox devpts instance: only its own terminals.
fd = os.open(\"/dev/ptmx\", os.O_RDWR)
print(\"PTS\", sorted(os.listdir(\"/dev/pts\")))'",
    );
    let t = text(&o);
    assert!(!t.contains("OPENED"), "{t}");
    assert!(t.contains("PTS ['0', 'ptmx']"), "{t}");
}

// ------------------------------------------------------------ syscalls

#[cfg(target_arch = "x86_64")]
#[test]
fn escape_i386_int80_from_a_64_bit_process() {
    let w = World::new();
    // mov eax, 310 (i386 unshare); mov ebx, CLONE_NEWUSER; int 0x80;
    // movsxd rax, eax; ret — run from an executable anonymous mapping.
    let o = w.run(
        &[],
        "python3 -c 'import ctypes, mmap, struct
code = b\"\\xb8\" + struct.pack(\"<I\", 310) + b\"\\xbb\" + struct.pack(\"<I\", 0x10000000) + b\"\\xcd\\x80\\x48\\x63\\xc0\\xc3\"
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
f = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
print(\"INT80-RC\", f())
'; echo status=$?; id -u; cat /proc/self/uid_map",
    );
    let t = text(&o);
    // The foreign-ABI call kills the process (SIGSYS) before it runs.
    assert!(!t.contains("INT80-RC"), "{t}");
    assert!(t.contains("status=159"), "{t}");
}

#[test]
fn escape_namespace_flags_in_high_bits_and_x32() {
    let w = World::new();
    let mut script = vec![
        // clone(CLONE_NEWUSER|SIGCHLD) with garbage in the high 32 bits.
        py_syscall(
            libc::SYS_clone,
            &[
                0xffff_ffff_0000_0000 | libc::CLONE_NEWUSER as u64 | 17,
                0,
                0,
                0,
                0,
            ],
        ),
        py_syscall(
            libc::SYS_unshare,
            &[0xffff_ffff_0000_0000 | libc::CLONE_NEWNS as u64],
        ),
        // unshare(CLONE_NEWUSER) with every namespace flag at once.
        py_syscall(libc::SYS_unshare, &[0x7e02_0080]),
    ];
    #[cfg(target_arch = "x86_64")]
    script.push(py_syscall(0x4000_0000 + 272, &[libc::CLONE_NEWUSER as u64]));
    let o = w.run(
        &[],
        &format!("{}; readlink /proc/self/ns/user", script.join("; ")),
    );
    let t = text(&o);
    assert_eq!(
        t.matches("rc=-1 errno=1").count(),
        script.len(),
        "a namespace was created: {t}"
    );
}

#[test]
fn escape_through_syscalls_newer_than_the_filter() {
    // open_tree_attr (467, Linux 6.15) is a mount call the deny list cannot
    // name; file_setattr (469, 6.17) changes inode flags. Syscalls newer
    // than Airlock's table answer ENOSYS inside, as on an older kernel.
    // Invalid flags keep the probe harmless wherever it runs.
    let probes = [
        py_syscall(467, &[libc::AT_FDCWD as u64, 0, 0xffff_ffff, 0, 0]),
        py_syscall(469, &[libc::AT_FDCWD as u64, 0, 0, 0, 0xffff_ffff]),
    ];
    let w = World::new();
    let o = w.run(&[], &probes.join("; "));
    let t = text(&o);
    assert_eq!(t.matches("errno=38").count(), probes.len(), "{t}");
    // The same probes outside, so the log shows whether this kernel has
    // the calls at all (then they answer EFAULT or EINVAL there).
    let host = std::process::Command::new("sh")
        .args(["-c", &probes.join("; ")])
        .output()
        .expect("python3 on the host");
    eprintln!("host: {}", String::from_utf8_lossy(&host.stdout));
}

#[test]
fn escape_netlink_families_other_than_route() {
    let w = World::new();
    // sock_diag, audit, uevent, generic (nl80211, taskstats), netfilter.
    let protos = [4u64, 9, 15, 16, 12];
    let script: Vec<String> = protos
        .iter()
        .map(|p| py_syscall(libc::SYS_socket, &[16, 3, *p]))
        .collect();
    let o = w.run(&[], &script.join("; "));
    let t = text(&o);
    assert_eq!(t.matches("rc=-1 errno=1").count(), protos.len(), "{t}");
    // Route netlink stays usable (ip addr, getaddrinfo).
    let o = w.run(&[], &py_syscall(libc::SYS_socket, &[16, 3, 0]));
    assert!(!text(&o).contains("rc=-1"), "{}", text(&o));
}

#[test]
fn escape_prctl_and_proc_knobs() {
    let w = World::new();
    let knobs = [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/modprobe",
        "/proc/sys/kernel/domainname",
    ];
    let before: Vec<String> = knobs
        .iter()
        .map(|k| std::fs::read_to_string(k).unwrap_or_default())
        .collect();
    let o = w.run(
        &[],
        &format!(
            "echo '|/tmp/pwn %p' > /proc/sys/kernel/core_pattern; echo /tmp/pwn > /proc/sys/kernel/modprobe; \
             echo evil > /proc/sys/kernel/domainname; echo -1000 > /proc/self/oom_score_adj && echo OOM-LOWERED; \
             echo '0 0 1' > /proc/self/uid_map && echo MAPPED; echo 1 > /proc/1/timerslack_ns && echo SLACK; \
             echo evil > /proc/1/comm && echo COMM; {}; echo end",
            // prctl(PR_SET_MM, PR_SET_MM_START_CODE, 0)
            py_syscall(libc::SYS_prctl, &[35, 1, 0, 0, 0])
        ),
    );
    let t = text(&o);
    assert!(t.contains("end"), "{t}");
    for bad in ["OOM-LOWERED", "MAPPED", "SLACK", "COMM"] {
        assert!(!t.contains(bad), "{bad}: {t}");
    }
    assert!(t.contains("rc=-1 errno=1"), "PR_SET_MM: {t}");
    let after: Vec<String> = knobs
        .iter()
        .map(|k| std::fs::read_to_string(k).unwrap_or_default())
        .collect();
    assert_eq!(before, after, "a host kernel setting changed");
}

// ------------------------------------------------------------ PID 1, forwarder

/// PID 1 is the helper (it was started with the user's environment); with
/// `--net` the forwarder runs beside it. Neither may be read or signalled.
#[test]
fn escape_helper_and_forwarder_through_proc() {
    let w = World::new();
    let script = "for p in /proc/[0-9]*; do
  [ \"$p\" = /proc/self ] && continue
  for f in environ cmdline maps mem auxv stack syscall mountinfo; do head -c 65536 $p/$f 2>/dev/null | tr '\\0' ' '; done
  ls -l $p/fd/ $p/root/ $p/cwd/ 2>/dev/null; for f in $p/fd/*; do timeout 1 head -c 4096 $f 2>/dev/null; done
done
python3 -c 'import os
for pid in (1, 2):
    try:
        fd = os.open(\"/proc/%d/mem\" % pid, os.O_RDONLY)
        for line in open(\"/proc/%d/maps\" % pid):
            a, b = (int(x, 16) for x in line.split()[0].split(\"-\"))
            try:
                os.lseek(fd, a, 0); d = os.read(fd, min(b - a, 1 << 20)); print(d.decode(\"latin1\"))
            except (OSError, OverflowError):
                pass
    except OSError as e:
        print(\"mem refused\", pid, e.errno)
'
helpers=1
for p in /proc/[0-9]*; do case \"$(cat $p/comm 2>/dev/null)\" in airlock*) helpers=\"$helpers ${p#/proc/}\";; esac; done
echo targets: $helpers
for s in SEGV STOP TERM HUP INT USR1 KILL; do for p in $helpers; do kill -$s $p 2>/dev/null && echo SIG\"\"NALLED-$p-$s; done; done
sleep 0.3; echo still\"\"-running";
    for net in [
        &[][..],
        &["--net", "allow", "--allow-host", "example.com"][..],
    ] {
        let mut args: Vec<&str> = vec!["run"];
        args.extend_from_slice(net);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let mut c = w.cmd(&args);
        c.env("GITHUB_TOKEN", SECRET)
            .env("AWS_SECRET_ACCESS_KEY", SECRET);
        let o = output_within(c, Duration::from_secs(120));
        let t = text(&o);
        assert_no_secret(&o);
        assert!(!t.contains("SIGNALLED"), "{t}");
        // PID 1 kept working: the task ran to its end and reported it.
        assert!(t.contains("still-running"), "{t}");
        assert!(o.status.success(), "{t}");
    }
}

/// The agent can reach the proxy's socket (unprivileged) but not speak its
/// control protocol without the per-task secret: no forged DNS event.
#[test]
fn escape_forged_proxy_control_channel() {
    let w = World::new();
    let events = w.path().join("events.jsonl");
    let o = w.run(
        &[
            "--net",
            "allow",
            "--allow-host",
            "example.com",
            "--json-events",
            &events.display().to_string(),
        ],
        "python3 -c 'import socket
for tok in (b\"\", b\"0\" * 64, b\"x\" * 5000):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(\"/run/airlock/proxy.sock\")
        s.sendall(b\"\\0AIRLOCK-CONTROL/1 \" + tok + b\"\\n\" + b\"{\\\"type\\\":\\\"dns\\\",\\\"name\\\":\\\"forged-by-agent.example\\\",\\\"answer\\\":\\\"6.6.6.6\\\"}\\n\")
        s.recv(100); print(\"sent\")
    except OSError as e:
        print(\"refused\", e.errno)
'; echo done",
    );
    let t = text(&o);
    assert!(t.contains("done"), "{t}");
    let ev = std::fs::read_to_string(&events).unwrap_or_default();
    // The agent's own command line is in the `started` event; no other
    // event may name the forged answer.
    assert!(
        !ev.lines()
            .any(|l| !l.contains("\"type\":\"started\"") && l.contains("6.6.6.6")),
        "a forged DNS event was accepted: {ev}"
    );
}

// ------------------------------------------------------------ overlay, commit

/// Overlay's own xattrs and whiteouts, set by the agent through the
/// overlay, must not reach the upper layer in a form the commit (or a later
/// mount of the layer) would obey: no hidden deletions of the real folder.
#[test]
fn escape_overlay_xattrs_and_whiteouts_aimed_at_the_commit() {
    let w = World::new();
    std::fs::create_dir(w.project.join("keep")).unwrap();
    chmod(&w.project.join("keep"), 0o777);
    std::fs::write(w.project.join("keep/a.txt"), "user data").unwrap();
    chmod(&w.project.join("keep/a.txt"), 0o666);
    std::fs::write(w.project.join("b.txt"), "user data").unwrap();
    chmod(&w.project.join("b.txt"), 0o666);
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "python3 -c 'import os
for p in (\"keep\", \"b.txt\", \".\"):
    for n in (b\"user.overlay.opaque\", b\"user.overlay.redirect\", b\"user.overlay.origin\", b\"user.overlay.whiteout\", b\"trusted.overlay.opaque\"):
        try:
            os.setxattr(p, n, b\"y\")
        except OSError:
            pass
for p in (\"keep/a.txt\", \"keep/new\", \"c.txt\"):
    try:
        os.mknod(p, 0o600 | 0o020000, os.makedev(0, 0)); print(\"WHITEOUT\", p)
    except OSError as e:
        print(\"refused\", p, e.errno)
open(\"keep/new.txt\", \"w\").write(\"new\")
'",
    );
    let t = text(&o);
    assert!(!t.contains("WHITEOUT"), "{t}");
    let up = upper(&w);
    // The overlay sets some of its own (uuid, origin) with binary values;
    // the agent's "y" must only ever land escaped (user.overlay.overlay.*).
    for p in ["", "keep", "b.txt"] {
        let path = up.join(p);
        let Ok(names) = xattr_names(&path) else {
            continue;
        };
        for n in names {
            let Some(short) = n
                .strip_prefix("user.overlay.")
                .or_else(|| n.strip_prefix("trusted.overlay."))
            else {
                continue;
            };
            // None of these folders was replaced, so the kernel made none
            // opaque; redirect/origin hold paths or handles, never "y".
            let forged = match short {
                "opaque" => true,
                "redirect" | "origin" | "whiteout" => xattr_value(&path, &n) == b"y",
                _ => false,
            };
            assert!(
                !forged,
                "{}: the agent set the overlay's own attribute {n}",
                path.display()
            );
        }
    }
    // Committing everything keeps the user's files.
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_string_lossy().to_string();
    let c = output_within(w.cmd(&["commit", &id]), Duration::from_secs(60));
    assert_eq!(
        std::fs::read_to_string(w.project.join("keep/a.txt")).unwrap(),
        "user data",
        "{}",
        text(&c)
    );
    assert_eq!(
        std::fs::read_to_string(w.project.join("b.txt")).unwrap(),
        "user data"
    );
}

/// Attribute names of `p` itself (not following a symlink).
fn xattr_names(p: &Path) -> std::io::Result<Vec<String>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: llistxattr into a buffer of the given size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn xattr_value(p: &Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: lgetxattr into a buffer of the given size.
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(len.max(0) as usize);
    buf
}

/// Symlinks planted in a rw grant, aimed at secrets and folders outside:
/// inside they lead nowhere, and the commit copies the link itself, never
/// the file it names, and never writes through it.
#[test]
fn escape_symlinks_in_the_upper_layer_aimed_at_the_commit() {
    let w = World::new();
    let key = w.home.join(".ssh/id_rsa");
    plant(&key);
    plant(&w.outside.join("notes.txt"));
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        &format!(
            "cd {p}; ln -s {key} key; ln -s {out} out; ln -s /proc/1/root root1; ln -s ../../outside up; \
             cat key out/notes.txt root1{key} up/notes.txt /proc/self/root{key} 2>&1; \
             echo pwned > out/new.txt; echo pwned > up/new2.txt; echo pwned >> key; \
             mkdir -p sub; ln {p}/sub/../key hard 2>&1; ls -la",
            p = w.project.display(),
            key = key.display(),
            out = w.outside.display(),
        ),
    );
    assert_no_secret(&o);
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_string_lossy().to_string();
    let c = output_within(w.cmd(&["commit", &id]), Duration::from_secs(60));
    let ct = text(&c);
    // Nothing was written outside or into the key, before or after commit.
    assert_eq!(std::fs::read_to_string(&key).unwrap(), SECRET, "{ct}");
    assert!(!w.outside.join("new.txt").exists(), "{ct}");
    assert!(!w.outside.join("new2.txt").exists(), "{ct}");
    // Whatever reached the project is a link, never the secret's bytes.
    for e in walk(&w.project) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        if m.is_file() {
            let data = std::fs::read(&e).unwrap();
            assert!(
                !String::from_utf8_lossy(&data).contains(SECRET),
                "{} holds the secret after commit",
                e.display()
            );
        }
    }
}

/// Every path under `root`, as far as path-based calls reach (a tree
/// deeper than PATH_MAX ends where the names get too long).
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return v;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            v.extend(walk(&p));
        }
        v.push(p);
    }
    v
}

/// A grant whose path is a symlink to an always-denied folder: the deny
/// still applies to where it leads, read-only or read-write.
#[test]
fn escape_grant_path_that_is_a_symlink_to_a_denied_folder() {
    let w = World::new();
    let key = w.home.join(".ssh/id_rsa");
    plant(&key);
    let link = w.outside.join("keys");
    std::os::unix::fs::symlink(w.home.join(".ssh"), &link).unwrap();
    let file_link = w.outside.join("keyfile");
    std::os::unix::fs::symlink(&key, &file_link).unwrap();
    for mode in ["", ":rw"] {
        let o = w.run(
            &[
                "--grant",
                &format!("{}{mode}", link.display()),
                "--grant",
                &format!("{}{mode}", file_link.display()),
            ],
            &format!(
                "cat {l}/id_rsa {f} {k}; echo pwned > {l}/planted; echo pwned >> {f}; ls -la {l}",
                l = link.display(),
                f = file_link.display(),
                k = key.display()
            ),
        );
        assert_no_secret(&o);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), SECRET);
        assert!(!w.home.join(".ssh/planted").exists());
        // Nothing the task wrote names the key's content for a commit either.
        for t in w.tasks() {
            for e in walk(&t) {
                if std::fs::symlink_metadata(&e).unwrap().is_file() {
                    let d = std::fs::read(&e).unwrap_or_default();
                    assert!(
                        !String::from_utf8_lossy(&d).contains(SECRET),
                        "{}",
                        e.display()
                    );
                }
            }
        }
    }
}

/// A grant folder whose name holds a newline, a comma and overlay option
/// syntax: it is mounted as itself and changes stay in the upper layer.
#[test]
fn escape_grant_name_with_mount_option_syntax() {
    let w = World::new();
    let odd = w.path().join("a\nb,lowerdir=..,upperdir=x\\z");
    std::fs::create_dir(&odd).unwrap();
    chmod(&odd, 0o777);
    std::fs::write(odd.join("f.txt"), "original").unwrap();
    chmod(&odd.join("f.txt"), 0o666);
    let mut c = w.cmd(&[
        "run",
        "--grant",
        &format!("{}:rw", odd.display()),
        "--",
        "sh",
        "-c",
        "echo changed > f.txt; cat /proc/self/mountinfo | grep -c overlay; ls / | tr '\\n' ' '",
    ]);
    c.current_dir(&odd);
    let o = output_within(c, Duration::from_secs(60));
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert_eq!(
        std::fs::read_to_string(odd.join("f.txt")).unwrap(),
        "original"
    );
    assert_eq!(
        std::fs::read_to_string(upper(&w).join("f.txt")).unwrap(),
        "changed\n"
    );
}

// ------------------------------------------------------------ leaks, limits

/// Nothing inside names the task's state folder, the user's real home or
/// another user's paths: not the mount table, not PID 1's, not the env.
#[test]
fn escape_host_paths_in_mountinfo_and_environment() {
    let w = World::new();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "cat /proc/self/mountinfo /proc/1/mountinfo /proc/self/mounts 2>/dev/null; env; cat /etc/passwd /etc/hostname; hostname; cat /proc/self/cgroup",
    );
    let t = text(&o);
    let state = w.state().display().to_string();
    assert!(
        !t.contains(&state),
        "the state folder is named inside:\n{t}"
    );
    assert!(!t.contains("/tasks/"), "{t}");
    let host = nix::unistd::gethostname().unwrap();
    let host = host.to_string_lossy();
    if host != "airlock" && host.len() > 3 {
        assert!(
            !t.lines().any(|l| l.trim() == host),
            "the host name leaked: {t}"
        );
    }
}

#[test]
fn escape_dev_shm_root_and_tmp_filling_are_bounded() {
    let w = World::new();
    let o = w.run(
        &["--tmp-size", "8M"],
        "dd if=/dev/zero of=/dev/shm/big bs=1M count=200 2>&1 | tail -1; \
         du -sk /dev/shm | cut -f1 | sed s/^/shm-kb=/; \
         echo x > /evil 2>&1 || echo root-refused; \
         dd if=/dev/zero of=/tmp/big bs=1M count=50 2>&1 | tail -1; \
         du -sk /tmp | cut -f1 | sed s/^/tmp-kb=/",
    );
    let t = text(&o);
    let kb = |k: &str| -> u64 {
        t.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{k}: {t}"))
    };
    assert!(kb("shm-kb=") <= 64 * 1024, "{t}");
    assert!(kb("tmp-kb=") <= 8 * 1024, "{t}");
    assert!(t.contains("root-refused"), "{t}");
}

#[test]
fn escape_pids_limit_counts_threads() {
    let w = World::new();
    let o = w.run(
        &["--pids", "32"],
        "python3 -c 'import threading
ev = threading.Event(); n = 0
try:
    for i in range(500):
        threading.Thread(target=ev.wait).start(); n += 1
except RuntimeError:
    pass
print(\"threads=%d\" % n); ev.set()'",
    );
    let t = text(&o);
    let n: u32 = t
        .lines()
        .find_map(|l| l.strip_prefix("threads="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{t}"));
    assert!(n < 32, "{n} threads with --pids 32");
}

/// Empty files take no tmpfs page, so a size limit alone does not bound
/// them: each is unaccounted kernel memory on the host. The writable
/// tmpfs mounts (/tmp, the home, /dev/shm, /dev) cap their inodes too.
#[test]
fn escape_inode_exhaustion_of_the_tmpfs_mounts() {
    let w = World::new();
    let o = w.run(
        &["--tmp-size", "4M"],
        "python3 -c 'import os
for k, d in ((\"tmp\", \"/tmp/i\"), (\"home\", os.path.expanduser(\"~/i\")), (\"shm\", \"/dev/shm/i\"), (\"dev\", \"/dev/i\")):
    n = 0
    try:
        os.mkdir(d)
        while n < 40000:
            os.mknod(\"%s/%d\" % (d, n)); n += 1
    except OSError:
        pass
    print(\"files %s=%d\" % (k, n))
'",
    );
    let t = text(&o);
    let count = |k: &str| -> u64 {
        t.lines()
            .find_map(|l| l.strip_prefix(&format!("files {k}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{k}: {t}"))
    };
    assert!(count("tmp") <= 4096, "{t}");
    assert!(count("home") <= 4096, "{t}");
    assert!(count("shm") <= 16384, "{t}");
    assert!(count("dev") <= 256, "{t}");
}

/// What the agent leaves in a rw grant for the commit: set-uid/set-gid
/// bits, a fifo, a path deeper than PATH_MAX, names with newlines and
/// escapes. The commit never lands a set-id file, never writes outside the
/// grant, and never blocks on the fifo.
#[test]
fn escape_commit_of_setid_fifo_and_deep_paths() {
    let w = World::new();
    plant(&w.outside.join("notes.txt"));
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        &format!(
            "cd {p}; cp /bin/sh evilsh; chmod 6755 evilsh; mkdir sg; chmod 2777 sg; mkfifo fifo; \
             touch \"$(printf 'new\\nline\\033[2J')\"; \
             d=$(printf 'x%.0s' $(seq 1 200)); for i in $(seq 1 25); do mkdir $d && cd $d || break; done; \
             echo deep > f; cd {p}; echo done",
            p = w.project.display()
        ),
    );
    assert!(text(&o).contains("done"), "{}", text(&o));
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_string_lossy().to_string();
    let c = output_within(w.cmd(&["commit", &id]), Duration::from_secs(60));
    let ct = text(&c);
    use std::os::unix::fs::MetadataExt;
    for e in walk(&w.project) {
        let Ok(m) = std::fs::symlink_metadata(&e) else {
            continue;
        };
        assert_eq!(
            m.mode() & 0o6000,
            0,
            "{} kept a set-id bit after commit: {ct}",
            e.display()
        );
        assert!(
            m.is_file() || m.is_dir() || m.file_type().is_symlink(),
            "{} is a device, fifo or socket: {ct}",
            e.display()
        );
    }
    let outside: Vec<_> = std::fs::read_dir(&w.outside).unwrap().flatten().collect();
    assert_eq!(outside.len(), 1, "{ct}");
    assert_eq!(
        std::fs::read_to_string(w.outside.join("notes.txt")).unwrap(),
        SECRET
    );
}

/// Modes the agent chose with umask 0: a new folder 0777 (another local
/// user could plant `.git/hooks` there) and a new file 0666 get the
/// committing user's umask; an existing folder made 0777 is flagged in the
/// review.
#[test]
fn escape_world_writable_modes_through_the_commit() {
    let w = World::new();
    let shared = w.project.join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o755);
    if is_root() {
        // The agent runs as nobody then; the folder must be its to chmod.
        std::os::unix::fs::chown(&shared, Some(65534), Some(65534)).unwrap();
    }
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "umask 0; mkdir -p hooks/sub; echo x > hooks/sub/run; echo y > top.txt; \
         chmod 0777 hooks hooks/sub; chmod 0666 hooks/sub/run top.txt; chmod 0777 shared; \
         echo done",
    );
    assert!(text(&o).contains("done"), "{}", text(&o));
    let id = w.tasks().pop().unwrap();
    let id = id.file_name().unwrap().to_string_lossy().to_string();
    let ch = output_within(w.cmd(&["changes", &id]), Duration::from_secs(60));
    let cht = text(&ch);
    assert!(cht.contains("becomes writable for other users"), "{cht}");
    // The user's umask is 022, whatever the test runner's is.
    let mut c = w.command("sh");
    c.args(["-c", "umask 022; exec \"$AIRLOCK\" commit \"$0\""])
        .arg(&id);
    let ct = text(&output_within(c, Duration::from_secs(60)));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&w.project.join("hooks")), 0o755, "{ct}");
    assert_eq!(mode(&w.project.join("hooks/sub")), 0o755, "{ct}");
    assert_eq!(mode(&w.project.join("hooks/sub/run")), 0o644, "{ct}");
    assert_eq!(mode(&w.project.join("top.txt")), 0o644, "{ct}");
    // What the review showed and flagged is what lands.
    assert_eq!(mode(&shared), 0o777, "{ct}");
}

/// `open`, `mmap`, `close` keeps a file open that RLIMIT_NOFILE no longer
/// counts: twelve processes of a task held a third of the machine's file
/// table (pass 19A), and a full table fails every open on the machine.
/// The task is stopped past its share (an eighth, at most a million);
/// checked on the host in `fs/file-nr`.
#[test]
fn escape_files_kept_open_by_mappings_are_bounded() {
    let w = World::new();
    let table: u64 = std::fs::read_to_string("/proc/sys/fs/file-max")
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    let budget = (table / 8).min(1 << 20);
    let per = 60_000u64;
    let procs = budget / per + 2;
    let file_nr = || -> u64 {
        std::fs::read_to_string("/proc/sys/fs/file-nr")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = file_nr();
    let script = format!(
        "echo x > /tmp/m; for i in $(seq {procs}); do python3 -c 'import ctypes, os, time
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
for i in range({per}):
    fd = os.open(\"/tmp/m\", os.O_RDONLY)
    libc.mmap(None, 4096, 1, 2, fd, 0)
    os.close(fd)
time.sleep(30)' & done; sleep 20; echo not stopped"
    );
    let mut c = w.cmd(&["run", "--", "sh", "-c", &script]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id();
    let mut most = 0;
    while std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|_| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| !st.contains(") Z "))
    }) {
        most = most.max(file_nr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert!(!t.contains("not stopped"), "{t}");
    assert!(t.contains("memory mappings"), "{t}");
    // The scan reads at least every 2 s: what got past the share meanwhile
    // is bounded by what a few processes add in that time.
    assert!(
        most.saturating_sub(before) < budget + 4 * per,
        "{} files open at most against a share of {budget}: {t}",
        most.saturating_sub(before)
    );
}

/// More roads past the limits, closed under our profile and under an
/// imported allow-all one with unix sockets allowed (pass 20A): io_uring
/// (IORING_OP_FALLOCATE preallocated 4000 MiB under --max-upper 10M when
/// unix sockets were allowed), the extent-size hint of FS_IOC_FSSETXATTR
/// (every small write then allocates a whole extent on XFS), and
/// `file_setattr`, newer than this build's table, which the imported
/// profile let through to set that same hint.
#[test]
fn escape_more_roads_past_the_limits_under_any_profile() {
    let w = World::new();
    let profile = w.path().join("allow-all.json");
    std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#).unwrap();
    std::fs::write(w.project.join("f"), "x").unwrap();
    chmod(&w.project.join("f"), 0o666);
    let grant = format!("{}:rw", w.project.display());
    let profile_arg = profile.display().to_string();
    let at_fdcwd = (-100i64) as u64;
    let script = [
        // io_uring_setup(8, params)
        py_syscall(425, &[8, 0]),
        // file_setattr(AT_FDCWD, "f", …): ENOSYS, as on an older kernel.
        py_syscall(469, &[at_fdcwd, 0, 0, 0, 0]),
        format!(
            "python3 -c 'import ctypes, os; fd = os.open(\"{}/f\", os.O_RDWR); l=ctypes.CDLL(None, use_errno=True); l.syscall.restype=ctypes.c_long; b=ctypes.create_string_buffer(28); r=l.syscall(16, fd, ctypes.c_ulong(0x401c5820), b); print(\"rc=%d errno=%d\" % (r, ctypes.get_errno()))'",
            w.project.display()
        ),
        // System V message queues (kernel memory no limit counts).
        "python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); r=l.msgget(0, 0o1600); print(\"rc=%d errno=%d\" % (r, ctypes.get_errno()))'".to_string(),
    ]
    .join("; ");
    for args in [
        vec!["--grant", &grant],
        vec![
            "--grant",
            &grant,
            "--allow-unix-sockets",
            "--seccomp-profile",
            &profile_arg,
        ],
    ] {
        let o = w.run(&args, &script);
        let t = text(&o);
        let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("rc=")).collect();
        assert_eq!(
            lines,
            vec![
                format!("rc=-1 errno={}", libc::EPERM),
                format!("rc=-1 errno={}", libc::ENOSYS),
                format!("rc=-1 errno={}", libc::EOPNOTSUPP),
                format!("rc=-1 errno={}", libc::ENOSYS),
            ],
            "{args:?}: {t}"
        );
    }
}

/// A name or a path that is not UTF-8 made the scan's text reads of
/// `/proc` fail (pass 20A): an undumpable process so named was taken for
/// one holding no memory, and one such mapping hid all of a process's
/// mappings. Here a 256 MiB memfd named `\xff`, mapped shared and its
/// descriptor closed, under --memory 64M: the task is stopped.
#[test]
fn escape_names_that_are_not_utf8_hide_nothing_from_the_scan() {
    let w = World::new();
    let o = w.run(
        &["--memory", "64M"],
        "python3 -c 'import ctypes, mmap, os, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.memfd_create(b\"\\xff\", 0)
os.ftruncate(fd, 256 << 20)
m = mmap.mmap(fd, 256 << 20, mmap.MAP_SHARED)
os.close(fd)
for i in range(0, 256 << 20, 4096):
    m[i] = 1
print(\"holding\", flush=True)
time.sleep(20)
print(\"not stopped\")'",
    );
    let t = text(&o);
    assert!(
        !o.status.success() && !t.contains("not stopped") && t.contains("shared memory"),
        "{t}"
    );
    // SAFETY: geteuid only reads.
    if unsafe { libc::geteuid() } != 0 {
        let o = w.run(
            &[],
            "cp /bin/sleep \"$(printf '/tmp/\\377')\" && chmod 111 \"$(printf '/tmp/\\377')\" && \"$(printf '/tmp/\\377')\" 20; echo not stopped",
        );
        assert_stopped_for(&o, "cannot be inspected");
    }
}

/// fscrypt's key and policy ioctls act on the user's whole file system
/// (a read-only grant's file is enough): removing the user's key locked
/// their encrypted folders after the task, and adding keys filled their key
/// quota (pass 19A). Refused under our profile and an imported allow-all
/// one. (An fscrypt file system cannot be made here without root, so this
/// checks the answer, with the request's high bits set too.)
#[test]
fn escape_fscrypt_key_ioctls_are_refused() {
    let w = World::new();
    let profile = w.path().join("allow-all.json");
    std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#).unwrap();
    std::fs::write(w.project.join("f"), "x").unwrap();
    chmod(&w.project.join("f"), 0o644);
    let open = format!(
        "import os; fd = os.open(\"{}\", os.O_RDONLY)",
        w.project.join("f").display()
    );
    let calls: Vec<String> = [0x800c6613u64, 0xc0506617, 0xc0406618, 0xc0406619, 0xdead0000c0406618]
        .iter()
        .map(|req| {
            format!(
                "python3 -c 'import ctypes; {open}; l=ctypes.CDLL(None, use_errno=True); l.syscall.restype=ctypes.c_long; b=ctypes.create_string_buffer(256); r=l.syscall(16, fd, ctypes.c_ulong({req}), b); print(\"rc=%d errno=%d\" % (r, ctypes.get_errno()))'"
            )
        })
        .collect();
    let grant = format!("{}:ro", w.project.display());
    let profile_arg = profile.display().to_string();
    for args in [
        vec!["--grant", &grant],
        vec!["--grant", &grant, "--seccomp-profile", &profile_arg],
    ] {
        let o = w.run(&args, &calls.join("; "));
        let t = text(&o);
        assert_eq!(
            t.matches(&format!("rc=-1 errno={}\n", libc::EPERM)).count(),
            calls.len(),
            "{args:?}: {t}"
        );
    }
}

/// The newer mount calls: open_tree_attr (6.15) is newer than the syscall
/// tables seccomp knows, so it answers ENOSYS like every such call; the
/// others are refused by the filter.
#[test]
fn escape_new_mount_api_calls() {
    let w = World::new();
    let at_fdcwd = (-100i64) as u64;
    let calls = [
        // open_tree_attr(AT_FDCWD, NULL, OPEN_TREE_CLONE, NULL, 0)
        py_syscall(467, &[at_fdcwd, 0, 1, 0, 0]),
        // open_tree(AT_FDCWD, NULL, OPEN_TREE_CLONE)
        py_syscall(428, &[at_fdcwd, 0, 1]),
        // fsopen(NULL, 0), fsmount(0, 0, 0), mount_setattr(...)
        py_syscall(430, &[0, 0]),
        py_syscall(432, &[0, 0, 0]),
        py_syscall(442, &[at_fdcwd, 0, 0, 0, 0]),
    ];
    let o = w.run(&[], &calls.join("; "));
    let t = text(&o);
    assert_eq!(t.matches("rc=-1 errno=38\n").count(), 1, "{t}");
    assert_eq!(t.matches("rc=-1 errno=1\n").count(), calls.len() - 1, "{t}");
}

/// An always-denied folder that does not exist yet is not covered: with
/// the home granted read-write the agent creates ~/.ssh/authorized_keys,
/// ~/.ssh/config (ProxyCommand), ~/.aws/config (credential_process),
/// ~/.docker/config.json (credential helpers), ~/.npmrc (script-shell);
/// a commit of everything must not plant them: the review refuses every
/// change under a hidden path, as an existing ~/.ssh is already hidden.
#[test]
fn escape_creating_always_denied_credentials_that_do_not_exist_yet() {
    let w = World::new();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.home.display())],
        &format!(
            "cd {h}; mkdir -p .ssh .aws .docker; echo 'ssh-ed25519 AAAA attacker' > .ssh/authorized_keys; \
             printf 'Host *\\n ProxyCommand sh -c pwn\\n' > .ssh/config; \
             printf '[default]\\ncredential_process=sh -c pwn\\n' > .aws/config; \
             echo '{{\"credsStore\":\"pwn\"}}' > .docker/config.json; echo 'script-shell=/tmp/pwn' > .npmrc; echo done",
            h = w.home.display()
        ),
    );
    assert!(text(&o).contains("done"), "{}", text(&o));
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_string_lossy().to_string();
    let ch = output_within(w.cmd(&["changes", &id]), Duration::from_secs(60));
    let c = output_within(w.cmd(&["commit", &id]), Duration::from_secs(60));
    // Each says why: hidden, not "a device, pipe or socket".
    for (what, t) in [("changes", text(&ch)), ("commit", text(&c))] {
        assert!(t.contains("hidden from every task"), "{what}: {t}");
        assert!(!t.contains("device, pipe or socket"), "{what}: {t}");
    }
    assert!(text(&c).contains("refused: .ssh/config"), "{}", text(&c));
    for p in [
        ".ssh/authorized_keys",
        ".ssh/config",
        ".aws/config",
        ".docker/config.json",
        ".npmrc",
    ] {
        assert!(
            !w.home.join(p).exists(),
            "the agent planted ~/{p}: {}",
            text(&c)
        );
    }
}

/// The same with a home folder reached through a symlink (as `/home` ->
/// `/var/home` on Fedora Atomic): the review must know `~/.ssh` by its
/// real path too, though it did not exist when the task ran.
#[test]
fn escape_creating_credentials_under_a_symlinked_home() {
    let w = World::new();
    let real = w.path().join("realhome");
    std::fs::create_dir_all(&real).unwrap();
    chmod(&real, 0o777);
    let link = w.path().join("linkhome");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let home = link.to_string_lossy().into_owned();
    let grant = format!("{home}:rw");
    // By the real path: as root the agent's own $HOME is elsewhere.
    let script = format!(
        "cd {} && mkdir -p .ssh .gnupg && echo 'ssh-ed25519 AAAA attacker' > .ssh/authorized_keys && echo x > .gnupg/gpg.conf && echo done",
        real.display()
    );
    let mut run = w.cmd(&["run", "--grant", &grant, "--", "sh", "-c", &script]);
    run.env("HOME", &home);
    let o = output_within(run, Duration::from_secs(120));
    assert!(text(&o).contains("done"), "{}", text(&o));
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_string_lossy().to_string();
    let mut changes = w.cmd(&["changes", &id]);
    changes.env("HOME", &home);
    let ch = output_within(changes, Duration::from_secs(60));
    let mut commit = w.cmd(&["commit", &id]);
    commit.env("HOME", &home);
    let c = output_within(commit, Duration::from_secs(60));
    for p in [".ssh/authorized_keys", ".gnupg/gpg.conf"] {
        assert!(
            !real.join(p).exists(),
            "the agent planted ~/{p}: {}\n{}",
            text(&ch),
            text(&c)
        );
    }
}

/// `--max-upper` is checked on the host by walking the upper layer; a tree deeper than PATH_MAX (made inside with relative chdir)
/// must still be measured (the watchdog walks with directory descriptors),
/// so the task is stopped.
#[test]
fn escape_max_upper_with_a_tree_deeper_than_path_max() {
    let w = World::new();
    let o = run_with_max_upper(
        &w,
        "8M",
        "python3 -c 'import os, time
d = \"x\" * 200
for i in range(30):
    os.mkdir(d); os.chdir(d)
for i in range(12):
    with open(\"big%d\" % i, \"wb\") as f:
        f.write(b\"\\0\" * (7 << 20))
print(\"wrote\", flush=True)
time.sleep(5)
print(\"not stopped\")'",
    );
    let t = text(&o);
    assert!(t.contains("wrote"), "{t}");
    assert!(
        !o.status.success() && !t.contains("not stopped"),
        "84 MiB went past --max-upper 8M: {t}"
    );
}

// ------------------------------------------------------------ unix sockets

/// Host sockets inside a read-only grant: an ssh agent's socket, a terminal
/// multiplexer's (whose `send-keys` runs commands as the user), a datagram
/// socket such as the journal's. Binding a folder shows them, and neither
/// Landlock nor the namespaces stop a connect; without unix sockets in the
/// sandbox there is nothing to connect with. Decided on the host: no
/// listener saw a connection or a datagram.
#[test]
fn escape_host_unix_sockets_inside_a_read_only_grant() {
    use std::os::unix::net::{UnixDatagram, UnixListener};
    let w = World::new();
    let shared = w.home.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    chmod(&shared, 0o755);
    let stream_path = shared.join("agent.sock");
    let stream = UnixListener::bind(&stream_path).unwrap();
    stream.set_nonblocking(true).unwrap();
    chmod(&stream_path, 0o777);
    let dgram_path = shared.join("journal.sock");
    let dgram = UnixDatagram::bind(&dgram_path).unwrap();
    dgram.set_nonblocking(true).unwrap();
    chmod(&dgram_path, 0o777);
    let o = w.run(
        &["--grant", &format!("{}:ro", shared.display())],
        &format!(
            "python3 -c '
import socket
tries = (
    (\"stream\", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)),
    (\"nscd-like\", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)),
    (\"seqpacket\", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)),
    (\"pair-stream\", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)[0]),
    (\"pair-dgram\", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0]),
    (\"pair-raw\", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_RAW)[0]),
)
for name, make in tries:
    try:
        s = make()
        s.settimeout(2)
        s.connect(\"{s}\"); s.sendall(b\"hello\"); print(\"CONNECTED\", name)
    except OSError as e:
        print(\"refused\", name, e)
    try:
        s = make()
        s.sendto(b\"hello\", \"{d}\"); print(\"SENT\", name)
    except OSError as e:
        print(\"refused\", name, e)
'",
            s = stream_path.display(),
            d = dgram_path.display()
        ),
    );
    let t = text(&o);
    assert!(!t.contains("CONNECTED") && !t.contains("SENT"), "{t}");
    assert_eq!(
        t.lines().filter(|l| l.starts_with("refused")).count(),
        12,
        "{t}"
    );
    assert!(
        stream.accept().is_err(),
        "the host's stream socket accepted a connection: {t}"
    );
    let mut buf = [0u8; 16];
    assert!(
        dgram.recv(&mut buf).is_err(),
        "the host's datagram socket received a message: {t}"
    );
}

/// An imported profile that allows everything still gets the unix-socket
/// rules, and io_uring with them: `IORING_OP_SOCKET` makes a socket
/// without the `socket` call.
#[test]
fn escape_unix_sockets_through_an_allow_all_imported_profile() {
    let w = World::new();
    // Allow by default, and deny by default while allowing every call by
    // name (the shape of Docker's profiles): the added refusals of socket
    // and io_uring must hold against the profile's own allow rules.
    let names: Vec<String> = airlock::sandbox::seccomp::native_table()
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect();
    let by_name = format!(
        r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{{"names": [{}], "action": "SCMP_ACT_ALLOW"}}]}}"#,
        names.join(", ")
    );
    let allow_all = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}"#.to_string();
    for (file, json) in [
        ("allow-all.json", allow_all),
        ("allow-by-name.json", by_name),
    ] {
        let profile = w.path().join(file);
        std::fs::write(&profile, json).unwrap();
        chmod(&profile, 0o644);
        let script = [
            // socket(AF_UNIX, SOCK_STREAM, 0)
            py_syscall(libc::SYS_socket, &[1, 1, 0]),
            // io_uring_setup(8, NULL): EFAULT if it were allowed.
            py_syscall(libc::SYS_io_uring_setup, &[8, 0]),
        ]
        .join("; ");
        let o = w.run(
            &[
                "--grant",
                &format!("{}:rw", w.project.display()),
                "--seccomp-profile",
                &profile.to_string_lossy(),
            ],
            &script,
        );
        let t = text(&o);
        assert_eq!(
            t.lines().filter(|l| l.trim() == "rc=-1 errno=1").count(),
            2,
            "{file}: {t}"
        );
    }
}

/// What still works without unix sockets (pipes between the agent's own
/// processes), and what `--allow-unix-sockets` brings back: a server of
/// the agent's own in its private /tmp.
#[test]
fn unix_socket_pairs_work_and_allow_unix_sockets_serves_the_agent() {
    let w = World::new();
    let script = "python3 -c '
import multiprocessing as mp, socket, os
a, b = mp.Pipe()
a.send(\"ping\"); print(\"pipe\", b.recv())
try:
    srv = socket.socket(socket.AF_UNIX); srv.bind(\"/tmp/own.sock\"); srv.listen(1)
    c = socket.socket(socket.AF_UNIX); c.connect(\"/tmp/own.sock\")
    conn, _ = srv.accept(); c.sendall(b\"hi\"); print(\"own server\", conn.recv(2).decode())
except OSError as e:
    print(\"no unix sockets\", e.errno)
'";
    let grant = format!("{}:rw", w.project.display());
    let t = text(&w.run(&["--grant", &grant], script));
    assert!(t.contains("pipe ping"), "{t}");
    assert!(t.contains("no unix sockets 1"), "{t}");
    let t = text(&w.run(&["--grant", &grant, "--allow-unix-sockets"], script));
    assert!(t.contains("pipe ping"), "{t}");
    assert!(t.contains("own server hi"), "{t}");
}

/// The desktop's runtime folders (session bus, display, key agents) are
/// never granted, and the display's sockets stay hidden in a grant of /tmp.
#[test]
fn runtime_folders_cannot_be_granted() {
    let w = World::new();
    for g in ["/run", "/run/user", "/var/run"] {
        if !Path::new(g).exists() {
            continue;
        }
        let o = w.run(&["--grant", &format!("{g}:ro")], "echo RAN");
        let t = text(&o);
        assert!(!o.status.success() && !t.contains("RAN"), "{g}: {t}");
        assert!(t.contains("/run"), "{g}: the error names the folder: {t}");
    }
}

// ------------------------------------------------------------ grants

/// A grant is planned by path; if the folder at that path is replaced
/// before the helper mounts it (a rename puts another folder, say one of
/// secrets, in its place), the helper must mount nothing rather than the
/// newcomer. Driven through the library so the swap can happen between
/// planning and mounting; decided on what the agent could print.
#[test]
fn escape_grant_replaced_between_planning_and_mounting() {
    use airlock::policy::{Access, Grant, Policy};
    use airlock::sandbox::{self, Launch};
    use airlock::task::{TaskDir, TaskId};
    use std::io::Read;
    let w = World::new();
    let grant = w.home.join("planned");
    let secrets = w.home.join("secrets");
    std::fs::create_dir_all(&grant).unwrap();
    chmod(&grant, 0o755);
    plant(&secrets.join("secret.txt"));
    let tasks = w.state().join("tasks");
    let task_dir = TaskDir::new(&tasks, &TaskId::generate());
    std::fs::create_dir_all(task_dir.path()).unwrap();
    let policy = Policy {
        grants: vec![Grant {
            path: grant.clone(),
            access: Access::Ro,
        }],
        ..Default::default()
    };
    let argv = vec![
        "cat".to_string(),
        grant.join("secret.txt").to_string_lossy().into_owned(),
    ];
    let base = sandbox::plan::base(&policy, &task_dir).unwrap();
    let (spec, _) = sandbox::plan::plan(&policy, &argv, &task_dir, &base).unwrap();
    let (r, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let w2 = wr.try_clone().unwrap();
    let exe = airlock_bin();
    // The helper builds its namespaces and base meanwhile, as in a task.
    let starting = sandbox::start(
        &spec.base(),
        Launch::New {
            exe: &exe,
            stdin: None,
            stdout: Some(wr),
            stderr: Some(w2),
        },
        |_| Ok(()),
    )
    .unwrap();
    std::fs::rename(&grant, w.home.join("moved-away")).unwrap();
    std::fs::rename(&secrets, &grant).unwrap();
    let mut running = starting.plan(&spec).unwrap();
    let report = running.setup();
    let _ = running.wait();
    running.reap();
    let mut out = String::new();
    std::fs::File::from(r).read_to_string(&mut out).unwrap();
    assert!(
        !out.contains(SECRET),
        "the replaced grant was mounted: {out}"
    );
    let (stage, message) = report.error.expect("the set-up must fail");
    assert_eq!(stage, "open grant", "{message}");
    assert!(message.contains("renamed or replaced"), "{message}");
}

/// The helper builds the namespaces and the root's base before the plan
/// comes. A supervisor that gives the task up then (its plan failed)
/// leaves no process behind, and a plan made for another sandbox (another
/// user) is refused, not carried out in the base built for the first.
#[test]
fn a_sandbox_given_up_or_sent_another_plan_before_its_plan_runs_nothing() {
    use airlock::policy::{Access, Grant, Policy};
    use airlock::sandbox::{self, Launch};
    use airlock::task::{TaskDir, TaskId};
    let w = World::new();
    let tasks = w.state().join("tasks");
    let exe = airlock_bin();
    let children = |pid: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z ") && !s.contains(") X "))
            .unwrap_or(false)
    };
    let policy = Policy {
        grants: vec![Grant {
            path: w.project.clone(),
            access: Access::Rw,
        }],
        ..Default::default()
    };
    let argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        "echo x > ran".to_string(),
    ];
    for attempt in ["given up", "another plan"] {
        let task_dir = TaskDir::new(&tasks, &TaskId::generate());
        std::fs::create_dir_all(task_dir.path()).unwrap();
        let base = sandbox::plan::base(&policy, &task_dir).unwrap();
        let (mut spec, _) = sandbox::plan::plan(&policy, &argv, &task_dir, &base).unwrap();
        let starting = sandbox::start(
            &base,
            Launch::New {
                exe: &exe,
                stdin: None,
                stdout: None,
                stderr: None,
            },
            |_| Ok(()),
        )
        .unwrap();
        let helper = starting.pid();
        // PID 1 exists and builds the base while nothing is planned yet.
        let mut pid1 = None;
        for _ in 0..200 {
            pid1 = children(helper).first().copied();
            if pid1.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid1 = pid1.expect("the helper made PID 1 before its plan");
        if attempt == "given up" {
            drop(starting);
        } else {
            spec.user.uid += 1;
            spec.user.name = "someone-else".into();
            assert!(
                starting.plan(&spec).is_err(),
                "a plan for another sandbox was sent"
            );
        }
        let mut gone = false;
        for _ in 0..300 {
            if !alive(helper) && !alive(pid1) {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone, "{attempt}: the helper or PID 1 is still running");
        for written in [w.project.join("ran"), task_dir.upper(0).join("ran")] {
            assert!(!written.exists(), "{attempt}: the agent ran ({written:?})");
        }
    }
}

/// `--max-upper` against a folder the agent makes unreadable to the
/// supervisor (`chmod 300`: it can still write there): the task is stopped
/// rather than left to fill the disk unmeasured.
#[test]
fn escape_max_upper_with_an_unreadable_folder() {
    let w = World::new();
    let o = run_with_max_upper(
        &w,
        "8M",
        "mkdir d && chmod 300 d && for i in 1 2 3 4 5; do head -c 6000000 /dev/zero > d/big$i; done; echo wrote; sleep 5; echo not stopped",
    );
    let t = text(&o);
    assert!(
        !o.status.success() && !t.contains("not stopped"),
        "30 MB in an unreadable folder went past --max-upper 8M: {t}"
    );
}

/// Empty files cost the host an inode each, and a disk runs out of inodes
/// long before bytes (ext4: one per 16 KiB). `--max-upper` counts every
/// entry as at least a block, so 40 MiB stops the task near 10,000 empty
/// files; at an inode's own size it allowed 160,000.
#[test]
fn escape_inode_exhaustion_of_a_rw_grant() {
    let w = World::new();
    let o = run_with_max_upper(
        &w,
        "40M",
        "python3 -c 'import os, time
os.mkdir(\"many\")
for b in range(40):
    for i in range(1000):
        os.mknod(\"many/%d-%d\" % (b, i))
    time.sleep(0.05)
print(\"not stopped\")
'",
    );
    let t = text(&o);
    let made = std::fs::read_dir(upper(&w).join("many"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        !o.status.success() && !t.contains("not stopped") && made < 20_000,
        "{made} empty files went past --max-upper 40M: {t}"
    );
}

/// Preallocation reserves disk faster than the --max-upper watchdog walks
/// the layer: 150 files of just under the limit each once passed a 10 MiB
/// limit 150 times over. fallocate answers EOPNOTSUPP, so glibc writes the
/// blocks, and the watchdog stops the task near the limit.
#[test]
fn escape_max_upper_with_preallocated_files() {
    // Under our profile, and under an imported allow-all one: the rule
    // that keeps the limit enforceable is added to any profile.
    for imported in [false, true] {
        let w = World::new();
        let profile = w.path().join("allow-all.json");
        std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#).unwrap();
        let grant = format!("{}:rw", w.project.display());
        let mut args = vec!["--grant", &grant, "--max-upper", "10M"];
        let profile_arg = profile.display().to_string();
        if imported {
            args.extend(["--seccomp-profile", &profile_arg]);
        }
        // fallocate, and the generic ioctls that do the same (pass 19A:
        // FS_IOC_RESVSP, FS_IOC_RESVSP64, FS_IOC_ZERO_RANGE took the disk).
        let o = w.run(
            &args,
            "python3 -c 'import fcntl, os, struct
size = 10 * 1024 * 1024 - 4096
resv = struct.pack(\"<hhxxxxqqii16x\", 0, 0, 0, size, 0, 0)
for i in range(150):
    fd = os.open(\"big%d\" % i, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        if i < 120:
            fcntl.ioctl(fd, (0x40305828, 0x4030582a, 0x40305839)[i % 3], resv)
        else:
            os.posix_fallocate(fd, 0, size)
    except OSError as e:
        print(\"refused\", i, e.errno)
    os.close(fd)
print(\"not stopped\")
'",
        );
        let t = text(&o);
        use std::os::unix::fs::MetadataExt;
        let used: u64 = walk(&upper(&w))
            .iter()
            .filter_map(|p| std::fs::symlink_metadata(p).ok())
            .map(|m| m.blocks() * 512)
            .sum();
        assert!(
            !t.contains("not stopped") && used < 200 << 20,
            "{} MiB reserved past --max-upper 10M (imported profile: {imported}): {t}",
            used >> 20
        );
    }
}

/// Memory that neither RLIMIT_DATA (the memory limit without a cgroup)
/// nor the scan of shared memory counted (pass 19A): secret memory
/// (`memfd_secret`, in no process's resident size once unmapped), a
/// growing-down mapping (stack to the kernel, outside RLIMIT_DATA) and
/// transparent huge pages pinned by `vmsplice` into pipes. And the user's
/// pipe-buffer quota, counted per host user: 63 pipes enlarged to 1 MiB
/// shrank the user's own new pipes to 8 KiB. Checked on the host while the
/// agent says it holds what it could get: the machine's unevictable memory,
/// the agent's resident size, and a new pipe of the test's own.
#[test]
fn escape_memory_that_no_limit_counts() {
    let w = World::new();
    let marker = "airlock-19a-hold";
    let script = format!(
        "python3 -c 'import ctypes, fcntl, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MiB = 1 << 20
bad = ctypes.c_void_p(-1).value
fd = libc.syscall(447, 0)
got = 0
if fd >= 0:
    os.ftruncate(fd, 512 * MiB)
    for off in range(0, 512 * MiB, MiB):
        p = libc.mmap(None, MiB, 3, 1, fd, off)
        if p in (None, bad):
            break
        ctypes.memset(p, 1, MiB)
        libc.munmap(p, MiB)
        got += 1
print(\"secret\", fd, got, flush=True)
p = libc.mmap(None, 512 * MiB, 3, 0x22 | 0x100, -1, 0)
if p not in (None, bad):
    ctypes.memset(p, 1, 512 * MiB)
print(\"growsdown\", p not in (None, bad), flush=True)
pinned = 0
buf = mmap.mmap(-1, 64 * MiB)
buf.madvise(14)
pipes = []
for i in range(63):
    r, w = os.pipe()
    pipes.append((r, w))
    try:
        fcntl.fcntl(w, 1031, MiB)
    except OSError:
        pass
    os.set_blocking(w, False)
for (r, w) in pipes[:8]:
    for j in range(16):
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf, ((pinned * 2) % 64) * MiB))
        iov = (ctypes.c_void_p * 2)(addr, 4096)
        if libc.syscall(278, w, iov, 1, 0) != 4096:
            break
        pinned += 1
print(\"vmsplice\", pinned, flush=True)
del buf
print(\"HOLDING\", flush=True)
time.sleep(4)
' {marker}"
    );
    let unevictable = || -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Unevictable:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    // The agent's resident size, found on the host by its command line.
    let agent_rss = || -> Option<u64> {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            if !cmd.ends_with(format!("{marker}\0").as_bytes()) || !cmd.starts_with(b"python3") {
                return None;
            }
            let st = std::fs::read_to_string(e.path().join("status")).ok()?;
            st.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
    };
    let before = unevictable();
    let mut c = w.cmd(&["run", "--memory", "64M", "--", "sh", "-c", &script]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut out, &mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.starts_with("HOLDING") {
            break;
        }
        line.clear();
    }
    assert!(
        seen.contains("HOLDING"),
        "the agent did not get that far: {seen}"
    );
    let during = unevictable();
    let rss = agent_rss().unwrap_or(0);
    // A new pipe of the user's own still gets its default size and can be
    // enlarged (as root the quota does not apply; the check still runs).
    let mut p = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    let default = unsafe { libc::fcntl(p[1], libc::F_GETPIPE_SZ) };
    let enlarged = unsafe { libc::fcntl(p[1], libc::F_SETPIPE_SZ, 1 << 20) };
    unsafe {
        libc::close(p[0]);
        libc::close(p[1]);
    }
    let _ = child.wait();
    let grew = during.saturating_sub(before) >> 10;
    assert!(
        grew < 256,
        "{grew} MiB of secret memory held under --memory 64M: {seen}"
    );
    assert!(
        rss >> 10 < 256,
        "the agent holds {} MiB resident under --memory 64M: {seen}",
        rss >> 10
    );
    assert!(
        seen.contains("vmsplice 0\n"),
        "pages pinned into pipes: {seen}"
    );
    assert_eq!(
        default, 65536,
        "the user's new pipe shrank while the task ran: {seen}"
    );
    assert!(
        enlarged >= 1 << 20,
        "the user's pipe could not be enlarged while the task ran: {seen}"
    );
}

/// Deletions hidden behind a folder made anew: `rm -rf src; mkdir src`
/// leaves only a folder in the upper layer. The summary, the task list and
/// the state must still say there is something to review (the count once
/// took only the upper layer's files, said 0, and left the task prunable).
#[test]
fn escape_deletions_under_a_replaced_folder_are_counted() {
    let w = World::new();
    let src = w.project.join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("f{i}.rs")), "code\n").unwrap();
    }
    chmod(&src, 0o777);
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "rm -rf src && mkdir src && echo replaced",
    );
    let t = text(&o);
    assert!(t.contains("replaced"), "{t}");
    assert!(t.contains("files changed, waiting for review"), "{t}");
    assert!(!t.contains("no files changed"), "{t}");
    let tasks = text(&output_within(w.cmd(&["tasks"]), Duration::from_secs(60)));
    assert!(tasks.contains("reviewing"), "{tasks}");
    // The user's files are untouched until a commit.
    assert_eq!(std::fs::read_dir(&src).unwrap().count(), 3);
}

/// The commit's own temporaries and set-aside originals live beside their
/// targets. Names an agent (or the user) could foresee were taken for the
/// commit's: an approved new `.airlock-1-0.orig` was deleted at the end, a
/// user's file of such a name likewise, and a new `.airlock-1-2.tmp` made
/// every full commit fail. The names now carry a random part.
#[test]
fn escape_commit_temporary_names_cannot_be_foreseen() {
    let w = World::new();
    std::fs::write(w.project.join("a.txt"), "old\n").unwrap();
    std::fs::write(w.project.join(".airlock-1-1.orig"), "the user's\n").unwrap();
    chmod(&w.project.join("a.txt"), 0o666);
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "echo new > a.txt; for n in .airlock-1-0.orig .airlock-1-0.tmp .airlock-1-2.tmp .airlock-1-3.orig; \
         do echo agent > $n; done; echo done",
    );
    assert!(text(&o).contains("done"), "{}", text(&o));
    let id = w.tasks().pop().unwrap();
    let id = id.file_name().unwrap().to_string_lossy().to_string();
    let c = output_within(w.cmd(&["commit", &id]), Duration::from_secs(60));
    let ct = text(&c);
    assert!(c.status.success(), "{ct}");
    assert_eq!(
        std::fs::read_to_string(w.project.join("a.txt")).unwrap(),
        "new\n"
    );
    for n in [
        ".airlock-1-0.orig",
        ".airlock-1-0.tmp",
        ".airlock-1-2.tmp",
        ".airlock-1-3.orig",
    ] {
        assert_eq!(
            std::fs::read_to_string(w.project.join(n)).unwrap_or_default(),
            "agent\n",
            "{n}: {ct}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(w.project.join(".airlock-1-1.orig")).unwrap_or_default(),
        "the user's\n",
        "{ct}"
    );
    // Nothing of the commit's own is left behind.
    let left: Vec<String> = std::fs::read_dir(&w.project)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() > 20 && n.starts_with(".airlock-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The relay reads stdin a page at a time and waits for room in the
/// task's one-page pipe. A task that enlarged its pipe and left input in
/// it made room without end: the helper, outside every limit, spun at
/// 100 % CPU. Measured on the host: the CPU time of `airlock run` and its
/// children while the task sleeps 2 s.
#[test]
fn escape_a_task_cannot_make_the_relay_spin() {
    let w = World::new();
    // F_SETPIPE_SZ (up to a pipe's default size: larger is refused since
    // pass 19A); the input stays unread.
    let script = r#"echo hi | "$AIRLOCK" run --local -- python3 -c 'import fcntl, os, time
fcntl.fcntl(0, 1031, 65536)
time.sleep(2)
print("slept")'; times"#;
    let o = host_shell(&w, "sh", script, None);
    let t = text(&o);
    assert!(t.contains("slept"), "{t}");
    // `times`: the shell's user and system time, then its children's.
    let children = t
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains("m"))
        .nth(1)
        .unwrap_or_else(|| panic!("{t}"));
    let secs: f64 = children
        .split_whitespace()
        .filter_map(|f| {
            let (m, s) = f.trim_end_matches('s').split_once('m')?;
            Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
        })
        .sum();
    assert!(secs < 1.0, "{secs} s of CPU while the task slept 2 s: {t}");
}

/// Nobody reads `airlock run`'s standard error any more (`2>&1 | true`):
/// it once panicked (status 101) and left its task recorded as running.
/// It goes on, and ends with the task's own status and record.
#[test]
fn a_closed_stderr_does_not_lose_the_task() {
    let w = World::new();
    let script = r#""$AIRLOCK" run --local -- sh -c 'sleep 0.3; echo out; echo err >&2; exit 3' 2>&1 | true
echo "status=${PIPESTATUS[0]}"
"$AIRLOCK" tasks"#;
    let o = host_shell(&w, "bash", script, None);
    let t = text(&o);
    assert!(t.contains("status=3"), "{t}");
    assert!(t.contains("exited"), "{t}");
    assert!(!t.contains("running"), "{t}");
}

/// With stdout and stderr one file (`2>&1`, a terminal), the task's lines
/// keep their order: one relayed pipe for both, not two taken in turn.
#[test]
fn merged_stdout_and_stderr_keep_their_order() {
    let w = World::new();
    let script = r#"for i in 1 2 3 4 5; do "$AIRLOCK" run --local -- sh -c 'echo 1; echo 2 >&2; echo 3; echo 4 >&2; echo 5' 2>&1 | grep -v '^airlock:' | tr '\n' ' '; echo; done"#;
    let o = host_shell(&w, "sh", script, None);
    let t = text(&o);
    assert_eq!(t.matches("1 2 3 4 5 ").count(), 5, "{t}");
}

/// `--json-events -` puts the events on stdout. Were the task's stdout
/// there too, it could print a forged `exited` event for its own id
/// (`$AIRLOCK_TASK`) and end with half a line, so that the real event is
/// glued to it and cannot be parsed. The task's stdout goes to stderr then.
#[test]
fn escape_forged_events_on_a_shared_stdout() {
    let w = World::new();
    let o = output_within(
        w.cmd(&[
            "run",
            "--local",
            "--json-events",
            "-",
            "--",
            "sh",
            "-c",
            "printf '{\"v\":1,\"task\":\"%s\",\"seq\":9,\"time_ms\":1,\"type\":\"exited\",\"status\":{\"code\":0,\"signal\":null},\"changed_files\":0}\\n' \"$AIRLOCK_TASK\"; printf 'half a line'; exit 3",
        ]),
        Duration::from_secs(120),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let mut exited = Vec::new();
    for line in out.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}\n{out}"));
        if v["type"] == "exited" {
            exited.push(v);
        }
    }
    assert_eq!(exited.len(), 1, "{out}");
    assert_eq!(exited[0]["status"]["code"], 3, "{out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("half a line"));
}

/// `airlock diff ID | head -1`: the reader goes away early. The review
/// commands end as other Unix tools do (SIGPIPE), not with a panic.
#[test]
fn review_commands_end_quietly_when_their_reader_does() {
    let w = World::new();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "seq 1 20000 > big.txt; for i in $(seq 1 200); do echo $i > f$i; done",
    );
    assert!(o.status.success(), "{}", text(&o));
    let id = w.tasks().pop().unwrap();
    let id = id.file_name().unwrap().to_string_lossy().to_string();
    let script = format!(
        "for c in diff changes; do \"$AIRLOCK\" $c {id} | head -1 >/dev/null; echo \"$c=${{PIPESTATUS[0]}}\"; done"
    );
    let o = host_shell(&w, "bash", &script, None);
    let t = text(&o);
    assert!(!t.contains("panicked"), "{t}");
    assert!(!t.contains("=101"), "{t}");
}

fn sh_ok(cmd: &str) {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", text(&o));
}

fn host_out(cmd: &str) -> String {
    text(&Command::new("sh").args(["-c", cmd]).output().unwrap())
}

/// ACLs and extended attributes at commit. A folder whose default ACL
/// keeps group and others out: what the commit creates there stays private
/// (a chmod to the umask's 0644 had opened it). A file the user guarded
/// with an ACL and an attribute keeps both after the agent's edit is
/// committed (the new content goes in a new inode), and after undo.
#[test]
fn acls_and_attributes_survive_the_commit() {
    if Command::new("setfacl").arg("--version").output().is_err() {
        eprintln!("skipped: setfacl (package acl) is not installed");
        return;
    }
    let w = World::new();
    let private = w.project.join("private");
    std::fs::create_dir(&private).unwrap();
    let guarded = w.project.join("guarded.txt");
    std::fs::write(&guarded, "v1\n").unwrap();
    chmod(&guarded, 0o640);
    if is_root() {
        // The agent runs as nobody then: these must be its to write.
        for p in [&private, &guarded] {
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        }
        chmod(&guarded, 0o660);
    }
    chmod(&private, 0o770);
    let q = |p: &Path| format!("'{}'", p.display());
    sh_ok(&format!(
        "setfacl -d -m u::rwx,g::---,o::--- {}",
        q(&private)
    ));
    sh_ok(&format!("setfacl -m g:users:r {}", q(&guarded)));
    let cpath = std::ffi::CString::new(guarded.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: setxattr with buffers we own.
    let r = unsafe {
        libc::setxattr(
            cpath.as_ptr(),
            c"user.note".as_ptr(),
            b"keep".as_ptr().cast(),
            4,
            0,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let acl_before = host_out(&format!("getfacl -cp {}", q(&guarded)));
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "umask 0; echo secret > private/new.txt; mkdir private/sub; \
         chmod 0666 private/new.txt; chmod 0777 private/sub; echo v2 >> guarded.txt; echo done",
    );
    assert!(text(&o).contains("done"), "{}", text(&o));
    let id = w.tasks().pop().unwrap();
    let id = id.file_name().unwrap().to_string_lossy().to_string();
    let mut c = w.command("sh");
    c.args(["-c", "umask 022; exec \"$AIRLOCK\" commit \"$0\""])
        .arg(&id);
    let ct = text(&output_within(c, Duration::from_secs(60)));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&private.join("new.txt")), 0o600, "{ct}");
    assert_eq!(mode(&private.join("sub")), 0o700, "{ct}");
    assert_eq!(
        std::fs::read_to_string(&guarded).unwrap(),
        "v1\nv2\n",
        "{ct}"
    );
    let xattr = |p: &Path| {
        let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let mut buf = [0u8; 16];
        // SAFETY: getxattr writes at most buf.len() bytes into buf.
        let n = unsafe {
            libc::getxattr(
                cp.as_ptr(),
                c"user.note".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        (n > 0).then(|| buf[..n as usize].to_vec())
    };
    let acl_after = host_out(&format!("getfacl -cp {}", q(&guarded)));
    assert_eq!(acl_after, acl_before, "{ct}");
    assert!(acl_after.contains("group:users:r--"), "{acl_after}");
    assert_eq!(xattr(&guarded).as_deref(), Some(&b"keep"[..]), "{ct}");
    // Undo puts the first version back, ACL and attribute included.
    let u = output_within(w.cmd(&["undo", &id]), Duration::from_secs(60));
    assert!(u.status.success(), "{}", text(&u));
    assert_eq!(std::fs::read_to_string(&guarded).unwrap(), "v1\n");
    assert_eq!(
        host_out(&format!("getfacl -cp {}", q(&guarded))),
        acl_before
    );
    assert_eq!(xattr(&guarded).as_deref(), Some(&b"keep"[..]));
}

/// The agent replaced the user's file `b.txt` with a folder holding `one`.
/// Committing only `b.txt/one` needs that folder, which deletes the user's
/// file: it once did so unasked. Now it is refused until `b.txt` is named.
#[test]
fn a_partial_commit_does_not_replace_an_unnamed_file() {
    let w = World::new();
    let b = w.project.join("b.txt");
    std::fs::write(&b, "the user's\n").unwrap();
    chmod(&b, 0o666);
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "rm b.txt && mkdir b.txt && echo agent > b.txt/one && echo done",
    );
    assert!(text(&o).contains("done"), "{}", text(&o));
    let id = w.tasks().pop().unwrap();
    let id = id.file_name().unwrap().to_string_lossy().to_string();
    let inner = b.join("one").display().to_string();
    let c = output_within(
        w.cmd(&["commit", &id, "--only", &inner]),
        Duration::from_secs(60),
    );
    let ct = text(&c);
    assert!(!c.status.success(), "{ct}");
    assert!(ct.contains("in place of your file"), "{ct}");
    assert_eq!(std::fs::read_to_string(&b).unwrap(), "the user's\n", "{ct}");
    // Named too, the replacement is what the user chose.
    let both = b.display().to_string();
    let c = output_within(
        w.cmd(&["commit", &id, "--only", &both, "--only", &inner]),
        Duration::from_secs(60),
    );
    assert!(c.status.success(), "{}", text(&c));
    assert_eq!(std::fs::read_to_string(b.join("one")).unwrap(), "agent\n");
}

/// Starts a task that prints one line once it holds what it could get,
/// then waits for its stdin to close: the task, and that line.
fn holding(mut c: Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    (child, line)
}

/// `airlock run` with the project granted read-write and `--max-upper`.
/// The task was stopped (failed, never printed "not stopped"), and its
/// output says why, naming `why`.
fn assert_stopped_for(o: &std::process::Output, why: &str) {
    let t = text(o);
    assert!(
        !o.status.success() && !t.contains("not stopped") && t.contains(why),
        "{t}"
    );
}

fn run_with_max_upper(w: &World, limit: &str, script: &str) -> std::process::Output {
    let grant = format!("{}:rw", w.project.display());
    w.run(&["--grant", &grant, "--max-upper", limit], script)
}

/// `sh -c SCRIPT` on the host with this world's environment and `$AIRLOCK`
/// naming the binary, at most 120 s.
fn host_shell(w: &World, shell: &str, script: &str, stdin: Option<&str>) -> std::process::Output {
    let mut c = w.command(shell);
    match stdin {
        None => {
            c.args(["-c", script]);
            output_within(c, Duration::from_secs(120))
        }
        // The script comes on stdin, as with `curl … | sh`.
        Some(text) => {
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().expect("shell");
            let mut input = child.stdin.take().unwrap();
            std::io::Write::write_all(&mut input, text.as_bytes()).unwrap();
            drop(input);
            let _ = script;
            child.wait_with_output().unwrap()
        }
    }
}

/// A shell reading a script from a pipe runs `airlock run`. Were the pipe
/// the task's stdin, the task could reopen it for writing through
/// /proc/self/fd/0 and append commands that the shell runs on the host
/// after the task. The task's stdin is a pipe of its own instead.
#[test]
fn escape_through_the_stdin_pipe_of_a_shell() {
    let w = World::new();
    let mark = w.outside.join("INJECTED");
    let script = format!(
        "\"$AIRLOCK\" run --local -- sh -c 'printf \"%s\\n\" \"touch {m}\" > /proc/self/fd/0; printf \"%s\\n\" \"touch {m}\" > /dev/stdin; echo tried'\n",
        m = mark.display()
    );
    let o = host_shell(&w, "bash", "", Some(&script));
    let t = text(&o);
    assert!(t.contains("tried"), "{t}");
    assert!(
        !mark.exists(),
        "the host shell ran a command the task wrote: {t}"
    );
}

/// A folder or file on the task's stdio: metadata calls (chmod, times,
/// xattrs) are outside Landlock's reach, `..` leads on from a folder, and
/// `>>` could lose its append flag. None of that reaches the host: the
/// task's stdio is pipes that the helper relays.
#[test]
fn escape_through_a_folder_or_file_on_stdio() {
    let w = World::new();
    let dir = w.outside.join("dir");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    plant(&dir.join("secret.txt"));
    let log = w.outside.join("app.log");
    std::fs::write(&log, "LINE 1\nLINE 2\n").unwrap();
    chmod(&log, 0o644);
    let before = std::fs::metadata(&log).unwrap();
    let py = r#"import os, fcntl
for fd in (0, 1):
    for what, f in (("chmod", lambda: os.fchmod(fd, 0o777)), ("utime", lambda: os.utime(fd, (0, 0))),
                    ("xattr", lambda: os.setxattr(fd, "user.planted", b"x"))):
        try:
            f(); print(what, fd, "done", flush=True)
        except OSError as e:
            print(what, fd, e.errno, flush=True)
try:
    d = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=0)
    print("LISTED", os.listdir(d), flush=True)
except OSError as e:
    print("dotdot", e.errno, flush=True)
try:
    print(open("/proc/self/fd/0/secret.txt").read(), flush=True)
except OSError as e:
    print("read", e.errno, flush=True)
fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) & ~os.O_APPEND)
for f in (lambda: os.lseek(1, 0, 0), lambda: os.ftruncate(1, 0)):
    try:
        f()
    except OSError as e:
        print("seek/truncate", e.errno, file=__import__("sys").stderr)
os.write(1, b"FROM TASK\n")
"#;
    let script = format!(
        "\"$AIRLOCK\" run --local -- python3 -c '{py}' < '{d}' >> '{l}'",
        d = dir.display(),
        l = log.display()
    );
    let o = host_shell(&w, "sh", &script, None);
    let t = text(&o);
    let content = std::fs::read_to_string(&log).unwrap();
    assert!(content.starts_with("LINE 1\nLINE 2\n"), "{content}\n{t}");
    assert!(content.ends_with("FROM TASK\n"), "{content}\n{t}");
    assert!(
        !content.contains("LISTED") && !content.contains(SECRET),
        "{content}"
    );
    use std::os::unix::fs::PermissionsExt;
    let after = std::fs::metadata(&log).unwrap();
    assert_eq!(after.permissions().mode() & 0o7777, 0o644, "{content}");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert!(after.modified().unwrap() >= before.modified().unwrap());
    let xattr = Command::new("getfattr")
        .args(["-n", "user.planted"])
        .arg(&log)
        .output();
    if let Ok(x) = xattr {
        assert!(!String::from_utf8_lossy(&x.stdout).contains("planted"));
    }
}

/// Without `--tty` the user's terminal is not the task's either: what a
/// task does to its stdio (echo and canonical mode off, non-blocking,
/// exclusive, output stopped, mode 0666) leaves the terminal as it was.
/// Run under `script` for a real terminal.
#[test]
fn escape_the_users_terminal_is_not_the_tasks() {
    let w = World::new();
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let py = r#"import os, fcntl, termios
for fd in (0, 1, 2):
    for f in (lambda: fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK),
              lambda: fcntl.ioctl(fd, termios.TIOCEXCL), lambda: os.fchmod(fd, 0o666),
              lambda: termios.tcflow(fd, termios.TCOOFF)):
        try:
            f()
        except (OSError, termios.error):
            pass
print("\x1b[8m", end="")
"#;
    let line = format!(
        "{} run --local -- sh -c 'stty -echo -icanon; python3 -c \"$0\"' '{}'; stty -a; stat -c MODE=%a \"$(tty)\"; python3 -c 'import fcntl, os; print(\"NONBLOCK\", bool(fcntl.fcntl(0, fcntl.F_GETFL) & os.O_NONBLOCK)); os.close(os.open(\"/dev/tty\", os.O_RDWR)); print(\"TTY-OPENS\")'; echo END",
        airlock_bin().display(),
        py.replace('\'', "'\\''")
    );
    let mut c = w.command("script");
    c.args(["-qfec", &line, "/dev/null"]);
    let o = output_within(c, Duration::from_secs(120));
    let t = text(&o);
    assert!(t.contains("exited with status"), "{t}");
    let settings: Vec<&str> = t.split_whitespace().collect();
    assert!(settings.contains(&"echo"), "echo stayed off: {t}");
    assert!(
        settings.contains(&"icanon"),
        "canonical mode stayed off: {t}"
    );
    assert!(!t.contains("MODE=666"), "{t}");
    assert!(t.contains("NONBLOCK False"), "{t}");
    assert!(t.contains("TTY-OPENS"), "{t}");
    assert!(t.contains("END"), "output stayed stopped: {t}");
    // Text made invisible (SGR 8) by the agent ends before the summary.
    assert!(
        t.contains("\x1b[!p\x1b[0m")
            && t.contains("\x1b]104\x07\x1b]110\x07\x1b]111\x07airlock: task"),
        "{t:?}"
    );
}

/// `/tmp` as a whole cannot be granted: other sessions keep their secrets
/// there (Kerberos ticket caches, ssh agents) under names that appear at
/// any time, which no list made at the start hides. Refused, and nothing
/// of the secrets planted there is shown.
#[test]
fn escape_session_secrets_in_a_granted_tmp() {
    let w = World::new();
    let tag = format!(
        "{}-{}",
        std::process::id(),
        w.path().display().to_string().len()
    );
    let krb = std::path::PathBuf::from(format!("/tmp/krb5cc_airlocktest{tag}"));
    let ssh = std::path::PathBuf::from(format!("/tmp/ssh-airlocktest{tag}"));
    // Not `plant`: it would chmod the parent, /tmp itself.
    std::fs::write(&krb, SECRET).unwrap();
    chmod(&krb, 0o644);
    std::fs::create_dir_all(&ssh).unwrap();
    chmod(&ssh, 0o755);
    std::fs::write(ssh.join("agent.1"), SECRET).unwrap();
    chmod(&ssh.join("agent.1"), 0o644);
    for grant in ["/tmp:ro", "/tmp:rw", "/tmp/.:ro"] {
        let o = w.run(
            &["--grant", grant],
            &format!(
                "cat {k} 2>&1; cat {s}/agent.1 2>&1; ls /tmp | grep airlocktest; echo end",
                k = krb.display(),
                s = ssh.display()
            ),
        );
        let t = text(&o);
        assert!(!o.status.success() && !t.contains("end"), "{grant}: {t}");
        assert!(t.contains("other sessions' secrets"), "{grant}: {t}");
        assert_no_secret(&o);
    }
    let _ = std::fs::remove_file(&krb);
    let _ = std::fs::remove_dir_all(&ssh);
}

/// An agent that leaves unreadable entries in its layer (`chmod 000`) must
/// not make its whole review fail: the other changes stay reviewable and
/// committable.
#[test]
fn escape_unreadable_entries_do_not_block_the_review() {
    let w = World::new();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "mkdir -p ok sub/deeper && echo a > ok/a && echo b > sub/deeper/f && \
         chmod 000 sub/deeper/f && chmod 100 sub/deeper && chmod 000 sub && echo done",
    );
    assert!(text(&o).contains("done"), "{}", text(&o));
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_string_lossy().to_string();
    let ch = output_within(w.cmd(&["changes", &id]), Duration::from_secs(60));
    let t = text(&ch);
    assert!(ch.status.success(), "{t}");
    assert!(t.contains("ok/a") && t.contains("sub/deeper/f"), "{t}");
    let c = output_within(w.cmd(&["commit", &id]), Duration::from_secs(60));
    assert!(c.status.success(), "{}", text(&c));
    assert_eq!(
        std::fs::read_to_string(w.project.join("ok/a")).unwrap(),
        "a\n"
    );
}

/// Pass 9B: `airlock commit ID | head` panicked on the closed pipe after
/// the first grant was committed: the second grant was left out, nothing
/// reached the audit log, and a later `reject` said the changes were
/// discarded while the first grant's stayed on disk. A closed stdout now
/// changes nothing about what a commit does.
#[test]
fn escape_a_closed_stdout_does_not_cut_a_commit_short() {
    let w = World::new();
    let second = w.path().join("second");
    std::fs::create_dir(&second).unwrap();
    chmod(&second, 0o777);
    let o = w.run(
        &[
            "--grant",
            &format!("{}:rw", w.project.display()),
            "--grant",
            &format!("{}:rw", second.display()),
        ],
        &format!("echo a > a.txt; echo b > {}/b.txt", second.display()),
    );
    assert!(o.status.success(), "{}", text(&o));
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_str().unwrap().to_string();
    let mut c = w.cmd(&["commit", &id]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(w.project.join("a.txt").exists() && second.join("b.txt").exists());
    let tasks = text(&output_within(w.cmd(&["tasks"]), Duration::from_secs(60)));
    assert!(tasks.contains("committed"), "{tasks}");
}

/// Pass 9A: the watchdog checks between intervals, so a task that wrote
/// past `--max-upper` and ended before the next check was never told
/// about. What it left is measured once more at its end.
#[test]
fn escape_max_upper_passed_just_before_the_end_is_reported() {
    let w = World::new();
    let o = run_with_max_upper(
        &w,
        "10M",
        "head -c 8000000 /dev/zero > a; head -c 8000000 /dev/zero > b; echo wrote",
    );
    let t = text(&o);
    assert!(t.contains("wrote"), "{t}");
    assert!(t.contains("more than the 10 MiB allowed"), "{t}");
}

/// Pass 9A: reject walked the agent's layer by path, so a tree deeper
/// than PATH_MAX (made through relative paths) could not be rejected and
/// stayed on disk. It goes by directory descriptors now, locked folders
/// included.
#[test]
fn escape_a_layer_deeper_than_path_max_can_still_be_rejected() {
    let w = World::new();
    let name = "d".repeat(250);
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        &format!(
            "python3 -c 'import os
for i in range(30):
    os.mkdir(\"{name}\"); fd = os.open(\"{name}\", os.O_RDONLY); os.fchdir(fd); os.close(fd)
open(\"payload\", \"wb\").write(bytes(100000))
os.mkdir(\"locked\"); open(\"locked/f\", \"w\").write(\"x\"); os.chmod(\"locked\", 0)
print(\"built\")'"
        ),
    );
    assert!(text(&o).contains("built"), "{}", text(&o));
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_str().unwrap().to_string();
    let o = output_within(w.cmd(&["reject", &id]), Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o));
    assert!(!task.join("upper/0").exists() && !task.join("work/0").exists());
}

/// Pass 9B: names the agent chose reached the terminal raw inside
/// Airlock's own lines: the warning about entries it left unreadable,
/// and the JSON of `--json-events` (C1 CSI and bidi overrides, which
/// serde_json leaves as they are).
#[test]
fn escape_agent_chosen_names_never_reach_the_terminal_raw() {
    let w = World::new();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "f=$(printf 'x\\033[2Jy'); echo s > \"$f\"; chmod 000 \"$f\"; \
         echo s > \"$(printf 'a\\342\\200\\256b\\302\\233c')\"; true",
    );
    let t = text(&o);
    assert!(!t.contains("x\x1b[2J"), "{t:?}");
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_str().unwrap().to_string();
    let o = output_within(w.cmd(&["changes", &id, "--json"]), Duration::from_secs(60));
    let t = text(&o);
    assert!(t.contains("\\u202e"), "{t:?}");
    assert!(!t.contains('\u{202e}') && !t.contains('\u{9b}'), "{t:?}");
}

/// Pass 9A: a file deleted while still open takes the disk until it is
/// closed, and no walk of the layer sees it: 150 MiB held under
/// `--max-upper 10M`. Such files of the task's processes count too.
#[test]
fn escape_max_upper_with_deleted_files_held_open() {
    let w = World::new();
    let o = run_with_max_upper(
        &w,
        "10M",
        "python3 -c 'import os, time
held = []
for i in range(10):
    f = open(\"held%d\" % i, \"wb\"); f.write(bytes(6000000)); f.flush(); os.unlink(\"held%d\" % i); held.append(f)
    time.sleep(0.2)
time.sleep(20)
print(\"not stopped\")'",
    );
    let t = text(&o);
    assert!(
        !o.status.success() && !t.contains("not stopped"),
        "60 MB held open past --max-upper 10M: {t}"
    );
}

/// Pass 10: a file mapped, then closed and deleted, holds the disk with
/// no descriptor left (135 MiB under `--max-upper 10M`); and a program
/// the supervisor may not inspect (run from a file it may not read) held
/// deleted files unseen. Mapped deleted files count; an uninspectable
/// program stops the task (an unprivileged supervisor cannot look into
/// it; root can, and counts what it holds).
#[test]
fn escape_max_upper_with_mapped_or_hidden_deleted_files() {
    let w = World::new();
    let o = run_with_max_upper(
        &w,
        "10M",
        "python3 -c 'import ctypes, os, time
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
for i in range(10):
    open(\"m%d\" % i, \"wb\").write(bytes(6000000))
    fd = os.open(\"m%d\" % i, os.O_RDONLY)
    libc.mmap(None, 6000000, 1, 1, fd, 0)
    os.close(fd); os.unlink(\"m%d\" % i)
    time.sleep(0.2)
time.sleep(20)
print(\"not stopped\")'",
    );
    let t = text(&o);
    assert!(
        !o.status.success() && !t.contains("not stopped"),
        "60 MB mapped past --max-upper 10M: {t}"
    );
    // Made undumpable by prctl: answered with success and not done, so
    // its files stay in view and count.
    let o = run_with_max_upper(
        &w,
        "10M",
        "python3 -c 'import ctypes, os, time
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
held = []
for i in range(10):
    f = open(\"p%d\" % i, \"wb\"); f.write(bytes(6000000)); f.flush(); os.unlink(\"p%d\" % i); held.append(f)
    time.sleep(0.2)
time.sleep(20)
print(\"dumpable\", ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), \"not stopped\")'",
    );
    assert_stopped_for(&o, "more than the 10 MiB");
    // Root reads every process: only the unprivileged user meets one it
    // may not inspect.
    // SAFETY: geteuid only reads.
    if unsafe { libc::geteuid() } != 0 {
        let o = run_with_max_upper(
            &w,
            "10M",
            "cp /bin/sleep /tmp/hidden && chmod 111 /tmp/hidden && /tmp/hidden 20; echo not stopped",
        );
        assert_stopped_for(&o, "cannot be inspected");
    }
}

/// A process that has ended but is not yet reaped (a zombie), or is letting
/// go of its memory on the way out, shows a root-owned `fd` folder just like
/// a program that hides from us. It runs nothing and holds nothing: the
/// task it belongs to must go on (an unprivileged run stopped every task
/// that left a child unreaped for a moment, `tar | wc` among them).
#[test]
fn a_zombie_in_the_task_is_not_taken_for_a_hidden_program() {
    let w = World::new();
    let o = run_with_max_upper(
        &w,
        "10M",
        "python3 -c 'import os, time
for i in range(5):
    if os.fork() == 0:
        os._exit(0)
time.sleep(2.5)
print(\"finished\")'; for i in 1 2 3 4 5 6 7 8; do tar -cf - /usr/share/doc 2>/dev/null | wc -c >/dev/null; done; echo done",
    );
    let t = text(&o);
    assert!(
        o.status.success()
            && t.contains("finished")
            && t.contains("done")
            && !t.contains("cannot be inspected"),
        "{t}"
    );
}

/// A syscall number between two the table knows (statmount, listmount,
/// the lsm_* calls, futex2 on Linux 6.18) was never reviewed: it answers
/// ENOSYS inside, as on an older kernel, while the host's kernel has it.
#[test]
fn escape_syscalls_the_table_does_not_name_are_not_allowed_by_omission() {
    let w = World::new();
    let probe = "import ctypes
libc = ctypes.CDLL(None, use_errno=True)
out = []
for nr in (451, 453, 454, 455, 456, 457, 458, 459, 460, 461):
    ctypes.set_errno(0)
    r = libc.syscall(nr, 0, 0, 0, 0, 0, 0)
    out.append('%d:%d' % (nr, ctypes.get_errno() if r == -1 else 0))
print(' '.join(out))";
    let host = std::process::Command::new("python3")
        .args(["-c", probe])
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout).to_string();
    let o = w.run(
        &[],
        &format!("python3 -c \"{}\"", probe.replace('"', "\\\"")),
    );
    let t = text(&o);
    let inside = t.lines().find(|l| l.starts_with("451:")).unwrap_or("");
    // 38 is ENOSYS; the host shows what the kernel itself answers.
    assert_eq!(inside.split_whitespace().count(), 10, "{t}");
    for i in inside.split_whitespace() {
        assert_eq!(i.split(':').nth(1), Some("38"), "inside: {t}; host: {host}");
    }
}

/// Epoll watches are counted per host user, not per namespace, and no
/// rlimit or cgroup bounds them: a task that used up the user's quota left
/// every event loop of the desktop unable to start (`epoll_ctl` ENOSPC),
/// Airlock's own included (pass 11A). A task is stopped past an eighth of
/// the quota, and its watches are gone with it.
#[test]
fn escape_epoll_watches_past_the_task_share_stop_it() {
    let w = World::new();
    let quota: u64 = std::fs::read_to_string("/proc/sys/fs/epoll/max_user_watches")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let per = 1500u64;
    let instances = quota / 8 / per + 50;
    let nofile = (per + instances + 64).max(4096).to_string();
    let o = w.run(
        &["--nofile", &nofile],
        &format!(
            "python3 -c 'import os, select, time
fds = [os.eventfd(0) for _ in range({per})]
eps = []
n = 0
for e in range({instances}):
    ep = select.epoll()
    eps.append(ep)
    for f in fds:
        ep.register(f)
        n += 1
print(\"holding\", n, flush=True)
# Long enough for a watchdog slowed by a loaded machine; the task is
# stopped well before.
time.sleep(20)
print(\"not stopped\")'"
        ),
    );
    assert_stopped_for(&o, "epoll watches");
}

/// inotify instances are counted per user up to the host's namespace,
/// whose limit (128 by default) the user's desktop lives within: a task
/// took them all and the user's own programs got EMFILE (pass 11A). The
/// sandbox's namespace now has a quarter of the host's limit, enforced by
/// the kernel; checked on the host while the task holds all it can.
#[test]
fn escape_inotify_instances_are_bounded_to_a_share_of_the_users() {
    let w = World::new();
    let host_max: u64 = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let c = w.cmd(&[
        "run",
        "--",
        "python3",
        "-c",
        "import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
n = 0
while libc.inotify_init() >= 0:
    n += 1
print('holding', n, flush=True)
sys.stdin.read()",
    ]);
    let (mut child, line) = holding(c);
    // While the task holds every instance it could make, the host user
    // can still make its own.
    // SAFETY: inotify_init1 and close on our own descriptor.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    let host_ok = fd >= 0;
    if host_ok {
        // SAFETY: closing the descriptor just made.
        unsafe { libc::close(fd) };
    }
    drop(child.stdin.take());
    let _ = child.wait();
    let n: u64 = line
        .strip_prefix("holding ")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(n >= 1 && n <= host_max / 4, "{n} of {host_max}");
    assert!(host_ok, "the host user could not make an inotify instance");
}

/// Queued signals and message-queue bytes are counted per host user across
/// user namespaces. A task that queued signals up to the user's limit left
/// the user's own programs unable to create a POSIX timer while it ran; a
/// task whose message-queue opens were refused still held the bytes, and
/// the user could open no queue. The task gets a quarter of the pending
/// signals and no message-queue bytes.
#[test]
fn escape_pending_signals_and_message_queues_leave_the_users_share() {
    let w = World::new();
    // SAFETY: getrlimit into a struct we own.
    let host_max = unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_SIGPENDING, &mut r), 0);
        r.rlim_cur
    };
    let c = w.cmd(&[
        "run",
        "--",
        "python3",
        "-c",
        "import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
sig = signal.SIGRTMIN
signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
n = 0
while libc.sigqueue(os.getpid(), sig, ctypes.c_void_p(0)) == 0:
    n += 1
attr = (ctypes.c_long * 8)(0, 10, 8192, 0)
queues = 0
for i in range(200):
    if libc.mq_open(('/airlock-q%d' % i).encode(), os.O_CREAT | os.O_RDWR, 0o600, attr) >= 0:
        queues += 1
print('holding', n, queues, flush=True)
sys.stdin.read()",
    ]);
    let (mut child, line) = holding(c);
    // While the task holds all it could, the host user can still make a
    // POSIX timer (each takes a queued signal) and a message queue.
    // SAFETY: timer_create and timer_delete on our own timer.
    let timer_ok = unsafe {
        let mut t: libc::timer_t = std::mem::zeroed();
        let ok = libc::timer_create(libc::CLOCK_MONOTONIC, std::ptr::null_mut(), &mut t) == 0;
        if ok {
            libc::timer_delete(t);
        }
        ok
    };
    let name = std::ffi::CString::new(format!("/airlock-test-{}", std::process::id())).unwrap();
    // SAFETY: an mq_attr we own; the queue is closed and unlinked at once.
    let queue_ok = unsafe {
        let mut attr: libc::mq_attr = std::mem::zeroed();
        attr.mq_maxmsg = 10;
        attr.mq_msgsize = 8192;
        let q = libc::mq_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_RDWR,
            0o600 as libc::mode_t,
            &mut attr as *mut libc::mq_attr,
        );
        if q >= 0 {
            libc::mq_close(q);
            libc::mq_unlink(name.as_ptr());
        }
        q >= 0
    };
    drop(child.stdin.take());
    let _ = child.wait();
    let held: Vec<u64> = line
        .strip_prefix("holding ")
        .map(|r| {
            r.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(timer_ok, "the host user could not create a POSIX timer");
    assert!(queue_ok, "the host user could not open a message queue");
    assert_eq!(held.len(), 2, "{line}");
    assert!(
        held[0] >= 1 && held[0] <= host_max / 4,
        "{line} of {host_max}"
    );
    assert_eq!(held[1], 0, "{line}");
}

fn huge_pages_free() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))?
        .trim()
        .parse()
        .ok()
}

/// Quotas for the whole machine or the whole user that no namespace
/// divides (pass 13A): native AIO contexts (three calls took the machine's
/// fs.aio-max-nr from every program, root's too), the huge-page pool, the
/// pseudo-terminals of every devpts but the host's, a lease on a file of a
/// read-only grant (the user's programs waited 45 s to write it), and
/// locked shared memory (the user's own SHM_LOCK failed). Each is checked
/// from the host while the task holds all it could get.
#[test]
fn escape_machine_and_user_quotas_stay_with_the_host() {
    let w = World::new();
    let ro = w.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    chmod(&ro, 0o755);
    let file = ro.join("app.db");
    std::fs::write(&file, b"data").unwrap();
    chmod(&file, 0o644);
    let huge_before = huge_pages_free();
    let grant = ro.display().to_string();
    let script = format!(
        "import ctypes, fcntl, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
ctx = ctypes.c_ulong(0)
aio = 'ok' if libc.syscall({nr}, 65536, ctypes.byref(ctx)) == 0 else 'errno%d' % ctypes.get_errno()
try:
    m = mmap.mmap(-1, 2 << 20, flags=mmap.MAP_SHARED | 0x40000)
    m[0] = 1
    huge = 'ok'
except OSError as e:
    huge = 'errno%d' % e.errno
ptys = []
for i in range(100):
    try:
        ptys.append(os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY))
    except OSError:
        break
f = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.fcntl(f, 1024, 0)
    lease = 'ok'
except OSError as e:
    lease = 'errno%d' % e.errno
shm = libc.shmget(0, 8 << 20, 0o1000 | 0o600)
lock = 'ok' if libc.shmctl(shm, 11, None) == 0 else 'errno%d' % ctypes.get_errno()
print('aio', aio, 'huge', huge, 'ptys', len(ptys), 'lease', lease, 'shmlock', lock, flush=True)
sys.stdin.read()
libc.shmctl(shm, 0, None)",
        nr = libc::SYS_io_setup
    );
    let c = w.cmd(&[
        "run",
        "--grant",
        &grant,
        "--",
        "python3",
        "-c",
        &script,
        file.to_str().unwrap(),
    ]);
    let (mut child, line) = holding(c);
    // The host, meanwhile: an AIO context, a huge page as before, the
    // granted file opened for writing at once, 4 MiB of locked shared
    // memory.
    // SAFETY: io_setup/io_destroy on a context of our own.
    let aio_ok = unsafe {
        let mut ctx: libc::c_ulong = 0;
        let ok = libc::syscall(libc::SYS_io_setup, 128, &mut ctx) == 0;
        if ok {
            libc::syscall(libc::SYS_io_destroy, ctx);
        }
        ok
    };
    let huge_during = huge_pages_free();
    let write_open = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&file)
        .map(|_| ());
    // SAFETY: a private segment of our own, locked, then removed.
    let shm_ok = unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, 4 << 20, libc::IPC_CREAT | 0o600);
        let ok = id >= 0 && libc::shmctl(id, libc::SHM_LOCK, std::ptr::null_mut()) == 0;
        if id >= 0 {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
        ok
    };
    drop(child.stdin.take());
    let _ = child.wait();
    assert!(aio_ok, "the host could not make an AIO context: {line}");
    assert_eq!(huge_before, huge_during, "huge pages taken: {line}");
    assert!(
        write_open.is_ok(),
        "the host could not open its file for writing: {write_open:?}: {line}"
    );
    assert!(shm_ok, "the host user could not lock shared memory: {line}");
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 10, "{line}");
    assert_eq!(f[1], format!("errno{}", libc::ENOSYS), "{line}");
    assert_ne!(f[3], "ok", "{line}");
    let ptys: u32 = f[5].parse().unwrap();
    assert!((1..=64).contains(&ptys), "{line}");
    assert_ne!(f[7], "ok", "{line}");
}

/// Descriptors in flight in unix sockets are counted per host user and
/// checked against the sender's own open-file limit: a task with 1,204
/// put 1,250 in flight, and the user's programs, which mostly run with
/// 1,024, could pass none (pass 14A). The default limit keeps the task's
/// share under theirs.
#[test]
fn escape_descriptors_in_flight_leave_the_users_programs_room() {
    let w = World::new();
    let c = w.cmd(&[
        "run",
        "--",
        "python3",
        "-c",
        "import array, os, socket, sys
a, b = socket.socketpair()
fds = [os.open('/dev/null', os.O_RDONLY) for i in range(200)]
n = 0
try:
    while True:
        a.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', fds))])
        n += len(fds)
except OSError as e:
    print('in flight', n, e.errno, flush=True)
sys.stdin.read()",
    ]);
    let (mut child, line) = holding(c);
    // A program of the user's with the usual 1,024 passes a descriptor.
    let host = w
        .command("sh")
        .args([
            "-c",
            "ulimit -n 1024 && python3 -c 'import array, os, socket
a, b = socket.socketpair()
a.sendmsg([b\"x\"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array(\"i\", [0]))])
print(\"passed\")'",
        ])
        .output()
        .unwrap();
    drop(child.stdin.take());
    let _ = child.wait();
    let h = text(&host);
    assert!(
        h.contains("passed"),
        "the user's program could not pass a descriptor: {h} (task: {line})"
    );
    assert!(line.starts_with("in flight"), "{line}");
}

/// Memory rlimits count each process's own memory only: a memfd or a
/// shared anonymous mapping held 1 to 4 GiB under `--memory 64M` (pass
/// 11A). The watchdog counts them against the memory limit as a whole.
#[test]
fn escape_memory_balloon_in_shared_memory_is_stopped() {
    let w = World::new();
    for kind in ["memfd", "anon"] {
        let o = w.run(
            &["--memory", "64M"],
            &format!(
                "python3 -c 'import os, mmap, time
N = 1 << 30
if \"{kind}\" == \"memfd\":
    fd = os.memfd_create(\"balloon\")
    for i in range(N >> 20):
        os.write(fd, bytes(1 << 20))
else:
    m = mmap.mmap(-1, N, flags=mmap.MAP_SHARED)
    for i in range(0, N, 4096):
        m[i] = 1
print(\"holding\", flush=True)
time.sleep(20)
print(\"not stopped\")'"
            ),
        );
        let t = text(&o);
        assert!(
            !o.status.success() && !t.contains("not stopped") && t.contains("shared memory"),
            "{kind}: {t}"
        );
    }
    // What counts is what is resident: a database reserves a big shared
    // segment and uses little of it (PostgreSQL under --memory 128M was
    // stopped when the mapped length counted, pass 12A).
    let o = w.run(
        &["--memory", "64M"],
        "python3 -c 'import mmap, time
m = mmap.mmap(-1, 512 << 20, flags=mmap.MAP_SHARED)
for i in range(0, 16 << 20, 4096):
    m[i] = 1
time.sleep(1.5)
print(\"reserved but little used\")'",
    );
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("reserved but little used"),
        "{t}"
    );
}

/// A deleted file whose only descriptor sits in a unix socket's queue
/// (SCM_RIGHTS to itself) is seen by no walk and no process scan: 167 MiB
/// held under `--max-upper 10M`, the disk full for the whole task (pass
/// 11A). The backstop watches the disk's free space: more lost than the
/// task shows plus its limit, on a disk down to its last tenth, stops it.
/// Needs a small file system for the state and the grant:
/// `build-aux/test.sh` mounts one and names it in AIRLOCK_TEST_SMALL_FS.
#[test]
fn escape_max_upper_with_deleted_files_in_flight_in_a_socket() {
    let Some(small) = std::env::var_os("AIRLOCK_TEST_SMALL_FS").filter(|s| !s.is_empty()) else {
        eprintln!("not run: set AIRLOCK_TEST_SMALL_FS to a small (≤ 200 MB) writable file system, as build-aux/test.sh does");
        return;
    };
    let w = World::new();
    let base = tempfile::Builder::new()
        .prefix("inflight")
        .tempdir_in(&small)
        .unwrap();
    let (grant, state) = (base.path().join("g"), base.path().join("st"));
    for d in [base.path(), &grant, &state] {
        std::fs::create_dir_all(d).unwrap();
        chmod(d, 0o777);
    }
    let g = format!("{}:rw", grant.display());
    let mut c = w.cmd(&[
        "run",
        "--max-upper",
        "10M",
        "--grant",
        &g,
        "--",
        "python3",
        "-c",
        "import os, socket, sys, time
a, b = socket.socketpair()
held = 0
for i in range(60):
    p = os.path.join(sys.argv[1], 'f%d' % i)
    try:
        with open(p, 'wb') as f:
            f.write(bytes(9 << 20))
    except OSError:
        break
    fd = os.open(p, os.O_RDONLY)
    socket.send_fds(a, [b'x'], [fd])
    os.close(fd)
    os.unlink(p)
    held += 9
    time.sleep(0.1)
print('holding', held, 'MiB', flush=True)
time.sleep(20)
print('not stopped')",
        grant.to_str().unwrap(),
    ]);
    c.env("XDG_STATE_HOME", &state);
    let o = output_within(c, Duration::from_secs(120));
    let t = text(&o);
    let _ = airlock::workspace::fsx::remove_owned_tree(base.path());
    assert!(
        !o.status.success()
            && !t.contains("not stopped")
            && t.contains("beyond what the task shows"),
        "{t}"
    );
}

/// The process scan read only the main thread's view: a main thread that
/// exits (`SYS_exit`) while its other threads run on, or a thread with a
/// file table of its own (`unshare(CLONE_FILES)`), hid a 1 GiB memfd and
/// the user's whole epoll quota (pass 12A). Each thread is read now.
#[test]
fn escape_threads_that_hide_from_the_scan_are_seen() {
    let w = World::new();
    for how in ["leader-exits", "own-file-table", "close-range-unshare"] {
        let o = w.run(
            &["--memory", "64M"],
            &format!(
                "python3 -c 'import ctypes, os, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def balloon():
    if \"{how}\" == \"own-file-table\":
        # Refused now (pass 14A): the thread keeps the table of its process.
        print(\"unshare\", libc.unshare(0x400), ctypes.get_errno(), flush=True)
    elif \"{how}\" == \"close-range-unshare\":
        # The same through close_range(CLOSE_RANGE_UNSHARE) (pass 19A).
        libc.syscall.restype = ctypes.c_long
        print(\"close_range\", libc.syscall(436, 100, 200, 2), ctypes.get_errno(), flush=True)
    else:
        # Only once the main thread is gone.
        time.sleep(0.5)
    fd = os.memfd_create(\"balloon\")
    for i in range(256):
        os.write(fd, bytes(1 << 20))
    print(\"holding\", flush=True)
    time.sleep(20)
    print(\"not stopped\", flush=True)
    os._exit(0)
threading.Thread(target=balloon).start()
if \"{how}\" == \"leader-exits\":
    libc.syscall(60, 0)
time.sleep(25)'"
            ),
        );
        let t = text(&o);
        assert!(
            !o.status.success() && !t.contains("not stopped") && t.contains("shared memory"),
            "{how}: {t}"
        );
        if how == "own-file-table" {
            assert!(t.contains(&format!("unshare -1 {}", libc::EPERM)), "{t}");
        }
        if how == "close-range-unshare" {
            assert!(
                t.contains(&format!("close_range -1 {}", libc::EPERM)),
                "{t}"
            );
        }
    }
    // A thread made with a file table of its own (clone with CLONE_THREAD
    // but not CLONE_FILES) could pass what it holds on to the next one and
    // exit, faster than any scan (pass 14A): refused.
    let flags = libc::CLONE_VM | libc::CLONE_SIGHAND | libc::CLONE_THREAD;
    let o = w.run(
        &[],
        &format!(
            "python3 -c 'import ctypes
libc = ctypes.CDLL(None, use_errno=True)
r = libc.syscall({nr}, {flags}, 0, 0, 0, 0)
print(\"clone\", r, ctypes.get_errno())'",
            nr = libc::SYS_clone
        ),
    );
    let t = text(&o);
    assert!(t.contains(&format!("clone -1 {}", libc::EPERM)), "{t}");
}

/// Bytes of the regular files under `dir` (not following links).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// The process scan does work the task decides: 500 threads, each with a
/// file table of its own full of descriptors, slowed every check behind it
/// to 4–20 s, and `--max-upper 10M` let 144 MiB through to the disk (pass
/// 13A). The size check no longer waits for the scan, and a scan that
/// takes more than its budget stops the task.
#[test]
fn escape_a_task_cannot_slow_its_checks_with_threads_full_of_descriptors() {
    let w = World::new();
    let g = format!("{}:rw", w.project.display());
    let o = output_within(
        w.cmd(&[
            "run",
            "--max-upper",
            "10M",
            "--pids",
            "512",
            "--grant",
            &g,
            "--",
            "python3",
            "-c",
            "import ctypes, os, resource, threading, time
libc = ctypes.CDLL(None, use_errno=True)
e = os.eventfd(0)
soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
for i in range(e + 1, soft - 16):
    os.dup2(e, i)
threading.stack_size(256 << 10)
def own_table():
    libc.unshare(0x400)
    time.sleep(60)
for i in range(400):
    threading.Thread(target=own_table, daemon=True).start()
print('threads ready', flush=True)
block = bytes(9 << 20)
for i in range(34):
    with open('w%d' % i, 'wb') as f:
        f.write(block)
    time.sleep(0.3)
print('not stopped', flush=True)",
        ]),
        Duration::from_secs(120),
    );
    let t = text(&o);
    let upper: u64 = w.tasks().iter().map(|d| tree_bytes(&d.join("upper"))).sum();
    assert!(!o.status.success() && !t.contains("not stopped"), "{t}");
    assert!(
        t.contains("cannot be checked") || t.contains("more than the 10 MiB allowed"),
        "{t}"
    );
    // 10 MiB, and what a writer at 30 MB/s adds in about a second.
    assert!(
        upper <= 48 << 20,
        "{} MiB reached the disk: {t}",
        upper >> 20
    );

    // More than a scan can read in its budget (1.2 million descriptors in
    // 300 processes): the task is stopped rather than checked less and
    // less often, with the supervisor's processor time spent on it.
    let o = w.run(
        &["--nofile", "4096", "--pids", "512"],
        "python3 -c 'import os, time
e = os.eventfd(0)
for i in range(e + 1, 4096 - 16):
    os.dup2(e, i)
for i in range(300):
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
time.sleep(30)
print(\"not stopped\")'",
    );
    assert_stopped_for(&o, "took more than 1 s of processor time");
}

/// A program the supervisor may not inspect is stopped whatever the
/// task's grants: without a read-write grant it went unchecked, and held a
/// 1 GiB memfd under `--memory 64M` (pass 12A). Root reads every process,
/// so this asserts as the unprivileged user only.
#[test]
fn escape_an_uninspectable_program_is_stopped_without_a_rw_grant_too() {
    // SAFETY: geteuid only reads.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    let w = World::new();
    let o = w.run(
        &["--memory", "64M"],
        "cp /bin/sleep /tmp/hidden && chmod 111 /tmp/hidden && /tmp/hidden 20; echo not stopped",
    );
    assert_stopped_for(&o, "cannot be inspected");
    // The same program under the sandbox helper's own command line, read
    // from /proc/1/cmdline: it was taken for Airlock's and never stopped
    // (pass 19A), holding a 256 MiB memfd under --memory 64M.
    let o = w.run(
        &["--memory", "64M"],
        "python3 -c 'import os, shutil
shutil.copy(\"/usr/bin/python3\", \"/tmp/hidden\")
os.chmod(\"/tmp/hidden\", 0o111)
open(\"/tmp/__sandbox-helper\", \"w\").write(\"import os, time\\nfd = os.memfd_create(\\\"b\\\")\\nfor i in range(256): os.write(fd, bytes(1 << 20))\\nprint(\\\"holding\\\", flush=True)\\ntime.sleep(20)\\nprint(\\\"not stopped\\\")\\n\")
os.chdir(\"/tmp\")
os.execv(\"/tmp/hidden\", open(\"/proc/1/cmdline\", \"rb\").read().split(b\"\\0\")[:-1])'",
    );
    assert_stopped_for(&o, "cannot be inspected");
}

// ------------------------------------------------- hidden paths over time

/// A read-only grant is a live view of the user's folder. Hidden paths in
/// it stay hidden for the whole task: one the user's programs create only
/// after the start (`gh auth login`, `git credential-store`), and one they
/// replace by writing a new file and renaming it over the old (a cover
/// mounted on the old file would go with it). The agent looks throughout;
/// decided on what it could print.
#[test]
fn escape_hidden_paths_created_or_replaced_during_the_task_stay_hidden() {
    let w = World::new();
    let netrc = w.home.join(".netrc");
    plant(&netrc);
    let env = w.project.join(".env");
    plant(&env);
    std::fs::write(w.project.join("notes.txt"), "visible\n").unwrap();
    chmod(&w.project.join("notes.txt"), 0o644);
    let look = "for i in $(seq 1 40); do cat ~/.netrc ~/.git-credentials ~/.config/gh/hosts.yml $P/.env 2>/dev/null; sleep 0.1; done; cat $P/notes.txt";
    let mut cmd = w.cmd(&[
        "run",
        "--grant",
        &format!("{}:ro", w.home.display()),
        "--deny",
        &env.display().to_string(),
        "--env",
        &format!("P={}", w.project.display()),
        "--",
        "sh",
        "-c",
        look,
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // The user's programs at work meanwhile.
    plant(&w.home.join(".git-credentials"));
    plant(&w.home.join(".config/gh/hosts.yml"));
    for f in [&netrc, &env] {
        let tmp = f.with_extension("new");
        std::fs::write(&tmp, SECRET).unwrap();
        chmod(&tmp, 0o644);
        std::fs::rename(&tmp, f).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        text(&o).contains("visible"),
        "the grant was not readable: {}",
        text(&o)
    );
    assert_no_secret(&o);
}

/// The sandbox's mounts receive nothing the host mounts after the start:
/// a vault opened over a folder in a grant (here a tmpfs, as root) stays
/// closed to the task. Root only (mounting on the host needs it).
#[test]
fn escape_host_mounts_made_during_the_task_do_not_show_inside() {
    if !is_root() {
        return;
    }
    let w = World::new();
    // A folder on a mount with shared propagation, as a systemd machine's
    // file systems are.
    let shared = w.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let sh = |c: &str| Command::new("sh").args(["-c", c]).status().unwrap();
    let shared_s = shared.display().to_string();
    assert!(sh(&format!(
        "mount -t tmpfs -o mode=0755 none {shared_s} && mount --make-shared {shared_s}"
    ))
    .success());
    let vault = shared.join("proj/vault");
    std::fs::create_dir_all(&vault).unwrap();
    chmod(&shared.join("proj"), 0o755);
    chmod(&vault, 0o755);
    let mut cmd = w.cmd(&[
        "run",
        "--grant",
        &format!("{}:ro", shared.join("proj").display()),
        "--",
        "sh",
        "-c",
        &format!(
            "sleep 2; cat {}/secret.txt; ls {}",
            vault.display(),
            vault.display()
        ),
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let vault_s = vault.display().to_string();
    sh(&format!("mount -t tmpfs none {vault_s} && echo {SECRET} > {vault_s}/secret.txt && chmod 644 {vault_s}/secret.txt"));
    let o = child.wait_with_output().unwrap();
    sh(&format!("umount {vault_s}; umount {shared_s}"));
    assert_no_secret(&o);
}

/// `--deny=~/…` (no shell expands `~` there) and a relative `--deny` hide
/// what they name; a grant inside a hidden folder is refused, not silently
/// covered.
#[test]
fn deny_paths_with_a_tilde_or_relative_hide_what_they_name() {
    let w = World::new();
    let secret = w.home.join("proj2/.env");
    plant(&secret);
    std::fs::write(w.home.join("proj2/ok.txt"), "visible\n").unwrap();
    chmod(&w.home.join("proj2/ok.txt"), 0o644);
    let grant = format!("{}:ro", w.home.join("proj2").display());
    let look = format!(
        "cat {h}/proj2/ok.txt; cat {h}/proj2/.env",
        h = w.home.display()
    );
    for deny in ["--deny=~/proj2/.env", "--deny=proj2/.env"] {
        let mut c = w.cmd(&["run", "--grant", &grant, deny, "--", "sh", "-c", &look]);
        c.current_dir(&w.home);
        let o = output_within(c, Duration::from_secs(60));
        assert!(text(&o).contains("visible"), "{deny}: {}", text(&o));
        assert_no_secret(&o);
    }
    let aws = w.home.join(".aws/config");
    plant(&aws);
    let o = output_within(
        w.cmd(&[
            "run",
            "--grant",
            &format!("{}:ro", aws.display()),
            "--",
            "cat",
            &aws.display().to_string(),
        ]),
        Duration::from_secs(60),
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("hidden from every task"), "{}", text(&o));
    assert_no_secret(&o);
}

/// A `--deny` path, or a relative grant from a folder, whose name is not
/// UTF-8 cannot be recorded as text (the manifest, the audit database, the
/// D-Bus API would each get another name): the task is refused before
/// anything runs or is made, with a message naming the path, and the file
/// is not shown by a task that went ahead without it.
#[test]
fn paths_that_are_not_utf8_are_refused_before_anything_is_made() {
    use std::os::unix::ffi::OsStrExt;
    let w = World::new();
    let secret = w.project.join(std::ffi::OsStr::from_bytes(b"key-\xff.pem"));
    plant(&secret);
    let odd = w.home.join(std::ffi::OsStr::from_bytes(b"dir-\xfe"));
    std::fs::create_dir(&odd).unwrap();
    chmod(&odd, 0o777);
    let grant = format!("{}:ro", w.project.display());
    let mut deny = w.cmd(&["run", "--grant", &grant, "--deny"]);
    deny.arg(&secret)
        .args(["--", "sh", "-c", "cat ./key-*; echo TASK-RAN"]);
    deny.current_dir(&w.project);
    let mut relative = w.cmd(&["run", "--grant", ".:rw", "--", "sh", "-c", "echo TASK-RAN"]);
    relative.current_dir(&odd);
    for (what, c, bytes) in [
        ("--deny", deny, "key-\\xFF.pem"),
        ("relative --grant", relative, "dir-\\xFE"),
    ] {
        let o = output_within(c, Duration::from_secs(60));
        assert!(!o.status.success(), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not valid UTF-8"), "{what}: {err}");
        assert!(err.contains(bytes), "{what} names the path: {err}");
        assert!(!text(&o).contains("TASK-RAN"), "{what}: {}", text(&o));
        assert_no_secret(&o);
    }
    assert!(w.tasks().is_empty(), "no task folder: {:?}", w.tasks());
}

/// The same in a read-write grant, for a hidden name that did not exist at
/// the start: the user's file made on the host meanwhile stays out of the
/// agent's view, and the agent's own writes still work.
#[test]
fn escape_a_hidden_name_made_on_the_host_during_the_task_stays_hidden_in_a_rw_grant() {
    let w = World::new();
    let env = w.project.join(".env");
    let look = "for i in $(seq 1 30); do cat .env 2>/dev/null; sleep 0.1; done; echo mine > mine.txt && echo wrote";
    let mut cmd = w.cmd(&[
        "run",
        "--grant",
        &format!("{}:rw", w.project.display()),
        "--deny",
        &env.display().to_string(),
        "--",
        "sh",
        "-c",
        look,
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    plant(&env);
    // Memory pressure drops the overlay's cached "no such name"; as root
    // the test can cause that at once.
    if is_root() {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
    }
    let o = child.wait_with_output().unwrap();
    assert!(text(&o).contains("wrote"), "{}", text(&o));
    assert_no_secret(&o);
    assert_eq!(std::fs::read_to_string(&env).unwrap(), SECRET);
}

/// A read-only grant that holds another file system cannot be laid over
/// with whiteouts (the kernel keeps such mounts as they are in the
/// sandbox): its hidden paths are covered as they are at the start, and
/// the task's report says plainly that later ones are not. Root only
/// (mounting on the host needs it).
#[test]
fn a_grant_holding_another_file_system_says_how_its_hidden_paths_are_hidden() {
    if !is_root() {
        return;
    }
    let w = World::new();
    let inner = w.project.join("mnt");
    std::fs::create_dir_all(&inner).unwrap();
    let inner_s = inner.display().to_string();
    let sh = |c: &str| Command::new("sh").args(["-c", c]).status().unwrap();
    assert!(sh(&format!("mount -t tmpfs -o mode=0755 none {inner_s}")).success());
    let env = w.project.join(".env");
    plant(&env);
    let o = w.run(
        &[
            "-v",
            "--grant",
            &format!("{}:ro", w.project.display()),
            "--deny",
            &env.display().to_string(),
        ],
        &format!("cat {} 2>&1; ls {inner_s} && echo listed", env.display()),
    );
    sh(&format!("umount {inner_s}"));
    let t = text(&o);
    assert_no_secret(&o);
    assert!(t.contains("listed"), "{t}");
    assert!(t.contains("covered as they were at the start"), "{t}");
}

/// A hidden path behind a folder the sandbox may not search (mode 000, or
/// as root a folder of an unmapped user): the task starts, and in a
/// read-write grant the agent, which may change the mode of its own copy
/// of the folder, still cannot reach it.
#[test]
fn escape_a_hidden_path_behind_an_unsearchable_folder() {
    let w = World::new();
    let locked = w.project.join("locked");
    plant(&locked.join("secret.txt"));
    chmod(&locked, 0o000);
    // As root, the folder of a user the sandbox does not map (a service's
    // data folder): even PID 1 may not search it.
    if is_root() {
        std::os::unix::fs::chown(&locked, Some(1234), Some(1234)).unwrap();
        chmod(&locked, 0o700);
    }
    let o = w.run(
        &[
            "--grant",
            &format!("{}:rw", w.project.display()),
            "--deny",
            &locked.join("secret.txt").display().to_string(),
        ],
        "chmod 755 locked 2>&1; cat locked/secret.txt 2>&1; echo end",
    );
    chmod(&locked, 0o755);
    let t = text(&o);
    assert!(t.contains("end"), "{t}");
    assert_no_secret(&o);
}

/// `..` in a hidden path is taken by name (`a/missing/../b` is `a/b`), and
/// a grant given with `..` gets no link at a place it does not name.
#[test]
fn hidden_paths_and_grants_with_dot_dot_mean_what_they_say() {
    let w = World::new();
    plant(&w.project.join("secret.txt"));
    for access in ["ro", "rw"] {
        let o = w.run(
            &[
                "--grant",
                &format!("{}:{access}", w.project.display()),
                "--deny",
                &format!("{}/nope/../secret.txt", w.project.display()),
            ],
            "cat secret.txt 2>&1; echo end",
        );
        assert!(text(&o).contains("end"), "{}", text(&o));
        assert_no_secret(&o);
    }
    // cd app; --grant lib:rw --grant ../lib/sub:ro: nothing is made in
    // the read-write grant.
    let app = w.home.join("app");
    let sub = app.join("lib/sub");
    std::fs::create_dir_all(&sub).unwrap();
    for d in [&app, &app.join("lib"), &sub] {
        chmod(d, 0o777);
    }
    let mut c = w.cmd(&[
        "run",
        "--grant",
        "lib:rw",
        "--grant",
        "../app/lib/sub:ro",
        "--",
        "true",
    ]);
    c.current_dir(&app);
    let o = output_within(c, Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no files changed"), "{}", text(&o));
}

/// The whiteout layer's folders show as the grant's own: same mode, so
/// that the agent's writes under them commit no change of mode it never
/// made.
#[test]
fn folders_holding_hidden_names_keep_their_mode() {
    let w = World::new();
    let private = w.project.join("private");
    std::fs::create_dir_all(&private).unwrap();
    let mode = if is_root() { 0o777 } else { 0o700 };
    chmod(&private, mode);
    let o = w.run(
        &[
            "--grant",
            &format!("{}:rw", w.project.display()),
            "--deny",
            &private.join(".env").display().to_string(),
        ],
        "stat -c MODE=%a private; echo x > private/x",
    );
    let t = text(&o);
    assert!(t.contains(&format!("MODE={mode:o}")), "{t}");
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_string_lossy().into_owned();
    let c = output_within(w.cmd(&["changes", &id]), Duration::from_secs(30));
    let ct = text(&c);
    assert!(ct.contains("private/x") && !ct.contains('→'), "{ct}");
}

/// A relative `--only` name is looked up in every grant: with two grants
/// that both have `a.txt` changed, `--only a.txt` committed both, though
/// the user may have looked at one (pass 19B). Refused as ambiguous,
/// nothing committed; a full path commits that one only.
#[test]
fn a_relative_only_path_in_two_grants_is_refused() {
    let w = World::new();
    let (one, two) = (w.project.join("one"), w.project.join("two"));
    for d in [&one, &two] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("a.txt"), "user\n").unwrap();
        chmod(d, 0o777);
        chmod(&d.join("a.txt"), 0o666);
    }
    let o = w.run(
        &[
            "--grant",
            &format!("{}:rw", one.display()),
            "--grant",
            &format!("{}:rw", two.display()),
        ],
        &format!(
            "echo agent >> {}/a.txt && echo agent >> {}/a.txt && echo done",
            one.display(),
            two.display()
        ),
    );
    assert!(text(&o).contains("done"), "{}", text(&o));
    let id = w.tasks().pop().unwrap();
    let id = id.file_name().unwrap().to_string_lossy().to_string();
    let c = output_within(
        w.cmd(&["commit", &id, "--only", "a.txt"]),
        Duration::from_secs(60),
    );
    assert!(!c.status.success(), "{}", text(&c));
    assert!(
        text(&c).contains("more than one granted folder"),
        "{}",
        text(&c)
    );
    for d in [&one, &two] {
        assert_eq!(std::fs::read_to_string(d.join("a.txt")).unwrap(), "user\n");
    }
    let full = one.join("a.txt").display().to_string();
    let c = output_within(
        w.cmd(&["commit", &id, "--only", &full]),
        Duration::from_secs(60),
    );
    assert!(c.status.success(), "{}", text(&c));
    assert_eq!(
        std::fs::read_to_string(one.join("a.txt")).unwrap(),
        "user\nagent\n"
    );
    assert_eq!(
        std::fs::read_to_string(two.join("a.txt")).unwrap(),
        "user\n"
    );
}
