//! Import of Docker/OCI seccomp profiles (the JSON format of `docker run
//! --security-opt seccomp=…` and the OCI runtime spec) into our profile
//! model. What we cannot honour is an error naming the line, never dropped:
//! a profile that says less than it seems would be worse than none.

use std::path::Path;

use serde::Deserialize;

use crate::sandbox::seccomp::{Action, ArgCond, Op, Profile, Rule};
use crate::Error;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OciProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    syscalls: Vec<OciSyscall>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OciSyscall {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    args: Vec<OciArg>,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    includes: Option<Filter>,
    #[serde(default)]
    excludes: Option<Filter>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OciArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

fn native_arch_names() -> &'static [&'static str] {
    #[cfg(target_arch = "x86_64")]
    {
        &["SCMP_ARCH_X86_64", "amd64", "x86_64"]
    }
    #[cfg(target_arch = "aarch64")]
    {
        &["SCMP_ARCH_AARCH64", "arm64", "aarch64"]
    }
}

fn kernel_version() -> (u32, u32) {
    let Ok(u) = nix::sys::utsname::uname() else {
        return (0, 0);
    };
    let r = u.release().to_string_lossy().into_owned();
    let mut it = r
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Line numbers (1-based) of each element of the top-level `"syscalls"`
/// array, found by a small scan that respects strings and nesting.
fn syscall_entry_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let Some(key) = text.find("\"syscalls\"") else {
        return lines;
    };
    let bytes = text.as_bytes();
    let mut i = key + "\"syscalls\"".len();
    while i < bytes.len() && bytes[i] != b'[' {
        i += 1;
    }
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'[' | b'{' => {
                    if depth == 1 && b == b'{' {
                        lines.push(text[..i].matches('\n').count() + 1);
                    }
                    depth += 1;
                }
                b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    lines
}

fn action(s: &str, errno: Option<u32>, default_errno: u32) -> Result<Action, String> {
    // The kernel keeps 16 bits of an errno action: 65536 became 0, a
    // refusal turned into "succeeds without doing anything" (pass 20A).
    if let Some(e) = errno.filter(|e| *e == 0 || *e > 4095) {
        return Err(format!("errnoRet {e} is not an error number (1-4095)"));
    }
    Ok(match s {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno.unwrap_or(default_errno)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_TRACE" => return Err("SCMP_ACT_TRACE needs a tracer, which Airlock never attaches".into()),
        "SCMP_ACT_NOTIFY" => return Err("SCMP_ACT_NOTIFY needs a listener of the profile's own; Airlock's monitor is the only listener".into()),
        other => return Err(format!("unknown action {other:?}")),
    })
}

/// Whether a rule's names include `ioctl`.
fn names_ioctl(names: &[String]) -> bool {
    names.iter().any(|n| n == "ioctl")
}

fn op(s: &str, value: u64, value_two: u64) -> Result<(Op, u64), String> {
    Ok(match s {
        "SCMP_CMP_EQ" => (Op::Eq, value),
        "SCMP_CMP_NE" => (Op::Ne, value),
        "SCMP_CMP_LT" => (Op::Lt, value),
        "SCMP_CMP_LE" => (Op::Le, value),
        "SCMP_CMP_GT" => (Op::Gt, value),
        "SCMP_CMP_GE" => (Op::Ge, value),
        // libseccomp: value is the mask, valueTwo the datum.
        "SCMP_CMP_MASKED_EQ" => (Op::MaskedEq(value), value_two),
        other => return Err(format!("unknown comparison {other:?}")),
    })
}

