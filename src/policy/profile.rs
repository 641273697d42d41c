//! Agent profiles: policy as code. A TOML file per agent in
//! `$XDG_CONFIG_HOME/airlock/agents/NAME.toml` names the command and the
//! default policy (schema in `docs/agent-profiles.md`). Every error names
//! the file, line and column.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{parse_size, Access, Grant, NetMode, NetPolicy, Policy, SeccompChoice, WatchLevel};
use crate::i18n::gettext_f;
use crate::Error;

/// A loaded, checked profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    pub command: Vec<String>,
    pub policy: Policy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    description: Option<String>,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    persistent_home: bool,
    watch: Option<WatchLevel>,
    #[serde(default)]
    require_landlock: bool,
    #[serde(default)]
    unix_sockets: bool,
    seccomp_profile: Option<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    grant: Vec<RawGrant>,
    network: Option<RawNetwork>,
    limits: Option<RawLimits>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    path: Spanned<String>,
    #[serde(default = "ro")]
    access: Access,
}

fn ro() -> Access {
    Access::Ro
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    mode: NetMode,
    #[serde(default)]
    allow_hosts: Vec<Spanned<String>>,
    consent_timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<String>>,
    pids: Option<Spanned<u64>>,
    cpu: Option<Spanned<f64>>,
    nofile: Option<Spanned<u64>>,
    tmp_size: Option<Spanned<String>>,
    /// Seconds; 0 = none.
    timeout: Option<u64>,
    max_upper: Option<Spanned<String>>,
}

/// The folder of the user's agent profiles.
pub fn profiles_dir() -> PathBuf {
    crate::dirs::config_dir().join("agents")
}

/// Line and column (1-based, columns in characters) of byte `offset`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

struct Ctx<'a> {
    file: String,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: String) -> Error {
        let (line, column) = line_column(self.text, span.start);
        Error::Policy {
            file: self.file.clone(),
            line,
            column,
            message,
        }
    }

    fn size(&self, v: &Spanned<String>) -> Result<u64, Error> {
        parse_size(v.get_ref()).map_err(|e| self.err(v.span(), plain(e)))
    }

    fn path(&self, v: &Spanned<String>, home: &Path) -> Result<PathBuf, Error> {
        let s = v.get_ref();
        let p = if s == "~" {
            home.to_path_buf()
        } else if let Some(rest) = s.strip_prefix("~/") {
            home.join(rest)
        } else {
            PathBuf::from(s)
        };
        if !p.is_absolute() {
            return Err(self.err(
                v.span(),
                gettext_f(
                    "{path} is not an absolute path (start it with / or ~/)",
                    &[("path", s)],
                ),
            ));
        }
        Ok(p)
    }
}

/// The message of an `Error::Invalid` without its variant's decoration.
fn plain(e: Error) -> String {
    match e {
        Error::Invalid(m) => m,
        other => other.to_string(),
    }
}

/// Parses and checks a profile. `file` is how errors name it; `home`
/// replaces a leading `~`.
pub fn parse(name: &str, file: &str, text: &str, home: &Path) -> Result<Profile, Error> {
    let ctx = Ctx {
        file: file.to_string(),
        text,
    };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err(span, e.message().trim().to_string())
    })?;
    if raw.command.get_ref().is_empty() || raw.command.get_ref()[0].is_empty() {
        return Err(ctx.err(
            raw.command.span(),
            gettext_f("`command` is empty: name the program to run", &[]),
        ));
    }
    let mut p = Policy::default();
    for g in &raw.grant {
        p.grants.push(Grant {
            path: ctx.path(&g.path, home)?,
            access: g.access,
        });
    }
    for d in &raw.deny {
        p.deny.push(ctx.path(d, home)?);
    }
    if let Some(n) = &raw.network {
        let hosts: Vec<String> = n.allow_hosts.iter().map(|h| h.get_ref().clone()).collect();
        for h in &n.allow_hosts {
            crate::netproxy::hosts::AllowList::parse(std::slice::from_ref(h.get_ref()))
                .map_err(|e| ctx.err(h.span(), plain(e)))?;
        }
        p.net = NetPolicy {
            mode: n.mode,
            allow_hosts: hosts,
            consent_timeout_secs: n.consent_timeout.unwrap_or(p.net.consent_timeout_secs),
        };
    }
    if let Some(l) = &raw.limits {
        if let Some(v) = &l.memory {
            p.limits.memory = ctx.size(v)?;
        }
        if let Some(v) = &l.pids {
            p.limits.pids = *v.get_ref();
        }
        if let Some(v) = &l.cpu {
            let c = *v.get_ref();
            if !(c > 0.0 && c.is_finite()) {
                return Err(ctx.err(
                    v.span(),
                    gettext_f(
                        "cpu = {c}: give a positive number of cores",
                        &[("c", &c.to_string())],
                    ),
                ));
            }
            p.limits.cpu = c;
        }
        if let Some(v) = &l.nofile {
            p.limits.nofile = *v.get_ref();
        }
        if let Some(v) = &l.tmp_size {
            p.limits.tmp_size = ctx.size(v)?;
        }
        if let Some(v) = l.timeout {
            p.limits.timeout_secs = v;
        }
        if let Some(v) = &l.max_upper {
            p.limits.max_upper = ctx.size(v)?;
        }
        if let Some((key, why)) = p.limits.problem() {
            let span = match key {
                "memory" => l.memory.as_ref().map(|v| v.span()),
                "pids" => l.pids.as_ref().map(|v| v.span()),
                _ => l.nofile.as_ref().map(|v| v.span()),
            };
            return Err(ctx.err(span.unwrap_or(0..0), format!("{key}: {why}")));
        }
    }
    if let Some(w) = raw.watch {
        p.watch = w;
    }
    p.require_landlock = raw.require_landlock;
    p.unix_sockets = raw.unix_sockets;
    if let Some(s) = &raw.seccomp_profile {
        p.seccomp = SeccompChoice::OciFile(ctx.path(s, home)?);
    }
    for (k, v) in &raw.env {
        let key = k.get_ref();
        if key.is_empty() || key.contains('=') || key.contains('\0') || v.contains('\0') {
            return Err(ctx.err(
                k.span(),
                gettext_f(
                    "{key} is not a valid environment variable name",
                    &[("key", key)],
                ),
            ));
        }
        p.env.push((key.clone(), v.clone()));
    }
    if raw.persistent_home {
        p.persistent_home = Some(name.to_string());
    }
    Ok(Profile {
        name: name.to_string(),
        description: raw.description,
        command: raw.command.into_inner(),
        policy: p,
    })
}

