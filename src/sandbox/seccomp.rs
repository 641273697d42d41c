//! The seccomp profile: a neutral model (also what the OCI importer
//! produces), Airlock's default profile with a reason per group, and the
//! compiler to BPF (seccompiler) plus the few instructions seccompiler cannot
//! express (the x32 ABI check).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use super::syscalls;

/// What the filter does with a matching syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Log,
    Trap,
}

impl Action {
    fn to_seccompiler(self) -> SeccompAction {
        match self {
            Action::Allow => SeccompAction::Allow,
            Action::Errno(e) => SeccompAction::Errno(e),
            Action::KillThread => SeccompAction::KillThread,
            Action::KillProcess => SeccompAction::KillProcess,
            Action::Log => SeccompAction::Log,
            Action::Trap => SeccompAction::Trap,
        }
    }
}

/// Comparison of one syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

/// One condition on argument `index`. `low32` compares only the low 32 bits,
/// which is what the kernel looks at for `int` arguments such as ioctl
/// requests (CVE-2019-10063: a filter comparing all 64 bits is bypassed by
/// setting the high ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgCond {
    pub index: u8,
    pub op: Op,
    pub value: u64,
    pub low32: bool,
}

/// One rule: the syscalls it names, taken when all its conditions hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    #[serde(default)]
    pub args: Vec<ArgCond>,
    /// Why this rule exists, for the documentation and the UI.
    #[serde(default)]
    pub reason: String,
}

/// A whole profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Shown to the user (`airlock default`, or the imported file's name).
    pub name: String,
    pub default_action: Action,
    pub rules: Vec<Rule>,
    /// Refuse x32 and foreign-architecture syscalls (always on for our
    /// default; an OCI profile's `architectures` decides for imports).
    pub refuse_foreign_abi: bool,
    /// Answer `ENOSYS` to syscalls newer than this build's table (our
    /// default: a call added to a later kernel has not been reviewed, so it
    /// is not allowed by omission). Imported profiles say for themselves.
    #[serde(default)]
    pub refuse_unknown: bool,
}

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

/// Namespace flags shared by `clone`, `unshare` and `setns`.
const NS_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

fn deny(names: &[&str], reason: &str) -> Rule {
    Rule {
        names: names.iter().map(|s| s.to_string()).collect(),
        action: Action::Errno(EPERM),
        args: vec![],
        reason: reason.to_string(),
    }
}

fn deny_if(names: &[&str], args: Vec<ArgCond>, reason: &str) -> Rule {
    Rule {
        args,
        ..deny(names, reason)
    }
}

fn arg(index: u8, op: Op, value: u64) -> ArgCond {
    ArgCond {
        index,
        op,
        value,
        low32: true,
    }
}

