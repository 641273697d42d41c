//! The D-Bus API (zbus, session bus): the service agents and the CLI talk
//! to ([`service`]), the client the CLI uses ([`client`]), and the policy
//! dictionary both sides agree on ([`policy_from_dict`]).
//!
//! A task cannot use this service from inside its sandbox: the sandbox
//! scrubs `DBUS_SESSION_BUS_ADDRESS`, hides `XDG_RUNTIME_DIR` and refuses
//! unix sockets; and should a task be allowed unix sockets and find the
//! bus anyway, every method refuses callers in another user namespace
//! (tests/dbus.rs proves both).

pub mod client;
pub mod service;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::policy::{parse_size, Access, Grant, NetMode, Policy, SeccompChoice, WatchLevel};
use crate::task::TaskId;

pub const SUPERVISOR_PATH: &str = "/io/github/airlock/Supervisor";
pub const SUPERVISOR_IFACE: &str = "io.github.airlock.Supervisor1";
pub const TASK_IFACE: &str = "io.github.airlock.Task1";

/// `/io/github/airlock/Task/<id with - replaced by _>`.
pub fn task_path(id: &TaskId) -> zbus::Result<OwnedObjectPath> {
    Ok(OwnedObjectPath::try_from(format!(
        "/io/github/airlock/Task/{}",
        id.as_str().replace('-', "_")
    ))?)
}

/// The task id in a task object path.
pub fn task_id_of(path: &str) -> Option<TaskId> {
    let last = path.strip_prefix("/io/github/airlock/Task/")?;
    TaskId::parse(&last.replace('_', "-")).ok()
}

fn bad(key: &str, what: &str) -> String {
    crate::i18n::gettext_f("policy key {key}: {what}", &[("key", key), ("what", what)])
}

fn string(key: &str, v: &Value<'_>) -> Result<String, String> {
    match v {
        Value::Str(s) => Ok(s.to_string()),
        _ => Err(bad(key, "expected a string (s)")),
    }
}

fn strings(key: &str, v: &Value<'_>) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a.iter().map(|x| string(key, x)).collect(),
        _ => Err(bad(key, "expected a list of strings (as)")),
    }
}

fn number(key: &str, v: &Value<'_>) -> Result<u64, String> {
    let n: i128 = match v {
        Value::U8(n) => (*n).into(),
        Value::U16(n) => (*n).into(),
        Value::U32(n) => (*n).into(),
        Value::U64(n) => (*n).into(),
        Value::I16(n) => (*n).into(),
        Value::I32(n) => (*n).into(),
        Value::I64(n) => (*n).into(),
        _ => return Err(bad(key, "expected a number (t, u or i)")),
    };
    u64::try_from(n).map_err(|_| bad(key, "must not be negative"))
}

fn size(key: &str, v: &Value<'_>) -> Result<u64, String> {
    match v {
        Value::Str(s) => parse_size(s).map_err(|e| bad(key, &e.to_string())),
        other => number(key, other),
    }
}

fn absolute(key: &str, p: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(bad(key, &format!("{p:?} is not an absolute path")));
    }
    Ok(path)
}

fn grants(key: &str, v: &Value<'_>) -> Result<Vec<Grant>, String> {
    let Value::Array(a) = v else {
        return Err(bad(
            key,
            "expected a(sb) (path, writable) or as (PATH[:ro|:rw])",
        ));
    };
    let mut out = Vec::new();
    for item in a.iter() {
        match item {
            Value::Str(s) => {
                let g = Grant::parse(s).map_err(|e| bad(key, &e.to_string()))?;
                out.push(Grant {
                    path: absolute(key, &g.path.to_string_lossy())?,
                    access: g.access,
                });
            }
            Value::Structure(st) => match st.fields() {
                [Value::Str(p), Value::Bool(w)] => out.push(Grant {
                    path: absolute(key, p)?,
                    access: if *w { Access::Rw } else { Access::Ro },
                }),
                _ => {
                    return Err(bad(
                        key,
                        "each entry must be (sb): a path and whether it is writable",
                    ))
                }
            },
            _ => return Err(bad(key, "expected a(sb) or as")),
        }
    }
    Ok(out)
}