/// Whether `name` can name a profile file (no path separators, no dot
/// files).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The largest agent profile read: a few lines are typical.
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// Loads a profile file.
pub fn load_file(name: &str, path: &Path) -> Result<Profile, Error> {
    let text = super::read_settings_file(path, MAX_PROFILE_BYTES)?;
    parse(
        name,
        &path.display().to_string(),
        &text,
        &crate::dirs::home_dir(),
    )
}

/// Adds `entry` (an `--allow-host` entry) to the network allow-list of the
/// profile text, keeping everything else — comments included — as it was.
fn with_allowed_host(text: &str, entry: &str) -> String {
    let quoted = serde_json::to_string(entry).unwrap_or_else(|_| format!("{entry:?}"));
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| l.trim() == "[network]");
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match header {
        Some(h) => {
            // The end of the [network] table: the next table header.
            let end = (h + 1..lines.len())
                .find(|&i| lines[i].trim_start().starts_with('['))
                .unwrap_or(lines.len());
            match (h + 1..end).find(|&i| lines[i].trim_start().starts_with("allow_hosts")) {
                Some(i) => match lines[i].find('[') {
                    Some(b) => {
                        let (a, rest) = lines[i].split_at(b + 1);
                        let sep = if rest.trim_start().starts_with(']') {
                            ""
                        } else {
                            ", "
                        };
                        out[i] = format!("{a}{quoted}{sep}{rest}");
                    }
                    None => out.insert(i + 1, format!("allow_hosts = [{quoted}]")),
                },
                None => out.insert(h + 1, format!("allow_hosts = [{quoted}]")),
            }
        }
        None => {
            out.push(String::new());
            out.push("[network]".into());
            out.push("mode = \"ask\"".into());
            out.push(format!("allow_hosts = [{quoted}]"));
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Saves an "always" answer: `entry` joins the allow-list of agent `name`'s
/// profile. The new text is checked before it replaces the file, so a
/// profile is never left broken.
pub fn remember_host(name: &str, entry: &str) -> Result<PathBuf, Error> {
    let path = profiles_dir().join(format!("{name}.toml"));
    let text = super::read_settings_file(&path, MAX_PROFILE_BYTES)?;
    let new = with_allowed_host(&text, entry);
    let shown = path.display().to_string();
    parse(name, &shown, &new, &crate::dirs::home_dir())?;
    crate::dirs::write_atomic(&path, new.as_bytes())?;
    Ok(path)
}

/// Loads `$XDG_CONFIG_HOME/airlock/agents/NAME.toml`.
pub fn load(name: &str) -> Result<Profile, Error> {
    if !valid_name(name) {
        return Err(Error::Invalid(gettext_f(
            "--agent {name}: an agent name uses letters, digits, -, _ and . only",
            &[("name", name)],
        )));
    }
    let path = profiles_dir().join(format!("{name}.toml"));
    if !path.exists() {
        return Err(Error::Invalid(gettext_f(
            "--agent {name}: there is no profile {path} (create it; docs/agent-profiles.md shows how)",
            &[("name", name), ("path", &path.display().to_string())],
        )));
    }
    load_file(name, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Profile, Error> {
        parse("t", "t.toml", text, Path::new("/home/u"))
    }

    #[test]
    fn a_full_profile() {
        let prof = p(r#"
command = ["claude", "-p"]
persistent_home = true
watch = "all"
deny = ["~/project/.env"]

[[grant]]
path = "~/project"
access = "rw"

[network]
mode = "ask"
allow_hosts = ["crates.io", "*.npmjs.org:443"]

[limits]
memory = "2G"
timeout = 600

[env]
EDITOR = "true"
"#)
        .unwrap();
        assert_eq!(prof.command, vec!["claude", "-p"]);
        assert_eq!(prof.policy.grants[0].path, PathBuf::from("/home/u/project"));
        assert_eq!(prof.policy.grants[0].access, Access::Rw);
        assert_eq!(prof.policy.net.mode, NetMode::Ask);
        assert_eq!(prof.policy.limits.memory, 2 << 30);
        assert_eq!(prof.policy.limits.timeout_secs, 600);
        assert_eq!(prof.policy.persistent_home.as_deref(), Some("t"));
        assert_eq!(prof.policy.watch, WatchLevel::All);
        assert_eq!(
            prof.policy.env,
            vec![("EDITOR".to_string(), "true".to_string())]
        );
    }

    fn pos(e: Error) -> (usize, usize, String) {
        match e {
            Error::Policy {
                line,
                column,
                message,
                file,
            } => {
                assert_eq!(file, "t.toml");
                (line, column, message)
            }
            other => panic!("not a policy error: {other}"),
        }
    }

    #[test]
    fn errors_have_line_and_column() {
        let (l, c, m) = pos(p("command = [\"x\"]\n\n[limits]\nmemory = \"lots\"\n").unwrap_err());
        assert_eq!((l, c), (4, 10), "{m}");
        assert!(m.contains("lots"), "{m}");
        let (l, c, m) = pos(p("command = [\"x\"]\nnetwork_mode = \"allow\"\n").unwrap_err());
        assert_eq!((l, c), (2, 1), "{m}");
        assert!(m.contains("network_mode"), "{m}");
        let (l, _, m) =
            pos(p("command = [\"x\"]\n[[grant]]\npath = \"relative/dir\"\n").unwrap_err());
        assert_eq!(l, 3, "{m}");
        let (l, _, m) = pos(p("command = [\"x\"]\n[network]\nmode = \"sometimes\"\n").unwrap_err());
        assert_eq!(l, 3, "{m}");
        let (l, c, _) = pos(p("command = []\n").unwrap_err());
        assert_eq!((l, c), (1, 11));
        let (l, _, m) =
            pos(p("command = [\"x\"]\n[network]\nallow_hosts = [\"exa mple.com\"]\n").unwrap_err());
        assert_eq!(l, 3, "{m}");
        // Limits no task could run under point at their own line.
        for (text, line, key) in [
            ("[limits]\nmemory = \"1K\"\n", 4, "memory"),
            ("[limits]\ntimeout = 5\npids = 0\n", 5, "pids"),
            ("[limits]\nnofile = 2\n", 4, "nofile"),
        ] {
            let (l, c, m) = pos(p(&format!("command = [\"x\"]\n\n{text}")).unwrap_err());
            assert_eq!((l, c), (line, key.len() + 4), "{m}");
            assert!(m.starts_with(key), "{m}");
        }
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncé d", 7), (2, 4));
        assert_eq!(line_column("", 5), (1, 1));
    }

    #[test]
    fn an_always_answer_joins_the_allow_list_and_keeps_comments() {
        let home = Path::new("/home/u");
        for (text, n) in [
            ("# mine\ncommand = [\"sh\"]\n[network]\nmode = \"ask\"\nallow_hosts = [\"a.org\"]\n", 2),
            ("command = [\"sh\"]\n[network]\nmode = \"ask\"\nallow_hosts = []\n[limits]\npids = 5\n", 1),
            ("command = [\"sh\"]\n[network]\nmode = \"ask\"\n", 1),
            ("command = [\"sh\"] # run it\n", 1),
        ] {
            let new = with_allowed_host(text, "api.example.com:8443");
            let p = parse("t", "t.toml", &new, home).unwrap_or_else(|e| panic!("{e}\n{new}"));
            assert!(p.policy.net.allow_hosts.contains(&"api.example.com:8443".to_string()), "{new}");
            assert_eq!(p.policy.net.allow_hosts.len(), n, "{new}");
            for line in text.lines().filter(|l| l.starts_with('#')) {
                assert!(new.contains(line));
            }
        }
    }
}