/// Airlock's default profile: everything a desktop agent needs is allowed;
/// the attack surface it never needs is refused with `EPERM`.
pub fn default_profile() -> Profile {
    let mut rules = vec![
        deny(
            &[
                "ptrace",
                "process_vm_readv",
                "process_vm_writev",
                "process_madvise",
                "process_mrelease",
                "pidfd_getfd",
                "kcmp",
            ],
            "reading or steering other processes is how a sandboxed program escapes or steals secrets",
        ),
        deny(
            &[
                "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
                "fsconfig", "fsmount", "fspick", "mount_setattr",
            ],
            "changing mounts could reveal hidden folders or the host's file system",
        ),
        deny(&["setns"], "joining another namespace leaves the sandbox"),
        deny(
            &["bpf", "perf_event_open"],
            "kernel programs and performance counters are a large kernel attack surface and leak data",
        ),
        deny(
            &["keyctl", "add_key", "request_key"],
            "the kernel keyring is not namespaced and holds the user's secrets",
        ),
        deny(
            &["userfaultfd"],
            "userfaultfd is a favourite tool for exploiting kernel races",
        ),
        deny(
            &["io_uring_setup", "io_uring_enter", "io_uring_register"],
            "io_uring bypasses syscall filtering and has a long record of kernel bugs",
        ),
        deny(
            &["kexec_load", "kexec_file_load", "reboot"],
            "replacing or rebooting the kernel",
        ),
        deny(
            &["init_module", "finit_module", "delete_module"],
            "loading kernel modules",
        ),
        deny(
            &["open_by_handle_at", "name_to_handle_at"],
            "file handles open files by inode, past every mount and path check (the 'shocker' escape)",
        ),
        deny(
            &[
                "acct", "swapon", "swapoff", "syslog", "quotactl", "quotactl_fd",
                "lookup_dcookie", "settimeofday", "clock_settime", "clock_adjtime",
                "fanotify_init", "vhangup",
            ],
            "system administration an agent never needs",
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    rules.push(deny(
        &["uselib", "nfsservctl", "iopl", "ioperm", "modify_ldt"],
        "obsolete or hardware-level calls with a history of exploits",
    ));
    // Namespace creation: refused for clone and unshare whenever any
    // namespace flag is set (a rule per flag: seccomp can only test equality
    // under a mask).
    for flag in NS_FLAGS {
        rules.push(deny_if(
            &["unshare", "clone"],
            vec![arg(0, Op::MaskedEq(flag), flag)],
            "new namespaces would let the agent gain capabilities and attack the kernel",
        ));
    }
    // clone3 passes its flags in memory, which seccomp cannot read: answer
    // ENOSYS so that libc falls back to clone, whose flags we can inspect.
    rules.push(answer("clone3", ENOSYS, vec![], CLONE3));
    // TIOCSTI and TIOCLINUX (the same numbers on x86_64 and aarch64).
    for req in [0x5412u64, 0x541c] {
        rules.push(deny_if(
            &["ioctl"],
            vec![arg(1, Op::Eq, req)],
            "pushing keystrokes into a terminal (TIOCSTI/TIOCLINUX) runs commands as the user",
        ));
    }
    // TIOCSETD (same number on x86_64 and aarch64): without --tty the agent
    // holds the user's own terminal, whose line discipline would stay changed
    // after the task (N_NULL leaves it dead), and a new discipline number
    // autoloads a kernel module (n_gsm, n_hdlc, slip: a record of exploits).
    rules.push(deny_if(
        &["ioctl"],
        vec![arg(1, Op::Eq, 0x5423)],
        "changing a terminal's line discipline breaks the user's terminal and loads kernel modules",
    ));
    // socket(): only unix, IPv4, IPv6 and route netlink.
    let (unix, inet, inet6, netlink) = (
        libc::AF_UNIX as u64,
        libc::AF_INET as u64,
        libc::AF_INET6 as u64,
        libc::AF_NETLINK as u64,
    );
    let sock_reason = "raw, packet, vsock and other socket families reach hardware, the host or the kernel's attack surface";
    rules.push(deny_if(
        &["socket", "socketpair"],
        vec![
            arg(0, Op::Ne, unix),
            arg(0, Op::Ne, inet),
            arg(0, Op::Ne, inet6),
            arg(0, Op::Ne, netlink),
        ],
        sock_reason,
    ));
    rules.push(deny_if(
        &["socket"],
        vec![
            arg(0, Op::Eq, netlink),
            arg(2, Op::Ne, libc::NETLINK_ROUTE as u64),
        ],
        sock_reason,
    ));
    for family in [inet, inet6] {
        for ty in [libc::SOCK_RAW as u64, 10 /* SOCK_PACKET */] {
            rules.push(deny_if(
                &["socket"],
                vec![arg(0, Op::Eq, family), arg(1, Op::MaskedEq(0xf), ty)],
                sock_reason,
            ));
        }
    }
    // personality(): only the harmless values (as Docker allows).
    rules.push(deny_if(
        &["personality"],
        [0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff]
            .iter()
            .map(|v| arg(0, Op::Ne, *v))
            .collect(),
        "other personalities disable address-space randomisation or change syscall semantics",
    ));
    // seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER):
    // an agent must not install a notification listener of its own.
    rules.push(deny_if(
        &["seccomp"],
        vec![
            arg(0, Op::Eq, 1),
            arg(
                1,
                Op::MaskedEq(SECCOMP_FILTER_FLAG_NEW_LISTENER),
                SECCOMP_FILTER_FLAG_NEW_LISTENER,
            ),
        ],
        "a second notification listener would let the agent answer its own syscalls",
    ));
    Profile {
        name: "airlock-default".into(),
        default_action: Action::Allow,
        rules,
        refuse_foreign_abi: true,
        refuse_unknown: true,
    }
}

pub const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 1 << 3;

/// What keeps Airlock's own limits enforceable, added to whichever profile
/// a task runs under (ours or an imported one). Preallocation reserves
/// gigabytes in one call, faster than the watchdog of `--max-upper` (a
/// walk every 100 ms) can see: 150 files of just under the limit each
/// passed it 150 times over. EOPNOTSUPP makes glibc's posix_fallocate
/// write the blocks instead, at a pace the watchdog keeps up with.
pub fn limit_rules() -> Vec<Rule> {
    let mut rules = vec![
        answer("fallocate", libc::EOPNOTSUPP as u32, vec![], PREALLOCATION),
        // Answered with success and not done: inside the sandbox it
        // protects nothing (ptrace is refused, core dumps are off), and an
        // undumpable process hides its open files from an unprivileged
        // supervisor, which must see the deleted files it holds.
        answer(
            "prctl",
            0,
            vec![arg(0, Op::Eq, libc::PR_SET_DUMPABLE as u64)],
            "an undumpable process hides the files it holds from the size limit of a task's writes",
        ),
        // One file table per process. A thread with a table of its own (a
        // clone with CLONE_THREAD but not CLONE_FILES, or
        // unshare(CLONE_FILES)) could hand what it holds to the next such
        // thread and exit, thousands of times a second, and so stay out
        // of every scan of what the task holds (pass 14A: a 2 GiB memfd
        // under --memory 256M). No threading library makes such threads.
        // clone3 hides its flags from seccomp: ENOSYS, so libc uses clone.
        answer(
            "clone",
            libc::EPERM as u32,
            vec![arg(
                0,
                Op::MaskedEq(THREAD_FILES),
                libc::CLONE_THREAD as u64,
            )],
            FILE_TABLES,
        ),
        answer(
            "unshare",
            libc::EPERM as u32,
            vec![arg(
                0,
                Op::MaskedEq(libc::CLONE_FILES as u64),
                libc::CLONE_FILES as u64,
            )],
            FILE_TABLES,
        ),
        answer("clone3", ENOSYS, vec![], CLONE3),
        // Machine-wide quotas no user or namespace limit divides, which one
        // task could take from every program on the machine, root's too.
        // Native AIO contexts count against fs.aio-max-nr: three calls
        // took all of it, and databases and virtual machines using AIO
        // failed. ENOSYS, as on a kernel without AIO: libaio users fall
        // back to threads.
        answer(
            "io_setup",
            ENOSYS,
            vec![],
            "native AIO contexts come from one quota for the whole machine",
        ),
        // Huge pages come from the machine's reserved pool, and a shared
        // huge-page mapping is counted by no memory limit. Refused with
        // the errors of an empty pool, which programs fall back from.
        answer(
            "mmap",
            libc::ENOMEM as u32,
            vec![arg(3, Op::MaskedEq(MAP_HUGETLB), MAP_HUGETLB)],
            HUGE_PAGES,
        ),
        answer(
            "memfd_create",
            libc::EINVAL as u32,
            vec![arg(1, Op::MaskedEq(MFD_HUGETLB), MFD_HUGETLB)],
            HUGE_PAGES,
        ),
        answer(
            "shmget",
            libc::EPERM as u32,
            vec![arg(2, Op::MaskedEq(SHM_HUGETLB), SHM_HUGETLB)],
            HUGE_PAGES,
        ),
        // A lease on a file of a read-only grant (the host's own file)
        // made every host program that opened it for writing wait 45 s,
        // and told the agent by a signal when one did. Nothing an agent
        // does needs leases (file servers use them).
        answer(
            "fcntl",
            libc::EACCES as u32,
            vec![arg(1, Op::Eq, libc::F_SETLEASE as u64)],
            "a lease on the user's file stalls the user's programs that write it",
        ),
        // Pipe buffers are counted per host user (fs.pipe-user-pages-soft):
        // 63 pipes enlarged to 1 MiB shrank every new pipe of the user's
        // own programs to 8 KiB (pass 19A). Pipes keep their default size;
        // EPERM is what an unprivileged caller gets above pipe-max-size.
        answer(
            "fcntl",
            libc::EPERM as u32,
            vec![
                arg(1, Op::Eq, F_SETPIPE_SZ),
                arg(2, Op::Gt, DEFAULT_PIPE_SIZE),
            ],
            "pipe buffers come from one quota for all the user's programs",
        ),
        // io_uring does file work (IORING_OP_FALLOCATE, …) without the calls
        // these rules inspect: refused under every profile, whatever the
        // policy says of unix sockets (pass 20A: 4000 MiB preallocated under
        // --max-upper 10M through an imported profile).
        deny(
            &["io_uring_setup", "io_uring_enter", "io_uring_register"],
            "io_uring does file work without the calls the limits inspect",
        ),
        // Memory that no limit without a memory cgroup counts, and that no
        // process's resident size shows (so the kernel's OOM killer would
        // pick the user's programs instead). Pass 19A held 4 GiB of
        // secret memory, and 2 GiB pinned by four pipes, under
        // --memory 256M. Nothing an agent runs needs either: ENOSYS, as on
        // a kernel without them.
        answer(
            "memfd_secret",
            ENOSYS,
            vec![],
            "secret memory is counted by no limit without a memory cgroup",
        ),
        // System V message queues: kernel memory, up to half a gigabyte in
        // the sandbox's own IPC namespace (pass 20A: 488 MiB under --memory
        // 64M), whose limits only its root could lower, and no agent here
        // has a use for them. ENOSYS, as on a kernel built without them.
        answer(
            "msgget",
            ENOSYS,
            vec![],
            "message queues hold kernel memory no limit counts without a memory cgroup",
        ),
        answer(
            "vmsplice",
            ENOSYS,
            vec![],
            "pages given to a pipe stay held, whole huge pages at a time, counted by no limit",
        ),
        // A growing-down mapping is stack to the kernel, which RLIMIT_DATA
        // (the memory limit without a cgroup) does not count. Thread
        // stacks are plain mappings; only the main stack grows down, and
        // its size is capped by RLIMIT_STACK.
        answer(
            "mmap",
            libc::EPERM as u32,
            vec![arg(3, Op::MaskedEq(MAP_GROWSDOWN), MAP_GROWSDOWN)],
            "a growing-down mapping escapes the memory limit",
        ),
        // close_range(CLOSE_RANGE_UNSHARE) gives the calling thread a file
        // table of its own, as unshare(CLONE_FILES) does.
        answer(
            "close_range",
            libc::EPERM as u32,
            vec![arg(
                2,
                Op::MaskedEq(CLOSE_RANGE_UNSHARE),
                CLOSE_RANGE_UNSHARE,
            )],
            FILE_TABLES,
        ),
    ];
    // ioctls, their requests compared on 32 bits:
    // - those that preallocate like fallocate (any file system with
    //   fallocate, overlayfs included): one call reserved the whole disk
    //   before the watchdog saw it (pass 19A); and an extent-size hint,
    //   which makes every small write allocate a whole extent on XFS (a
    //   30 GiB disk filled in 33 ms under --max-upper 100M, pass 20A);
    // - fscrypt's key and policy changes: keys are held per file system and
    //   host user, and these work on any file, a read-only grant's too (the
    //   agent removed the user's key, their encrypted folders locked after
    //   the task, and filled the user's key quota past the keyctl refusal,
    //   pass 19A). Reading a policy or a key's status stays.
    for (errno, requests, reason) in [
        (
            libc::EOPNOTSUPP as u32,
            &[
                FS_IOC_RESVSP,
                FS_IOC_RESVSP64,
                FS_IOC_ZERO_RANGE,
                FS_IOC_FSSETXATTR,
            ][..],
            PREALLOCATION,
        ),
        (
            libc::EPERM as u32,
            &[
                FS_IOC_SET_ENCRYPTION_POLICY,
                FS_IOC_ADD_ENCRYPTION_KEY,
                FS_IOC_REMOVE_ENCRYPTION_KEY,
                FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS,
            ][..],
            FSCRYPT,
        ),
    ] {
        rules.extend(
            requests
                .iter()
                .map(|r| answer("ioctl", errno, vec![arg(1, Op::Eq, *r)], reason)),
        );
    }
    rules
}

/// `fcntl(F_SETPIPE_SZ)` and a pipe's default size (16 pages).
const F_SETPIPE_SZ: u64 = 1031;
const DEFAULT_PIPE_SIZE: u64 = 65536;
/// `_IOW('X', 40 | 42 | 57, struct space_resv)`, the same on x86_64 and
/// aarch64.
const FS_IOC_RESVSP: u64 = 0x4030_5828;
const FS_IOC_RESVSP64: u64 = 0x4030_582a;
const FS_IOC_ZERO_RANGE: u64 = 0x4030_5839;
/// `_IOW('X', 32, struct fsxattr)`, the same on x86_64 and aarch64.
const FS_IOC_FSSETXATTR: u64 = 0x401c_5820;
const PREALLOCATION: &str =
    "preallocation fills the disk faster than the size limit of a task's writes is checked";
const MAP_GROWSDOWN: u64 = 0x100;
/// fscrypt's ioctls that change keys or policies (`_IOR('f', 19, 12 bytes)`,
/// `_IOWR('f', 23..25, …)`), the same on x86_64 and aarch64.
const FS_IOC_SET_ENCRYPTION_POLICY: u64 = 0x800c_6613;
const FS_IOC_ADD_ENCRYPTION_KEY: u64 = 0xc050_6617;
const FS_IOC_REMOVE_ENCRYPTION_KEY: u64 = 0xc040_6618;
const FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS: u64 = 0xc040_6619;
const FSCRYPT: &str = "encryption keys belong to the user's whole file system, outside the sandbox";
const CLOSE_RANGE_UNSHARE: u64 = 2;

/// Syscall `name` answers `errno` (0: success, not done) when `args` hold.
fn answer(name: &str, errno: u32, args: Vec<ArgCond>, reason: &str) -> Rule {
    Rule {
        names: vec![name.into()],
        action: Action::Errno(errno),
        args,
        reason: reason.into(),
    }
}

const CLONE3: &str = "clone3's flags cannot be inspected; libc falls back to clone";
const THREAD_FILES: u64 = (libc::CLONE_THREAD | libc::CLONE_FILES) as u64;
const FILE_TABLES: &str =
    "a thread with a file table of its own can keep what it holds out of the task's checks";

/// `mmap`'s, `memfd_create`'s and `shmget`'s huge-page flags (the same on
/// x86_64 and aarch64).
const MAP_HUGETLB: u64 = 0x40000;
const MFD_HUGETLB: u64 = 0x4;
const SHM_HUGETLB: u64 = 0o4000;
const HUGE_PAGES: &str =
    "huge pages come from one pool for the whole machine, and no memory limit counts them";

/// Unix sockets, refused unless the policy allows them: added to whichever
/// profile the task uses. A socket file is reachable wherever it is
/// visible, and a read-only grant shows the host's own (an ssh or gpg
/// agent, a terminal multiplexer, a container engine, the session bus): a
/// connection to one runs commands or uses keys outside the sandbox, and
/// neither Landlock nor the namespaces stop it. Without `socket(AF_UNIX)`
/// there is no socket to connect. `socketpair` still works for stream and
/// seqpacket pairs (pipes between the agent's own processes); every other
/// type is refused: a datagram socket may be connected again, to any
/// socket path, and the kernel makes a unix `SOCK_RAW` pair a datagram one.
/// io_uring is refused too, whatever the profile: `IORING_OP_SOCKET`
/// makes a socket without the `socket` call.
pub fn unix_socket_rules() -> Vec<Rule> {
    let unix = libc::AF_UNIX as u64;
    let pair_types = (0u64..16)
        .filter(|t| *t != libc::SOCK_STREAM as u64 && *t != libc::SOCK_SEQPACKET as u64)
        .map(|t| {
            deny_if(
                &["socketpair"],
                vec![arg(0, Op::Eq, unix), arg(1, Op::MaskedEq(0xf), t)],
                "only stream and seqpacket pairs: any other can be connected again, to any socket path",
            )
        });
    let mut rules = vec![
        // glibc asks nscd for every user or host lookup with exactly this
        // call; refused with another errno, it stays a plain filter (no
        // report: it would be in every task) and the lookup carries on.
        Rule {
            names: vec!["socket".into()],
            action: Action::Errno(libc::EACCES as u32),
            args: vec![
                arg(0, Op::Eq, unix),
                arg(
                    1,
                    Op::Eq,
                    (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64,
                ),
                arg(2, Op::Eq, 0),
            ],
            reason: "glibc's probe for nscd, refused without a report".into(),
        },
        deny_if(
            &["socket"],
            vec![arg(0, Op::Eq, unix)],
            "a unix socket could connect to the host's agents and services through a granted folder",
        ),
        deny(
            &["io_uring_setup", "io_uring_enter", "io_uring_register"],
            "io_uring makes sockets without the socket call",
        ),
    ];
    rules.extend(pair_types);
    rules
}

/// The syscall table of the architecture we were built for.
pub fn native_table() -> &'static [(&'static str, i64)] {
    #[cfg(target_arch = "x86_64")]
    {
        syscalls::X86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        syscalls::AARCH64
    }
}

fn native_arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    {
        TargetArch::x86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
}

/// The number of `name` on this architecture.
pub fn syscall_number(name: &str) -> Option<i64> {
    native_table()
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| native_table()[i].1)
}