/// Builds a policy (and the final argv) from the `a{sv}` of `SubmitTask`.
/// Errors name the key. Keys are documented in `docs/dbus-api.md`.
pub fn policy_from_dict(
    dict: &HashMap<String, OwnedValue>,
    argv: Vec<String>,
) -> Result<(Policy, Vec<String>), String> {
    let mut p = Policy::default();
    let mut argv = argv;
    // A profile first, so the other keys add to it.
    if let Some(v) = dict.get("agent") {
        let name = string("agent", v)?;
        let prof = crate::policy::profile::load(&name).map_err(|e| bad("agent", &e.to_string()))?;
        p = prof.policy;
        let mut full = prof.command;
        full.extend(argv);
        argv = full;
    }
    for (key, v) in dict {
        let k = key.as_str();
        let v: &Value<'_> = v;
        match k {
            "agent" => {}
            "grants" => p.grants.extend(grants(k, v)?),
            "deny" => {
                for d in strings(k, v)? {
                    p.deny.push(absolute(k, &d)?);
                }
            }
            "env" => match v {
                Value::Dict(d) => {
                    let d = d.try_clone().map_err(|_| bad(k, "expected a{ss}"))?;
                    let m: HashMap<String, String> =
                        HashMap::try_from(d).map_err(|_| bad(k, "expected a{ss}"))?;
                    let mut m: Vec<_> = m.into_iter().collect();
                    m.sort();
                    p.env.extend(m);
                }
                _ => return Err(bad(k, "expected a{ss}")),
            },
            "net" => {
                p.net.mode = match string(k, v)?.as_str() {
                    "none" => NetMode::None,
                    "allow" => NetMode::Allow,
                    "ask" => NetMode::Ask,
                    _ => return Err(bad(k, "expected none, allow or ask")),
                }
            }
            "allow_hosts" => {
                let hosts = strings(k, v)?;
                crate::netproxy::hosts::AllowList::parse(&hosts)
                    .map_err(|e| bad(k, &e.to_string()))?;
                p.net.allow_hosts.extend(hosts);
            }
            "consent_timeout" => p.net.consent_timeout_secs = number(k, v)?,
            "memory" => p.limits.memory = size(k, v)?,
            "tmp_size" => p.limits.tmp_size = size(k, v)?,
            "max_upper" => p.limits.max_upper = size(k, v)?,
            "pids" => p.limits.pids = number(k, v)?,
            "nofile" => p.limits.nofile = number(k, v)?,
            "timeout" => p.limits.timeout_secs = number(k, v)?,
            "cpu" => match v {
                Value::F64(c) if *c > 0.0 && c.is_finite() => p.limits.cpu = *c,
                _ => return Err(bad(k, "expected a positive number of cores (d)")),
            },
            "watch" => {
                p.watch = match string(k, v)?.as_str() {
                    "denials" => WatchLevel::Denials,
                    "all" => WatchLevel::All,
                    _ => return Err(bad(k, "expected denials or all")),
                }
            }
            "require_landlock" => match v {
                Value::Bool(b) => p.require_landlock = *b,
                _ => return Err(bad(k, "expected a boolean (b)")),
            },
            "unix_sockets" => match v {
                Value::Bool(b) => p.unix_sockets = *b,
                _ => return Err(bad(k, "expected a boolean (b)")),
            },
            "persistent_home" => p.persistent_home = Some(string(k, v)?),
            "seccomp_profile" => p.seccomp = SeccompChoice::OciFile(absolute(k, &string(k, v)?)?),
            other => return Err(bad(other, "unknown key (see docs/dbus-api.md)")),
        }
    }
    if argv.is_empty() || argv[0].is_empty() {
        return Err(bad("argv", "no command to run"));
    }
    if let Some((key, why)) = p.limits.problem() {
        return Err(bad(key, &why));
    }
    Ok((p, argv))
}