/// Parses an OCI profile from `text`; `name` is used in messages.
pub fn import_str(name: &str, text: &str) -> Result<Profile, Error> {
    let perr = |line: usize, column: usize, message: String| Error::Policy {
        file: name.to_string(),
        line,
        column,
        message,
    };
    let oci: OciProfile =
        serde_json::from_str(text).map_err(|e| perr(e.line(), e.column(), e.to_string()))?;
    if !oci.flags.is_empty() {
        return Err(perr(
            1,
            1,
            format!("seccomp flags {:?} are not supported", oci.flags),
        ));
    }
    if oci.listener_path.is_some() || oci.listener_metadata.is_some() {
        return Err(perr(
            1,
            1,
            "listenerPath: Airlock's monitor is the only seccomp listener".into(),
        ));
    }
    let native = native_arch_names();
    let mut arches: Vec<&str> = oci.architectures.iter().map(String::as_str).collect();
    for m in &oci.arch_map {
        arches.push(&m.architecture);
        arches.extend(m.sub_architectures.iter().map(String::as_str));
    }
    if !arches.is_empty() && !arches.iter().any(|a| native.contains(a)) {
        return Err(perr(
            1,
            1,
            format!(
                "the profile covers {arches:?}, not this machine's architecture ({})",
                native[0]
            ),
        ));
    }
    let default_errno = oci.default_errno_ret.unwrap_or(libc::EPERM as u32);
    let default_action = action(&oci.default_action, Some(default_errno), default_errno)
        .map_err(|m| perr(1, 1, m))?;
    let lines = syscall_entry_lines(text);
    if oci.syscalls.len() > MAX_RULES {
        let line = lines.get(MAX_RULES).copied().unwrap_or(1);
        return Err(perr(
            line,
            1,
            format!(
                "more than {MAX_RULES} syscalls entries; a seccomp filter cannot hold that many (Docker's default has about 60): merge entries with the same action into one `names` list"
            ),
        ));
    }
    let kernel = kernel_version();
    let mut rules = Vec::new();
    for (i, sc) in oci.syscalls.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(1);
        if let Some(inc) = &sc.includes {
            // A rule included only for some capabilities never applies: the
            // agent has none.
            if !inc.caps.is_empty() {
                continue;
            }
            if !inc.arches.is_empty() && !inc.arches.iter().any(|a| native.contains(&a.as_str())) {
                continue;
            }
            if let Some(v) = &inc.min_kernel {
                let mut it = v.split('.').map(|p| p.parse::<u32>());
                match (it.next(), it.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => {
                        if kernel < (a, b) {
                            continue;
                        }
                    }
                    _ => return Err(perr(line, 1, format!("minKernel {v:?} is not MAJOR.MINOR"))),
                }
            }
        }
        if let Some(exc) = &sc.excludes {
            if exc.arches.iter().any(|a| native.contains(&a.as_str())) {
                continue;
            }
            if exc.min_kernel.is_some() {
                return Err(perr(line, 1, "excludes.minKernel is not supported".into()));
            }
            // excludes.caps: we hold no capability, so the rule applies.
        }
        let act = action(&sc.action, sc.errno_ret, default_errno).map_err(|m| perr(line, 1, m))?;
        let mut args = Vec::new();
        for a in &sc.args {
            if a.index > 5 {
                return Err(perr(
                    line,
                    1,
                    format!("argument index {} is out of range (0-5)", a.index),
                ));
            }
            let (o, v) = op(&a.op, a.value, a.value_two).map_err(|m| perr(line, 1, m))?;
            // An ioctl's request is an int to the kernel: compared on its
            // low 32 bits, or high bits set by the caller pass a rule
            // (CVE-2019-10063; pass 20A).
            let low32 = a.index == 1 && names_ioctl(&sc.names);
            if low32 && sc.names.len() > 1 {
                return Err(perr(
                    line,
                    1,
                    "a rule with argument conditions on ioctl must name ioctl alone (its request is compared on 32 bits, other calls' arguments on 64)".into(),
                ));
            }
            args.push(ArgCond {
                index: a.index,
                op: o,
                value: if low32 { v & 0xffff_ffff } else { v },
                low32,
            });
        }
        let mut names = sc.names.clone();
        names.extend(sc.name.clone());
        if names.is_empty() {
            return Err(perr(line, 1, "a syscalls entry names no syscall".into()));
        }
        rules.push(Rule {
            names,
            action: act,
            args,
            reason: sc.comment.clone().unwrap_or_default(),
        });
    }
    Ok(Profile {
        name: name.to_string(),
        default_action,
        rules,
        refuse_foreign_abi: true,
        refuse_unknown: false,
    })
}

/// The most `syscalls` entries imported: beyond this the filter would not
/// fit the kernel's limit anyway, and compiling it only takes longer.
pub const MAX_RULES: usize = 4096;

/// The largest OCI profile read; Docker's default is about 20 KiB.
pub const MAX_PROFILE_BYTES: u64 = 4 << 20;

/// Reads and imports an OCI profile file.
pub fn import_file(path: &Path) -> Result<Profile, Error> {
    let text = super::read_settings_file(path, MAX_PROFILE_BYTES)?;
    import_str(&path.display().to_string(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_profile_imports() {
        let p = import_str(
            "p.json",
            r#"{
  "defaultAction": "SCMP_ACT_ERRNO",
  "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
  "syscalls": [
    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
    {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}
  ]
}"#,
        )
        .unwrap();
        assert_eq!(p.default_action, Action::Errno(libc::EPERM as u32));
        assert_eq!(p.rules.len(), 2, "cap-only rules never apply");
        assert!(crate::sandbox::seccomp::compile(&p).is_ok());
    }

    #[test]
    fn unsupported_construct_names_its_line() {
        let text = "{\n  \"defaultAction\": \"SCMP_ACT_ALLOW\",\n  \"syscalls\": [\n    {\"names\": [\"read\"], \"action\": \"SCMP_ACT_ALLOW\"},\n    {\"names\": [\"ptrace\"], \"action\": \"SCMP_ACT_TRACE\"}\n  ]\n}";
        let e = import_str("x.json", text).unwrap_err().to_string();
        assert!(e.starts_with("x.json:5:"), "{e}");
        let e = import_str("y.json", "{\"defaultAction\": 3}")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("y.json:1:"), "{e}");
        let e = import_str(
            "z.json",
            "{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"bogus\": 1}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn ioctl_requests_compare_32_bits_and_errno_values_are_errors() {
        let p = import_str(
            "p.json",
            r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO",
     "args": [{"index": 1, "value": 16987, "op": "SCMP_CMP_EQ"}]}
  ]
}"#,
        )
        .unwrap();
        assert!(p.rules[0].args[0].low32, "{:?}", p.rules[0]);
        let mixed = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    {"names": ["ioctl", "read"], "action": "SCMP_ACT_ERRNO",
     "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]}
  ]
}"#;
        let e = import_str("m.json", mixed).unwrap_err().to_string();
        assert!(
            e.starts_with("m.json:4:") && e.contains("ioctl alone"),
            "{e}"
        );
        let big = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 65536}
  ]
}"#;
        let e = import_str("e.json", big).unwrap_err().to_string();
        assert!(e.starts_with("e.json:4:") && e.contains("65536"), "{e}");
    }

    #[test]
    fn too_many_entries_are_refused_at_the_first_extra_one() {
        let entry = "    {\"names\": [\"getpid\"], \"action\": \"SCMP_ACT_ERRNO\"}";
        let entries = vec![entry; MAX_RULES + 1].join(",\n");
        let text = format!(
            "{{\n  \"defaultAction\": \"SCMP_ACT_ALLOW\",\n  \"syscalls\": [\n{entries}\n  ]\n}}"
        );
        let e = import_str("big.json", &text).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("big.json:{}:", MAX_RULES + 4)) && e.contains("more than"),
            "{e}"
        );
    }
}