/// The name of syscall `nr` on this architecture.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    // Built once: the monitor names every call it receives.
    static BY_NR: std::sync::OnceLock<std::collections::HashMap<i64, &'static str>> =
        std::sync::OnceLock::new();
    BY_NR
        .get_or_init(|| native_table().iter().map(|(s, n)| (*n, *s)).collect())
        .get(&nr)
        .copied()
}

/// A compiled profile: one or more BPF programs, installed in order.
pub struct Compiled {
    pub programs: Vec<BpfProgram>,
    /// Names in the profile that do not exist on this architecture.
    pub unknown_names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("seccomp profile {profile}: {message}")]
pub struct CompileError {
    pub profile: String,
    pub message: String,
}

fn condition(c: &ArgCond) -> Result<SeccompCondition, seccompiler::BackendError> {
    let len = if c.low32 {
        SeccompCmpArgLen::Dword
    } else {
        SeccompCmpArgLen::Qword
    };
    let op = match c.op {
        Op::Eq => SeccompCmpOp::Eq,
        Op::Ne => SeccompCmpOp::Ne,
        Op::Lt => SeccompCmpOp::Lt,
        Op::Le => SeccompCmpOp::Le,
        Op::Gt => SeccompCmpOp::Gt,
        Op::Ge => SeccompCmpOp::Ge,
        Op::MaskedEq(m) => SeccompCmpOp::MaskedEq(m),
    };
    SeccompCondition::new(c.index, len, op, c.value)
}