/// The `a{sv}` for `policy`; relative paths are made absolute against
/// `cwd` (the service runs elsewhere).
pub fn policy_to_dict(p: &Policy, cwd: &Path) -> HashMap<String, Value<'static>> {
    let abs = |x: &Path| cwd.join(x).to_string_lossy().into_owned();
    let mut d: HashMap<String, Value<'static>> = HashMap::new();
    let grants: Vec<(String, bool)> = p
        .grants
        .iter()
        .map(|g| (abs(&g.path), g.access == Access::Rw))
        .collect();
    d.insert("grants".into(), Value::from(grants));
    d.insert(
        "deny".into(),
        Value::from(p.deny.iter().map(|x| abs(x)).collect::<Vec<_>>()),
    );
    let env: HashMap<String, String> = p.env.iter().cloned().collect();
    d.insert("env".into(), Value::from(env));
    let net = match p.net.mode {
        NetMode::None => "none",
        NetMode::Allow => "allow",
        NetMode::Ask => "ask",
    };
    d.insert("net".into(), Value::from(net.to_string()));
    d.insert("allow_hosts".into(), Value::from(p.net.allow_hosts.clone()));
    d.insert(
        "consent_timeout".into(),
        Value::from(p.net.consent_timeout_secs),
    );
    d.insert("memory".into(), Value::from(p.limits.memory));
    d.insert("tmp_size".into(), Value::from(p.limits.tmp_size));
    d.insert("max_upper".into(), Value::from(p.limits.max_upper));
    d.insert("pids".into(), Value::from(p.limits.pids));
    d.insert("nofile".into(), Value::from(p.limits.nofile));
    d.insert("timeout".into(), Value::from(p.limits.timeout_secs));
    d.insert("cpu".into(), Value::from(p.limits.cpu));
    let watch = match p.watch {
        WatchLevel::Denials => "denials",
        WatchLevel::All => "all",
    };
    d.insert("watch".into(), Value::from(watch.to_string()));
    d.insert("require_landlock".into(), Value::from(p.require_landlock));
    d.insert("unix_sockets".into(), Value::from(p.unix_sockets));
    if let Some(a) = &p.persistent_home {
        d.insert("persistent_home".into(), Value::from(a.clone()));
    }
    if let SeccompChoice::OciFile(f) = &p.seccomp {
        d.insert("seccomp_profile".into(), Value::from(abs(f)));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(entries: Vec<(&str, Value<'static>)>) -> HashMap<String, OwnedValue> {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), OwnedValue::try_from(v).unwrap()))
            .collect()
    }

    #[test]
    fn round_trip_through_the_dictionary() {
        let mut p = Policy::default();
        p.grants.push(Grant {
            path: "/srv/a".into(),
            access: Access::Rw,
        });
        p.grants.push(Grant {
            path: "rel".into(),
            access: Access::Ro,
        });
        p.net.mode = NetMode::Ask;
        p.net.allow_hosts.push("crates.io".into());
        p.limits.memory = 123 << 20;
        p.limits.cpu = 0.5;
        p.env.push(("A".into(), "b".into()));
        p.persistent_home = Some("coder".into());
        let d: HashMap<String, OwnedValue> = policy_to_dict(&p, Path::new("/home/u"))
            .into_iter()
            .map(|(k, v)| (k, OwnedValue::try_from(v).unwrap()))
            .collect();
        let (q, argv) = policy_from_dict(&d, vec!["true".into()]).unwrap();
        assert_eq!(argv, vec!["true"]);
        assert_eq!(q.grants[1].path, PathBuf::from("/home/u/rel"));
        let mut expected = p.clone();
        expected.grants[1].path = "/home/u/rel".into();
        assert_eq!(q, expected);
    }

    #[test]
    fn grants_as_strings_and_errors_name_the_key() {
        let d = dict(vec![(
            "grants",
            Value::from(vec!["/srv/a:rw".to_string(), "/srv/b".to_string()]),
        )]);
        let (p, _) = policy_from_dict(&d, vec!["x".into()]).unwrap();
        assert_eq!(p.grants[0].access, Access::Rw);
        assert_eq!(p.grants[1].access, Access::Ro);
        for (k, v) in [
            ("memory", Value::from("lots")),
            ("pids", Value::from(-1i32)),
            ("pids", Value::from(0u32)),
            ("memory", Value::from("100K")),
            ("nofile", Value::from(3u32)),
            ("nofile", Value::from(u64::MAX)),
            ("cpu", Value::from(0.0f64)),
            ("grants", Value::from(vec!["relative:rw".to_string()])),
            ("watch", Value::from("some")),
            ("nonsense", Value::from(true)),
        ] {
            let e = policy_from_dict(&dict(vec![(k, v)]), vec!["x".into()]).unwrap_err();
            assert!(e.contains(&format!("policy key {k}")), "{e}");
        }
        let e = policy_from_dict(&HashMap::new(), vec![]).unwrap_err();
        assert!(e.contains("argv"), "{e}");
    }

    #[test]
    fn task_paths_round_trip() {
        let id = TaskId::parse("20261127-021500-1a2b").unwrap();
        let p = task_path(&id).unwrap();
        assert_eq!(p.as_str(), "/io/github/airlock/Task/20261127_021500_1a2b");
        assert_eq!(task_id_of(p.as_str()), Some(id));
    }
}
