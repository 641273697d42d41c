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
    rules.push(Rule {
        names: vec!["clone3".into()],
        action: Action::Errno(ENOSYS),
        args: vec![],
        reason: "clone3's flags cannot be inspected; libc falls back to clone".into(),
    });
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
    }
}

pub const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 1 << 3;

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
    native_table()
        .iter()
        .find(|(_, n)| *n == nr)
        .map(|(s, _)| *s)
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
            if rule.action == profile.default_action {
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
    if profile.refuse_foreign_abi {
        if let Some(p) = foreign_abi_filter() {
            programs.push(p);
        }
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
    let notify_profile = Profile {
        name: format!("{} (monitored)", profile.name),
        default_action: Action::Allow,
        rules: deny_rules
            .iter()
            .chain(watch.iter())
            .map(|r| Rule {
                action: Action::Errno(NOTIFY_MARKER),
                ..r.clone()
            })
            .collect(),
        refuse_foreign_abi: false,
    };
    let mut compiled = compile(&notify_profile)?;
    let mut notify = compiled.programs.pop().ok_or_else(|| CompileError {
        profile: profile.name.clone(),
        message: "nothing to monitor".into(),
    })?;
    const RET_K: u16 = 0x06;
    const RET_ERRNO: u32 = 0x0005_0000;
    let mut patched = 0;
    for ins in notify.iter_mut() {
        if ins.code == RET_K && ins.k == RET_ERRNO | NOTIFY_MARKER {
            ins.k = libc::SECCOMP_RET_USER_NOTIF;
            patched += 1;
        }
    }
    if patched == 0 {
        return Err(CompileError {
            profile: profile.name.clone(),
            message: "the notification program has no notify return".into(),
        });
    }
    Ok(Monitored {
        plain,
        notify,
        deny_rules,
    })
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
    rules.iter().any(|r| {
        r.names.iter().any(|n| syscall_number(n) == Some(nr))
            && r.args.iter().all(|c| {
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
    })
}

/// A hand-written filter for what seccompiler cannot say: on x86_64, refuse
/// x32 syscalls (numbers with bit 30 set) and foreign-architecture calls
/// (i386 `int 0x80`) with EPERM.
fn foreign_abi_filter() -> Option<BpfProgram> {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    #[cfg(target_arch = "x86_64")]
    {
        const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
        Some(vec![
            ins(LD_W_ABS, 0, 0, 4),              // A = arch
            ins(JEQ_K, 0, 3, AUDIT_ARCH_X86_64), // foreign → errno
            ins(LD_W_ABS, 0, 0, 0),              // A = nr
            ins(JGE_K, 1, 0, 0x4000_0000),       // x32 → errno
            ins(RET_K, 0, 0, RET_ALLOW),
            ins(RET_K, 0, 0, RET_ERRNO | EPERM),
        ])
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (LD_W_ABS, JEQ_K, JGE_K, RET_K, RET_ALLOW, RET_ERRNO, ins);
        None
    }
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

    #[test]
    fn tables_are_sorted_for_binary_search() {
        for t in [syscalls::X86_64, syscalls::AARCH64] {
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert_eq!(syscall_number("clone3"), Some(435));
    }
}