/// Compiles `profile` for the native architecture.
///
/// seccompiler builds a filter with one match action; a profile with several
/// actions becomes one filter per action. The kernel runs every filter and
/// takes the strongest result, which gives the profile's meaning:
/// - for each action A other than the default: match A, else Allow;
/// - if the default is not Allow: any rule with another action → Allow, else the default.
pub fn compile(profile: &Profile) -> Result<Compiled, CompileError> {
    let err = |m: String| CompileError {
        profile: profile.name.clone(),
        message: m,
    };
    let mut unknown = Vec::new();
    // Per action, per syscall: `None` = always, `Some(list)` = any of these
    // condition sets.
    type Conds = Option<Vec<Vec<SeccompCondition>>>;
    let mut by_action: BTreeMap<Action, BTreeMap<i64, Conds>> = BTreeMap::new();
    let mut non_default: BTreeMap<i64, Conds> = BTreeMap::new();
    fn add(map: &mut BTreeMap<i64, Conds>, nr: i64, conds: &[SeccompCondition]) {
        let entry = map.entry(nr).or_insert_with(|| Some(Vec::new()));
        match entry {
            None => {}
            Some(_) if conds.is_empty() => *entry = None,
            Some(list) => list.push(conds.to_vec()),
        }
    }
    for rule in &profile.rules {
        let conds = rule
            .args
            .iter()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("{:?}: {e}", rule.names)))?;
        for name in &rule.names {
            let Some(nr) = syscall_number(name) else {
                unknown.push(name.clone());
                continue;
            };
            // A rule that repeats a refusing default is not redundant: an
            // allow rule for the same call would otherwise win (the default
            // program lets through every call some rule allows). It gets a
            // program of its own, and the stricter answer wins, as it does
            // between filters. Repeating an allowing default changes nothing.
            if rule.action == profile.default_action {
                if profile.default_action != Action::Allow {
                    add(by_action.entry(rule.action).or_default(), nr, &conds);
                }
                continue;
            }
            add(by_action.entry(rule.action).or_default(), nr, &conds);
            if profile.default_action != Action::Allow {
                add(&mut non_default, nr, &conds);
            }
        }
    }
    let arch = native_arch();
    let mut programs = Vec::new();
    if let Some(p) = abi_filter(profile.refuse_foreign_abi, profile.refuse_unknown) {
        programs.push(p);
    }
    let build = |rules: BTreeMap<i64, Conds>, mismatch: SeccompAction, matched: SeccompAction| {
        let mut out = BTreeMap::new();
        for (nr, conds) in rules {
            // seccompiler treats an empty rule vector as "match always".
            let rules = match conds {
                None => vec![],
                Some(sets) => sets
                    .into_iter()
                    .map(SeccompRule::new)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(e.to_string()))?,
            };
            out.insert(nr, rules);
        }
        SeccompFilter::new(out, mismatch, matched, arch)
            .and_then(BpfProgram::try_from)
            .map_err(|e| err(e.to_string()))
    };
    if profile.default_action != Action::Allow {
        programs.push(build(
            non_default,
            profile.default_action.to_seccompiler(),
            SeccompAction::Allow,
        )?);
    }
    for (action, rules) in by_action {
        if action == Action::Allow || rules.is_empty() {
            continue;
        }
        programs.push(build(rules, SeccompAction::Allow, action.to_seccompiler())?);
    }
    unknown.sort();
    unknown.dedup();
    Ok(Compiled {
        programs,
        unknown_names: unknown,
    })
}

/// The errno value that marks "notify" in the program seccompiler builds
/// for us; [`compile_monitored`] rewrites those returns into
/// `SECCOMP_RET_USER_NOTIF`, an action seccompiler does not have.
const NOTIFY_MARKER: u32 = 0xabc;

/// A profile compiled for a monitored sandbox.
pub struct Monitored {
    /// The filters that answer by themselves (everything but the denials).
    pub plain: Compiled,
    /// One program whose matches go to the supervisor's listener: the
    /// profile's EPERM denials and the watched syscalls. Install it with
    /// `SECCOMP_FILTER_FLAG_NEW_LISTENER`.
    pub notify: BpfProgram,
    /// The rules the listener answers with EPERM; everything else it sees
    /// is only observed and continues.
    pub deny_rules: Vec<Rule>,
    /// `notify` begins with the `plain` programs: install it alone, and
    /// `plain` only where user notification is unavailable.
    pub includes_plain: bool,
}

/// Compiles `profile` so that its denials become visible: for a profile
/// whose default is Allow (ours), each `Errno(EPERM)` rule is moved into the
/// notification program, together with `watch`. A profile with another
/// default (an imported allow-list) keeps its denials as plain errno
/// filters — the kernel gives the listener nothing to see for them.
pub fn compile_monitored(profile: &Profile, watch: &[Rule]) -> Result<Monitored, CompileError> {
    let is_denial =
        |r: &Rule| profile.default_action == Action::Allow && r.action == Action::Errno(EPERM);
    let deny_rules: Vec<Rule> = profile
        .rules
        .iter()
        .filter(|r| is_denial(r))
        .cloned()
        .collect();
    let plain_profile = Profile {
        rules: profile
            .rules
            .iter()
            .filter(|r| !is_denial(r))
            .cloned()
            .collect(),
        ..profile.clone()
    };
    let plain = compile(&plain_profile)?;
    let denied_nrs: std::collections::HashSet<i64> = deny_rules
        .iter()
        .flat_map(|r| r.names.iter().filter_map(|n| syscall_number(n)))
        .collect();
    // A syscall is decided up front only when one simple rule is all there
    // is to it: the dispatch answers it without looking further.
    let (fast, slow): (Vec<FastWatch>, Vec<&Rule>) = {
        let mut count: std::collections::HashMap<i64, usize> = Default::default();
        for nr in watch
            .iter()
            .flat_map(|r| r.names.iter().filter_map(|n| syscall_number(n)))
        {
            *count.entry(nr).or_default() += 1;
        }
        let mut fast = Vec::new();
        let mut slow = Vec::new();
        for r in watch {
            match FastWatch::of(r, &denied_nrs) {
                Some(f) if f.iter().all(|w| count.get(&w.nr) == Some(&1)) => fast.extend(f),
                _ => slow.push(r),
            }
        }
        (fast, slow)
    };
    let notify_profile = Profile {
        name: format!("{} (monitored)", profile.name),
        default_action: Action::Allow,
        rules: deny_rules
            .iter()
            .chain(slow)
            .map(|r| Rule {
                action: Action::Errno(NOTIFY_MARKER),
                ..r.clone()
            })
            .collect(),
        refuse_foreign_abi: false,
        refuse_unknown: false,
    };
    let mut rest = match compile(&notify_profile)?.programs.pop() {
        Some(p) => p,
        // Only fast-path calls to watch: the rest is allowed.
        None if !fast.is_empty() => vec![ins(RET_K, 0, 0, RET_ALLOW)],
        None => {
            return Err(CompileError {
                profile: profile.name.clone(),
                message: "nothing to monitor".into(),
            })
        }
    };
    let mut patched = 0;
    for i in rest.iter_mut() {
        if i.code == RET_K && i.k == RET_ERRNO | NOTIFY_MARKER {
            i.k = libc::SECCOMP_RET_USER_NOTIF;
            patched += 1;
        }
    }
    if patched == 0 && fast.is_empty() {
        return Err(CompileError {
            profile: profile.name.clone(),
            message: "the notification program has no notify return".into(),
        });
    }
    let mut notify = fast_dispatch(&fast).map_err(|message| CompileError {
        profile: profile.name.clone(),
        message,
    })?;
    notify.extend(rest);
    let folded = fold(&plain.programs, &notify);
    Ok(Monitored {
        includes_plain: folded.is_some(),
        notify: folded.unwrap_or(notify),
        plain,
        deny_rules,
    })
}

/// Classic BPF, as the programs written here by hand use it.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
/// `AUDIT_ARCH_*` of the architecture we were built for.
#[cfg(target_arch = "x86_64")]
const NATIVE_AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const NATIVE_AUDIT_ARCH: u32 = 0xc000_00b7;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

/// `programs` and then `last` as one program: where a program would answer
/// ALLOW it jumps to the next one instead. The kernel runs every installed
/// filter on each syscall it cannot answer from its cache, so for the
/// watched file calls one program instead of three is a measurable saving.
///
/// The kernel takes the strictest answer of all filters; a chain takes the
/// first answer that is not ALLOW. The two agree when the programs are
/// ordered strictest first and none answers something milder than the
/// notification that follows (LOG, TRACE): such a set is left unfolded.
fn fold(programs: &[BpfProgram], last: &BpfProgram) -> Option<BpfProgram> {
    const ACTION: u32 = 0xffff_0000;
    let rets = |p: &BpfProgram| -> Vec<u32> {
        p.iter()
            .filter(|i| i.code == RET_K && i.k & ACTION != RET_ALLOW)
            .map(|i| i.k & ACTION)
            .collect()
    };
    // Kill (0x8000_0000, 0), trap (0x0003_0000), errno (0x0005_0000):
    // stricter than USER_NOTIF (0x7fc0_0000) in the kernel's order, where
    // smaller (as i32) is stricter.
    let strict = |a: u32| (a as i32) < (libc::SECCOMP_RET_USER_NOTIF as i32);
    if programs.iter().any(|p| !rets(p).iter().all(|a| strict(*a))) {
        return None;
    }
    let mut order: Vec<&BpfProgram> = programs.iter().collect();
    order.sort_by_key(|p| {
        rets(p)
            .into_iter()
            .map(|a| a as i32)
            .min()
            .unwrap_or(i32::MAX)
    });
    let total: usize = order.iter().map(|p| p.len()).sum::<usize>() + last.len();
    if total > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(total);
    for p in order {
        let end = out.len() + p.len();
        for i in p {
            if i.code == RET_K && i.k == RET_ALLOW {
                let pc = out.len();
                out.push(ins(JA, 0, 0, (end - pc - 1) as u32));
            } else {
                out.push(ins(i.code, i.jt, i.jf, i.k));
            }
        }
    }
    out.extend(last.iter().map(|i| ins(i.code, i.jt, i.jf, i.k)));
    Some(out)
}

/// A watched syscall the notification program decides up front: notify
/// always, or when the low 32 bits of one argument equal a value.
#[derive(Debug, Clone, Copy)]
struct FastWatch {
    nr: i64,
    cond: Option<(u8, u32)>,
}

impl FastWatch {
    /// The entries for `r`, when it is simple enough and names no syscall
    /// the profile denies (those need the denial's own conditions).
    fn of(r: &Rule, denied: &std::collections::HashSet<i64>) -> Option<Vec<FastWatch>> {
        let cond = match r.args.as_slice() {
            [] => None,
            [c] if c.op == Op::Eq && c.low32 && c.index < 6 => {
                Some((c.index, (c.value & 0xffff_ffff) as u32))
            }
            _ => return None,
        };
        let nrs: Vec<i64> = r.names.iter().filter_map(|n| syscall_number(n)).collect();
        if nrs.iter().any(|n| denied.contains(n)) {
            return None;
        }
        Some(nrs.into_iter().map(|nr| FastWatch { nr, cond }).collect())
    }
}

/// The head of the notification program: the watched file calls (the
/// hottest syscalls of a file-heavy agent) are found by a short chain of
/// number compares and decided at once; every other call jumps to the
/// seccompiler-built program that follows (`rest`). Seccompiler tests the
/// syscalls one by one in number order, which put `newfstatat` behind some
/// fifty compares and cost a find or tar a few percent.
fn fast_dispatch(fast: &[FastWatch]) -> Result<Vec<seccompiler::sock_filter>, String> {
    const NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;
    // The low word of a 64-bit argument.
    #[cfg(target_endian = "little")]
    const LO: u32 = 0;
    #[cfg(target_endian = "big")]
    const LO: u32 = 4;
    if fast.is_empty() {
        return Ok(Vec::new());
    }
    // One shared tail block per distinct condition, and one "notify".
    let mut conds: Vec<(u8, u32)> = fast.iter().filter_map(|f| f.cond).collect();
    conds.sort_unstable();
    conds.dedup();
    let head = 3 + 1 + fast.len() + 1; // arch check, load nr, compares, jump to rest
    let block_len = 4;
    let notify_at = head + conds.len() * block_len;
    let total = notify_at + 1;
    let mut p = Vec::with_capacity(total);
    let to_rest = |pc: usize| (total - pc - 1) as u32;
    p.push(ins(LD_W_ABS, 0, 0, 4));
    p.push(ins(JEQ_K, 1, 0, NATIVE_AUDIT_ARCH));
    p.push(ins(JA, 0, 0, to_rest(2)));
    p.push(ins(LD_W_ABS, 0, 0, 0));
    for f in fast {
        let pc = p.len();
        let target = match f.cond {
            None => notify_at,
            Some(c) => head + conds.binary_search(&c).unwrap_or(0) * block_len,
        };
        let jt = u8::try_from(target - pc - 1)
            .map_err(|_| format!("{} watched syscalls are too many", fast.len()))?;
        p.push(ins(JEQ_K, jt, 0, f.nr as u32));
    }
    let pc = p.len();
    p.push(ins(JA, 0, 0, to_rest(pc)));
    for (index, value) in &conds {
        p.push(ins(LD_W_ABS, 0, 0, 16 + 8 * u32::from(*index) + LO));
        p.push(ins(JEQ_K, 0, 1, *value));
        p.push(ins(RET_K, 0, 0, NOTIFY));
        p.push(ins(RET_K, 0, 0, RET_ALLOW));
    }
    p.push(ins(RET_K, 0, 0, NOTIFY));
    debug_assert_eq!(p.len(), total);
    Ok(p)
}

/// Installs `prog` with `SECCOMP_FILTER_FLAG_NEW_LISTENER`; returns the
/// listener. `no_new_privs` must already be set.
pub fn install_with_listener(prog: &BpfProgram) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points to a live, correctly sized BPF program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, /* SECCOMP_SET_MODE_FILTER */
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc as i32) })
}

/// Whether `args` of syscall `nr` match one of `rules` — the same meaning
/// the compiled filter gives them, evaluated in user space by the listener.
pub fn rules_match(rules: &[Rule], nr: i64, args: &[u64; 6]) -> bool {
    rules
        .iter()
        .any(|r| r.names.iter().any(|n| syscall_number(n) == Some(nr)) && conds_hold(&r.args, args))
}

fn conds_hold(conds: &[ArgCond], args: &[u64; 6]) -> bool {
    conds.iter().all(|c| {
        let Some(&a) = args.get(c.index as usize) else {
            return false;
        };
        let (a, v) = if c.low32 {
            (a & 0xffff_ffff, c.value & 0xffff_ffff)
        } else {
            (a, c.value)
        };
        match c.op {
            Op::Eq => a == v,
            Op::Ne => a != v,
            Op::Lt => a < v,
            Op::Le => a <= v,
            Op::Gt => a > v,
            Op::Ge => a >= v,
            Op::MaskedEq(m) => {
                let m = if c.low32 { m & 0xffff_ffff } else { m };
                a & m == v
            }
        }
    })
}

/// [`rules_match`] with the names resolved once: the monitor asks it for
/// every notification, and resolving a hundred names each time cost more
/// than the kernel round trip itself.
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    by_nr: std::collections::HashMap<i64, Vec<Vec<ArgCond>>>,
}

impl RuleIndex {
    pub fn new(rules: &[Rule]) -> Self {
        let mut by_nr: std::collections::HashMap<i64, Vec<Vec<ArgCond>>> = Default::default();
        for r in rules {
            for nr in r.names.iter().filter_map(|n| syscall_number(n)) {
                by_nr.entry(nr).or_default().push(r.args.clone());
            }
        }
        RuleIndex { by_nr }
    }

    /// Whether some rule names `nr` and all its conditions hold.
    pub fn matches(&self, nr: i64, args: &[u64; 6]) -> bool {
        self.by_nr
            .get(&nr)
            .is_some_and(|alts| alts.iter().any(|c| conds_hold(c, args)))
    }
}

/// The highest syscall number of the native table: what this build knows.
fn last_known_syscall() -> u32 {
    native_table()
        .iter()
        .map(|(_, nr)| *nr as u32)
        .max()
        .unwrap_or(0)
}

/// The numbers at or below [`last_known_syscall`] that the table does not
/// name, as ranges: calls this build never reviewed (or numbers the kernel
/// never gave out, which answer ENOSYS anyway).
fn unknown_ranges() -> Vec<(u32, u32)> {
    let mut known: Vec<u32> = native_table().iter().map(|(_, nr)| *nr as u32).collect();
    known.sort_unstable();
    known.dedup();
    let mut out = Vec::new();
    let mut next = 0u32;
    for nr in known {
        if nr > next {
            out.push((next, nr - 1));
        }
        next = nr + 1;
    }
    out
}

/// A hand-written filter for what seccompiler cannot say. `foreign`: on
/// x86_64, refuse x32 syscalls (numbers with bit 30 set) and
/// foreign-architecture calls (i386 `int 0x80`) with EPERM. (The
/// seccompiler program checks the architecture too and kills on a foreign
/// one; the kernel takes the stricter answer, so an `int 0x80` call ends
/// the task with SIGSYS.) `unknown`: answer ENOSYS to every number this
/// build's table does not name, above its newest call or between two it
/// knows, as an older kernel would, so that libc falls back to what it
/// used before and no call is allowed by omission.
fn abi_filter(foreign: bool, unknown: bool) -> Option<BpfProgram> {
    let foreign = foreign && cfg!(target_arch = "x86_64");
    if !foreign && !unknown {
        return None;
    }
    let ranges = if unknown {
        unknown_ranges()
    } else {
        Vec::new()
    };
    // The holes fit one program's jumps (a unit test checks it); should a
    // future table not, the newest-call bound still holds.
    abi_program(foreign, unknown, &ranges).or_else(|| abi_program(foreign, unknown, &[]))
}

fn abi_program(foreign: bool, unknown: bool, ranges: &[(u32, u32)]) -> Option<BpfProgram> {
    const JGT_K: u16 = 0x25;
    // Jump targets, resolved once the program's length is known.
    enum To {
        Next,
        /// Past the next instruction: the check after a range's two.
        NextCheck,
        Allow,
        Enosys,
        Eperm,
    }
    let mut body: Vec<(u16, To, To, u32)> = vec![(LD_W_ABS, To::Next, To::Next, 4)]; // A = arch
    if foreign {
        body.push((JEQ_K, To::Next, To::Eperm, NATIVE_AUDIT_ARCH));
    } else {
        // Another architecture's numbers are not ours to judge here.
        body.push((JEQ_K, To::Next, To::Allow, NATIVE_AUDIT_ARCH));
    }
    body.push((LD_W_ABS, To::Next, To::Next, 0)); // A = nr
    if foreign {
        body.push((JGE_K, To::Eperm, To::Next, 0x4000_0000)); // x32
    }
    if unknown {
        body.push((JGT_K, To::Enosys, To::Next, last_known_syscall()));
        for &(lo, hi) in ranges {
            if lo == hi {
                body.push((JEQ_K, To::Enosys, To::Next, lo));
            } else {
                // lo <= nr <= hi → ENOSYS
                body.push((JGE_K, To::Next, To::NextCheck, lo));
                body.push((JGT_K, To::Next, To::Enosys, hi));
            }
        }
    }
    let n = body.len();
    let mut prog = Vec::with_capacity(n + 3);
    for (i, (code, jt, jf, k)) in body.iter().enumerate() {
        let target = |t: &To| match t {
            To::Next => i + 1,
            To::NextCheck => i + 2,
            To::Allow => n,
            To::Enosys => n + 1,
            To::Eperm => n + 2,
        };
        let off = |t: &To| u8::try_from(target(t) - (i + 1)).ok();
        prog.push(ins(*code, off(jt)?, off(jf)?, *k));
    }
    prog.push(ins(RET_K, 0, 0, RET_ALLOW));
    prog.push(ins(RET_K, 0, 0, RET_ERRNO | ENOSYS));
    prog.push(ins(RET_K, 0, 0, RET_ERRNO | EPERM));
    Some(prog)
}

/// Installs the compiled programs on the calling thread. `no_new_privs` must
/// already be set.
pub fn install(compiled: &Compiled) -> std::io::Result<()> {
    for prog in &compiled.programs {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points to a live, correctly sized BPF program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                1, /* SECCOMP_SET_MODE_FILTER */
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles_with_known_names() {
        let c = compile(&default_profile()).unwrap();
        assert!(c.programs.len() >= 2);
        #[cfg(target_arch = "x86_64")]
        assert!(c.unknown_names.is_empty(), "{:?}", c.unknown_names);
    }

    #[test]
    fn monitored_profile_patches_notify_and_evaluates_like_the_filter() {
        let m = compile_monitored(&default_profile(), &[]).unwrap();
        assert!(m.notify.iter().any(|i| i.k == libc::SECCOMP_RET_USER_NOTIF));
        let nr = |n| syscall_number(n).unwrap();
        let mut a = [0u64; 6];
        assert!(rules_match(&m.deny_rules, nr("ptrace"), &a));
        a[1] = 0x5412;
        assert!(rules_match(&m.deny_rules, nr("ioctl"), &a));
        a[1] = 0xffff_ffff_0000_5412;
        assert!(
            rules_match(&m.deny_rules, nr("ioctl"), &a),
            "low 32 bits only"
        );
        a[1] = 0x5413;
        assert!(!rules_match(&m.deny_rules, nr("ioctl"), &a));
        a = [libc::CLONE_NEWUSER as u64 | 17, 0, 0, 0, 0, 0];
        assert!(rules_match(&m.deny_rules, nr("clone"), &a));
        a = [17, 0, 0, 0, 0, 0];
        assert!(!rules_match(&m.deny_rules, nr("clone"), &a));
        a = [2, 1, 0, 0, 0, 0];
        assert!(!rules_match(&m.deny_rules, nr("socket"), &a));
        a = [17, 3, 0, 0, 0, 0];
        assert!(rules_match(&m.deny_rules, nr("socket"), &a));
        // clone3's ENOSYS stays a plain filter.
        assert!(!rules_match(&m.deny_rules, nr("clone3"), &[0; 6]));
    }

    /// A classic-BPF interpreter for the instructions our programs use, to
    /// check a program's answer for every syscall without a kernel.
    fn eval(prog: &[seccompiler::sock_filter], nr: i64, arch: u32, args: &[u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr as u32,
                4 => arch,
                o if (16..64).contains(&o) => {
                    let a = args[((o - 16) / 8) as usize];
                    if (o - 16) % 8 == 0 {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                o => panic!("load at {o}"),
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
            match i.code {
                0x20 => acc = word(i.k),
                0x54 => acc &= i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += jump(acc == i.k),
                0x25 => pc += jump(acc > i.k),
                0x35 => pc += jump(acc >= i.k),
                0x45 => pc += jump(acc & i.k != 0),
                0x06 => return i.k,
                c => panic!("instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn notify_program_answers_like_its_rules() {
        for level in [
            crate::policy::WatchLevel::Denials,
            crate::policy::WatchLevel::All,
        ] {
            let watch = crate::monitor::watch::rules(level);
            let m = compile_monitored(&default_profile(), &watch).unwrap();
            let deny = RuleIndex::new(&m.deny_rules);
            let watched = RuleIndex::new(&watch);
            let fdcwd = 0xffff_ff9c_u64;
            let samples: [[u64; 6]; 7] = [
                [0; 6],
                [fdcwd, 0x1000, 0, 0, 0, 0],
                [0xffff_ffff_0000_0000 | fdcwd, fdcwd, 0, 0, 0, 0],
                [3, fdcwd, 0, 0, 1, 0],
                [17, 3, 0, 0, 0, 0],
                [libc::CLONE_NEWUSER as u64 | 17, 0x5412, 0, 0, 0, 0],
                [u64::MAX; 6],
            ];
            assert!(m.includes_plain);
            // What the kernel answers with the plain filters and the
            // notification program installed separately: the strictest.
            let kernel = |nr: i64, arch: u32, a: &[u64; 6]| {
                let notify = if deny.matches(nr, a) || watched.matches(nr, a) {
                    libc::SECCOMP_RET_USER_NOTIF
                } else {
                    RET_ALLOW
                };
                m.plain
                    .programs
                    .iter()
                    .map(|p| eval(p, nr, arch, a))
                    .chain([notify])
                    .min_by_key(|r| (r & 0xffff_0000) as i32)
                    .unwrap_or(RET_ALLOW)
            };
            let mut calls: Vec<(String, i64, u32)> = native_table()
                .iter()
                .map(|(n, nr)| (n.to_string(), *nr, NATIVE_AUDIT_ARCH))
                .collect();
            #[cfg(target_arch = "x86_64")]
            calls.extend([
                (
                    "x32 openat".to_string(),
                    0x4000_0000 | 257,
                    NATIVE_AUDIT_ARCH,
                ),
                ("i386 mount".to_string(), 21, 0x4000_0003),
                ("i386 getpid".to_string(), 20, 0x4000_0003),
            ]);
            let last = last_known_syscall() as i64;
            calls.extend([
                ("unknown".to_string(), last + 1, NATIVE_AUDIT_ARCH),
                ("unknown".to_string(), last + 5, NATIVE_AUDIT_ARCH),
            ]);
            for (name, nr, arch) in &calls {
                for a in &samples {
                    assert_eq!(
                        eval(&m.notify, *nr, *arch, a),
                        kernel(*nr, *arch, a),
                        "{level:?} {name} {a:?}"
                    );
                }
            }
            // The fast path covers the hot calls.
            let newfstatat = syscall_number("newfstatat").or_else(|| syscall_number("fstatat"));
            if let Some(nr) = newfstatat {
                let at = m
                    .notify
                    .iter()
                    .position(|i| i.code == 0x15 && i.k == nr as u32);
                assert!(at.is_some_and(|at| at < 64), "{at:?}");
            }
        }
    }

    #[test]
    fn syscalls_newer_than_the_table_get_enosys_under_the_default_only() {
        let last = last_known_syscall() as i64;
        // mseal (462) is the newest call both tables know.
        assert!(last >= 462, "{last}");
        let answer = |c: &Compiled, nr: i64, arch: u32| {
            c.programs
                .iter()
                .map(|p| eval(p, nr, arch, &[0; 6]))
                .min_by_key(|r| (r & 0xffff_0000) as i32)
                .unwrap_or(RET_ALLOW)
        };
        let ours = compile(&default_profile()).unwrap();
        let getpid = syscall_number("getpid").unwrap();
        assert_eq!(answer(&ours, getpid, NATIVE_AUDIT_ARCH), RET_ALLOW);
        assert_eq!(answer(&ours, last, NATIVE_AUDIT_ARCH), RET_ALLOW);
        // open_tree_attr (467), file_setattr (469): not reviewed here.
        // Nor is a number between two the table knows.
        let holes: Vec<i64> = unknown_ranges()
            .iter()
            .flat_map(|&(lo, hi)| [lo as i64, hi as i64])
            .collect();
        #[cfg(target_arch = "x86_64")]
        assert!(holes.contains(&335) && holes.contains(&423), "{holes:?}");
        // Each hole refused at both ends, its known neighbours let through.
        let abi = abi_program(true, true, &unknown_ranges()).expect("every hole fits one program");
        for &(lo, hi) in &unknown_ranges() {
            for nr in [lo, hi] {
                let got = eval(&abi, nr as i64, NATIVE_AUDIT_ARCH, &[0; 6]);
                assert_eq!(got, RET_ERRNO | ENOSYS, "{nr}");
            }
            for nr in [lo - 1, hi + 1] {
                let got = eval(&abi, nr as i64, NATIVE_AUDIT_ARCH, &[0; 6]);
                assert_eq!(got, RET_ALLOW, "{nr}");
            }
        }
        for nr in [last + 1, 467, 469, 1000].into_iter().chain(holes) {
            assert_eq!(
                answer(&ours, nr, NATIVE_AUDIT_ARCH),
                RET_ERRNO | ENOSYS,
                "{nr}"
            );
        }
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(
                answer(&ours, 0x4000_0000 | 257, NATIVE_AUDIT_ARCH),
                RET_ERRNO | EPERM
            );
            assert_ne!(answer(&ours, 20, 0x4000_0003), RET_ALLOW);
        }
        // An imported profile keeps its own meaning.
        let mut allow_all = default_profile();
        allow_all.rules.clear();
        allow_all.refuse_unknown = false;
        let theirs = compile(&allow_all).unwrap();
        assert_eq!(answer(&theirs, last + 1, NATIVE_AUDIT_ARCH), RET_ALLOW);
        allow_all.refuse_foreign_abi = false;
        allow_all.refuse_unknown = true;
        let unknown_only = compile(&allow_all).unwrap();
        assert_eq!(
            answer(&unknown_only, last + 1, NATIVE_AUDIT_ARCH),
            RET_ERRNO | ENOSYS
        );
        assert_eq!(answer(&unknown_only, getpid, NATIVE_AUDIT_ARCH), RET_ALLOW);
    }

    #[test]
    fn a_syscall_named_by_two_watch_rules_is_decided_by_both() {
        const AT_FDCWD: u64 = 0xffff_ff9c;
        let rule = |args: Vec<ArgCond>| Rule {
            names: vec!["openat".into()],
            action: Action::Allow,
            args,
            reason: String::new(),
        };
        let eq = |index, value| ArgCond {
            index,
            op: Op::Eq,
            value,
            low32: true,
        };
        let watch = [rule(vec![eq(0, AT_FDCWD)]), rule(vec![eq(2, 0o100)])];
        let m = compile_monitored(&default_profile(), &watch).unwrap();
        let nr = syscall_number("openat").unwrap();
        let notify = libc::SECCOMP_RET_USER_NOTIF;
        assert_eq!(
            eval(&m.notify, nr, NATIVE_AUDIT_ARCH, &[AT_FDCWD, 0, 0, 0, 0, 0]),
            notify
        );
        assert_eq!(
            eval(&m.notify, nr, NATIVE_AUDIT_ARCH, &[3, 0, 0o100, 0, 0, 0]),
            notify
        );
        assert_eq!(
            eval(&m.notify, nr, NATIVE_AUDIT_ARCH, &[3, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
    }

    #[test]
    fn rule_index_agrees_with_rules_match() {
        let m = compile_monitored(&default_profile(), &[]).unwrap();
        let idx = RuleIndex::new(&m.deny_rules);
        let samples: [[u64; 6]; 6] = [
            [0; 6],
            [17, 3, 0, 0, 0, 0],
            [2, 1, 0, 0, 0, 0],
            [libc::CLONE_NEWUSER as u64 | 17, 0x5412, 0, 0, 0, 0],
            [u64::MAX; 6],
            [16, 0xffff_ffff_0000_5412, 1, 0, 0, 0],
        ];
        for (name, nr) in native_table() {
            for a in &samples {
                assert_eq!(
                    idx.matches(*nr, a),
                    rules_match(&m.deny_rules, *nr, a),
                    "{name} {a:?}"
                );
            }
            assert_eq!(syscall_name(*nr), Some(*name));
        }
    }

    #[test]
    fn tables_are_sorted_for_binary_search() {
        for t in [syscalls::X86_64, syscalls::AARCH64] {
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert_eq!(syscall_number("clone3"), Some(435));
    }
}
