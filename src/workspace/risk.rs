//! Risk flags: changes that run code later, or that destroy a lot, are
//! flagged loudly whatever their size, so a harmful edit cannot hide among
//! thousands of harmless ones.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::changes::{Change, ChangeKind, NodeKind};

/// Why a change deserves a second look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "risk", content = "detail")]
pub enum Risk {
    /// A file that tools run or obey later (git hooks, .envrc, Makefile…).
    RunsCode(String),
    /// A file that now has an executable bit it did not have.
    GainsExecutable,
    /// Set-uid, set-gid or sticky bits: stripped at commit.
    SpecialBits,
    /// A symlink pointing outside the grant folder.
    SymlinkOutside,
    /// A large file or a folder with many entries is deleted.
    LargeDeletion,
    /// A large file loses most of its content.
    Truncation,
    /// A device node, fifo or socket: never committed.
    SpecialFile,
    /// A path hidden from every task (keys, credentials, Airlock's own
    /// folders, `--deny`): never committed, even where it did not exist.
    HiddenPath,
    /// An existing file or folder becomes writable for its group or for
    /// everyone (another user could then plant files or edit it). New
    /// entries get the user's umask at commit instead.
    OthersCanWrite,
    /// An executable, script or former text file whose new content the
    /// review cannot show (binary or too large to diff).
    ContentNotShown,
    /// The new text holds control characters (a lone carriage return,
    /// escape, backspace, NUL…) or invisible/bidi formatting characters:
    /// what a tool reads can differ from what the diff seems to say.
    ControlCharacters,
}

impl Risk {
    /// A translated one-line explanation.
    pub fn describe(&self) -> String {
        use crate::i18n::{gettext, gettext_f};
        match self {
            Risk::RunsCode(why) => gettext_f("runs code later: {why}", &[("why", why)]),
            Risk::GainsExecutable => gettext("becomes executable"),
            Risk::OthersCanWrite => gettext("becomes writable for other users"),
            Risk::SpecialBits => gettext("asks for set-uid/set-gid/sticky bits (they are removed)"),
            Risk::SymlinkOutside => gettext("symbolic link pointing outside the folder"),
            Risk::LargeDeletion => gettext("deletes a lot of data"),
            Risk::Truncation => gettext("removes most of a large file"),
            Risk::SpecialFile => gettext("device, pipe or socket: never copied"),
            Risk::HiddenPath => gettext("a path hidden from every task: never written"),
            Risk::ContentNotShown => {
                gettext("content not shown (binary or too large) in a file that can run")
            }
            Risk::ControlCharacters => gettext(
                "contains control characters (carriage return, escape, …) or invisible characters",
            ),
        }
    }
}

const LARGE_FILE: u64 = 1 << 20;
const LARGE_FOLDER: u64 = 100;
const TRUNCATION_MIN: u64 = 64 << 10;

/// Files that tools execute or obey, by path (relative to the grant).
fn runs_code(path: &[u8]) -> Option<&'static str> {
    let s = String::from_utf8_lossy(path);
    let name = s.rsplit('/').next().unwrap_or(&s);
    let parts: Vec<&str> = s.split('/').collect();
    // Inside a `.git` folder at any depth, submodules' (`.git/modules/…`)
    // and worktrees' (`.git/worktrees/…`) own folders included.
    if let Some(i) = parts.iter().position(|&p| p == ".git") {
        let rest = &parts[i + 1..];
        // The hooks folder itself too: replaced by a link to a folder of
        // the agent's, every hook in it runs (pass 20B).
        if rest.contains(&"hooks") {
            return Some("git hook");
        }
        if rest.last() == Some(&"config") || rest.ends_with(&["info", "attributes"]) {
            return Some("git configuration (core.fsmonitor, core.sshCommand, filters)");
        }
        // Git then takes its config and hooks from the folder named.
        if matches!(rest.last(), Some(&"commondir") | Some(&"gitdir")) {
            return Some(GIT_REDIRECTION);
        }
    }
    // The hooks folders that projects point `core.hooksPath` at (husky,
    // and the usual names for a repository's own hooks).
    if parts
        .iter()
        .rev()
        .skip(1)
        .any(|&p| matches!(p, ".husky" | ".githooks" | ".git-hooks"))
    {
        return Some("git hook (core.hooksPath)");
    }
    if parts.contains(&".devcontainer") {
        return Some("dev container configuration");
    }
    if parts.contains(&".idea") {
        return Some("IDE project settings (run configurations)");
    }
    if parts.contains(&".vscode") || name.ends_with(".code-workspace") {
        return Some("editor tasks and settings");
    }
    if s.contains(".github/workflows/") || s.ends_with(".gitlab-ci.yml") {
        return Some("CI pipeline");
    }
    if s.ends_with(".cargo/config.toml") || s.ends_with(".cargo/config") {
        return Some("cargo configuration");
    }
    if s.contains("autostart/") && name.ends_with(".desktop") {
        return Some("autostart entry");
    }
    if s.contains("systemd/user/") {
        return Some("systemd user unit");
    }
    if parts.contains(&"conf.d") && name.ends_with(".fish") {
        return Some("shell start-up file");
    }
    match name {
        ".envrc" => Some("direnv"),
        ".devcontainer.json" => Some("dev container configuration"),
        ".npmrc" | ".yarnrc" | ".yarnrc.yml" | ".pnpmfile.cjs" => {
            Some("package manager configuration (scripts, registries)")
        }
        "mise.toml" | ".mise.toml" | ".tool-versions" | "shell.nix" | "flake.nix"
        | "default.nix" => Some("environment set up on entering the folder"),
        ".vimrc" | ".exrc" | ".nvimrc" | ".lvimrc" | ".nvim.lua" => Some("editor start-up file"),
        ".gitattributes" | ".gitmodules" => Some("git filters or submodules"),
        // A project's shared git config, pulled in with include.path.
        ".gitconfig" => Some("git configuration (core.fsmonitor, core.sshCommand, filters)"),
        "Makefile" | "makefile" | "GNUmakefile" => Some("Makefile"),
        "build.rs" => Some("cargo build script"),
        "setup.py" | "conftest.py" => Some("Python build or test hook"),
        "sitecustomize.py" | "usercustomize.py" => Some("Python start-up hook"),
        n if n.ends_with(".pth") => Some("Python start-up hook (.pth)"),
        ".pre-commit-config.yaml" => Some("pre-commit hooks"),
        ".bashrc" | ".bash_profile" | ".bash_login" | ".profile" | ".zshrc" | ".zshenv"
        | ".zprofile" | ".zlogin" | ".cshrc" | ".tcshrc" | "config.fish" | ".inputrc"
        | ".xprofile" | ".xsession" | ".xinitrc" | ".pam_environment" => {
            Some("shell start-up file")
        }
        n if n.ends_with(".desktop") => Some("desktop launcher"),
        _ => None,
    }
}

const GIT_REDIRECTION: &str = "git folder redirection (gitdir, commondir)";

/// Whether the start of a file named `config` reads as a git config: a
/// section git knows, or a key that runs a command, or nothing but
/// comments (what follows them cannot be seen here, pass 20B). Git's names
/// are case-insensitive.
fn looks_like_git_config(head: &[u8]) -> bool {
    let t = String::from_utf8_lossy(head).to_ascii_lowercase();
    let only_comments = t.len() >= super::content::HEAD
        && t.lines().all(|l| {
            let l = l.trim_start();
            l.is_empty() || l.starts_with('#') || l.starts_with(';')
        });
    only_comments
        || [
            "[core",
            "[filter",
            "[diff",
            "[merge",
            "[alias",
            "[credential",
            "[include",
            "[remote",
            "[submodule",
            "[extensions",
            "fsmonitor",
            "sshcommand",
            "hookspath",
            "askpass",
            "textconv",
            "gitproxy",
            "pager",
            "editor",
        ]
        .iter()
        .any(|k| t.contains(k))
}

/// Whether an edit of `package.json` changes its `scripts` (which `npm
/// install`/`npm test` run). Unparsable JSON counts as changed.
pub fn package_scripts_changed(old: Option<&[u8]>, new: &[u8]) -> bool {
    let scripts = |b: &[u8]| -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        Some(v.get("scripts").cloned().unwrap_or(serde_json::Value::Null))
    };
    let Some(n) = scripts(new) else { return true };
    match old {
        None => n != serde_json::Value::Null,
        Some(o) => scripts(o).as_ref() != Some(&n),
    }
}

/// Whether a symlink at `path` with `target` points outside the grant.
pub fn symlink_outside(grant: &Path, path: &[u8], target: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    // `a/up/../x`: the kernel goes up from wherever `a/up` leads, and `up`
    // may itself be a link (`up -> ../..`), so text alone cannot tell where
    // this ends. Such a target counts as outside.
    if climbs_after_a_name(target) {
        return true;
    }
    if target.first() == Some(&b'/') {
        // Absolute: inside only when it names the grant itself (the sandbox
        // mounts the grant at its real path).
        let t = lexical(target.split(|&b| b == b'/').collect());
        let g = grant.as_os_str().as_bytes();
        let g = lexical(g.split(|&b| b == b'/').collect());
        return match (t, g) {
            (Some(t), Some(g)) => !t.starts_with(&g),
            _ => true,
        };
    }
    let mut parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    parts.pop();
    parts.extend(target.split(|&b| b == b'/'));
    lexical(parts).is_none()
}

/// Whether a `..` follows a name in `target` (leading `..`s are fine: they
/// climb from the link's own folder, a real one).
fn climbs_after_a_name(target: &[u8]) -> bool {
    let mut seen_name = false;
    for p in target.split(|&b| b == b'/') {
        match p {
            b"" | b"." => {}
            b".." if seen_name => return true,
            b".." => {}
            _ => seen_name = true,
        }
    }
    false
}

/// Normalises `.`/`..` lexically; `None` when `..` climbs above the start.
fn lexical(parts: Vec<&[u8]>) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for p in parts {
        match p {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    Some(out)
}

/// What the change set read of a file's content, for the flags that
/// depend on it.
#[derive(Debug, Default)]
pub struct Content<'a> {
    /// The first bytes of the user's file, when it is a regular file.
    pub old_head: Option<&'a [u8]>,
    /// The agent's file, when it is a regular file.
    pub new: Option<&'a super::content::Scan>,
    /// A `package.json` whose `scripts` changed.
    pub scripts_changed: bool,
}

/// Names of files that are code whatever their mode.
fn is_code_name(path: &[u8]) -> bool {
    const EXT: &[&str] = &[
        "sh", "bash", "zsh", "fish", "py", "pyw", "pth", "js", "mjs", "cjs", "ts", "rb", "pl",
        "pm", "php", "lua", "ps1", "bat", "cmd", "mk", "cmake", "tcl",
    ];
    let s = String::from_utf8_lossy(path);
    let name = s.rsplit('/').next().unwrap_or(&s);
    runs_code(path).is_some()
        || name
            .rsplit_once('.')
            .is_some_and(|(_, e)| EXT.contains(&e.to_ascii_lowercase().as_str()))
}

/// Why a refused change is never committed: a special file, or (for
/// anything else) a path hidden from every task.
pub fn refusal(c: &Change) -> Risk {
    match &c.after {
        _ if c.risks.contains(&Risk::HiddenPath) => Risk::HiddenPath,
        Some(a) if a.kind.is_special() => Risk::SpecialFile,
        _ => Risk::HiddenPath,
    }
}

/// The risk flags of one change.
pub fn assess(grant: &Path, c: &Change, content: &Content) -> Vec<Risk> {
    use super::diff;
    let mut r = Vec::new();
    if c.kind == ChangeKind::Refused {
        r.push(refusal(c));
        return r;
    }
    if let Some(why) = runs_code(&c.path) {
        r.push(Risk::RunsCode(why.to_string()));
    } else if content.scripts_changed {
        r.push(Risk::RunsCode("npm scripts (package.json)".into()));
    } else if c.path.rsplit(|&b| b == b'/').next() == Some(b".git")
        && c.after
            .as_ref()
            .is_some_and(|a| matches!(a.kind, NodeKind::File | NodeKind::Symlink))
    {
        // `gitdir: elsewhere`, or a link to elsewhere: git then obeys that
        // folder's config and hooks.
        r.push(Risk::RunsCode(GIT_REDIRECTION.into()));
    } else if c
        .after
        .as_ref()
        .is_some_and(|a| a.kind == NodeKind::Symlink)
        && matches!(
            c.path.rsplit(|&b| b == b'/').next(),
            Some(
                b".vscode"
                    | b".devcontainer"
                    | b".github"
                    | b".cargo"
                    | b".idea"
                    | b".husky"
                    | b".githooks"
                    | b"hooks"
            )
        )
    {
        // A folder of settings that run code, made a link: the tools read
        // it through the link, and what it points to shows unflagged.
        r.push(Risk::RunsCode(
            "a folder of settings that run code, made a link".into(),
        ));
    } else if c.path.split(|&b| b == b'/').any(|p| p == b".git")
        && c.after
            .as_ref()
            .is_some_and(|a| a.kind == NodeKind::Symlink)
    {
        // Anything of a `.git` made a link: git follows it elsewhere.
        r.push(Risk::RunsCode(GIT_REDIRECTION.into()));
    } else if c.path.rsplit(|&b| b == b'/').next() == Some(b"config")
        && (content.new.is_some_and(|n| looks_like_git_config(&n.head))
            // A link named config: git follows it to content the review
            // shows elsewhere, unflagged (pass 20B).
            || c.after.as_ref().is_some_and(|a| a.kind == NodeKind::Symlink))
    {
        // A git config outside any `.git`: the target of a `commondir` or
        // of a `.git` link, or a bare repository, which git obeys too.
        r.push(Risk::RunsCode(
            "git configuration (core.fsmonitor, core.sshCommand, filters)".into(),
        ));
    }
    if let (Some(n), Some(a)) = (content.new, &c.after) {
        let old_size = c.before.as_ref().map(|b| b.size).unwrap_or(0);
        let text = diff::shown_as_text(content.old_head, Some(&n.head));
        let shown = text && n.size <= diff::SIZE_CAP && old_size <= diff::SIZE_CAP;
        let can_run = a.perm & 0o111 != 0
            || n.head.starts_with(b"#!")
            || content.old_head.is_some_and(|o| !diff::looks_binary(o))
            || is_code_name(&c.path);
        if !shown && can_run {
            r.push(Risk::ContentNotShown);
        }
        if shown && n.controls {
            r.push(Risk::ControlCharacters);
        }
    }
    if let Some(a) = &c.after {
        if a.kind == NodeKind::File && a.perm & 0o111 != 0 {
            let was_exec = c
                .before
                .as_ref()
                .is_some_and(|b| b.kind == NodeKind::File && b.perm & 0o111 != 0);
            if !was_exec {
                r.push(Risk::GainsExecutable);
            }
        }
        if a.perm & 0o7000 != 0 && a.kind != NodeKind::Symlink {
            r.push(Risk::SpecialBits);
        }
        if let (NodeKind::Symlink, Some(t)) = (a.kind, &a.target) {
            if symlink_outside(grant, &c.path, t) {
                r.push(Risk::SymlinkOutside);
            }
        }
        if let Some(b) = &c.before {
            if a.kind != NodeKind::Symlink && a.perm & 0o022 & !b.perm != 0 {
                r.push(Risk::OthersCanWrite);
            }
            if b.kind == NodeKind::File
                && a.kind == NodeKind::File
                && b.size >= TRUNCATION_MIN
                && a.size <= b.size / 2
            {
                r.push(Risk::Truncation);
            }
        }
    }
    if let Some(b) = &c.before {
        let gone = !matches!(&c.after, Some(a) if a.kind == b.kind);
        if gone
            && ((b.kind == NodeKind::File && b.size >= LARGE_FILE)
                || c.deleted_entries >= LARGE_FOLDER)
        {
            r.push(Risk::LargeDeletion);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_running_paths() {
        assert!(runs_code(b".git/hooks/pre-commit").is_some());
        assert!(runs_code(b"sub/.git/config").is_some());
        assert!(runs_code(b".envrc").is_some());
        assert!(runs_code(b"proj/Makefile").is_some());
        assert!(runs_code(b".vscode/tasks.json").is_some());
        assert!(runs_code(b"x.desktop").is_some());
        assert!(runs_code(b"notes.txt").is_none());
        assert!(runs_code(b"gitconfig").is_none());
        // `.git` at any depth, submodules and worktrees included.
        assert!(runs_code(b".git/modules/sub/config").is_some());
        assert!(runs_code(b".git/modules/sub/hooks/post-checkout").is_some());
        assert!(runs_code(b"a/.git/worktrees/w/config").is_some());
        assert!(runs_code(b".git/modules/m/info/attributes").is_some());
        assert!(runs_code(b".git/objects/ab/cdef").is_none());
        assert!(runs_code(b"src/config").is_none());
        // Python start-up hooks, pre-commit, dev containers, IDE settings.
        assert!(runs_code(b".venv/lib/python3.11/site-packages/zz.pth").is_some());
        assert!(runs_code(b"lib/sitecustomize.py").is_some());
        assert!(runs_code(b"usercustomize.py").is_some());
        assert!(runs_code(b".pre-commit-config.yaml").is_some());
        assert!(runs_code(b".devcontainer/devcontainer.json").is_some());
        assert!(runs_code(b".idea/workspace.xml").is_some());
    }

    fn node(kind: NodeKind, perm: u32, size: u64) -> super::super::changes::Node {
        super::super::changes::Node {
            kind,
            perm,
            size,
            target: None,
            ino: 1,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            ctime: (0, 0),
        }
    }

    fn change(path: &[u8], before: Option<NodeKind>, after: NodeKind, perm: u32) -> Change {
        Change {
            path: path.to_vec(),
            kind: if before.is_some() {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            },
            before: before.map(|k| node(k, 0o644, 10)),
            after: Some(node(after, perm, 10)),
            hash: None,
            deleted_entries: 0,
            risks: Vec::new(),
            conflict: false,
        }
    }

    fn scan(b: &[u8]) -> super::super::content::Scan {
        super::super::content::Scan {
            hash: super::super::content::hash_bytes(b),
            size: b.len() as u64,
            head: b.to_vec(),
            controls: super::super::content::has_controls(b),
        }
    }

    #[test]
    fn content_flags() {
        let g = Path::new("/g");
        let runs = |r: &[Risk]| r.iter().any(|r| matches!(r, Risk::RunsCode(_)));
        // A `.git` that is a file redirects git elsewhere; a folder does not.
        let c = change(b"sub/.git", None, NodeKind::File, 0o644);
        assert!(runs(&assess(g, &c, &Content::default())));
        let c = change(b"sub/.git", None, NodeKind::Dir, 0o755);
        assert!(!runs(&assess(g, &c, &Content::default())));
        // package.json: only when its scripts changed.
        let c = change(b"package.json", Some(NodeKind::File), NodeKind::File, 0o644);
        assert!(!runs(&assess(g, &c, &Content::default())));
        let facts = Content {
            scripts_changed: true,
            ..Content::default()
        };
        assert!(runs(&assess(g, &c, &facts)));
        assert!(package_scripts_changed(
            Some(br#"{"scripts":{"test":"jest"}}"#),
            br#"{"scripts":{"test":"touch x; jest"}}"#
        ));
        assert!(!package_scripts_changed(
            Some(br#"{"version":"1","scripts":{"t":"a"}}"#),
            br#"{"version":"2","scripts":{"t":"a"}}"#
        ));

        // Binary content: flagged when it can run, not otherwise.
        let bin = scan(b"\x7fELF\0\0");
        let new = |s| Content {
            new: Some(s),
            ..Content::default()
        };
        let c = change(b"tool", None, NodeKind::File, 0o755);
        assert!(assess(g, &c, &new(&bin)).contains(&Risk::ContentNotShown));
        let c = change(b"image.dat", None, NodeKind::File, 0o644);
        assert!(!assess(g, &c, &new(&bin)).contains(&Risk::ContentNotShown));
        let c = change(b"run.py", None, NodeKind::File, 0o644);
        assert!(assess(g, &c, &new(&bin)).contains(&Risk::ContentNotShown));
        // A script with a NUL is shown as text: not "not shown"; its NUL is
        // a control character.
        let c = change(b"deploy", Some(NodeKind::File), NodeKind::File, 0o755);
        let nul = scan(b"#!/bin/sh\n# \0\necho hi\n");
        let r = assess(g, &c, &new(&nul));
        assert!(!r.contains(&Risk::ContentNotShown), "{r:?}");
        assert!(r.contains(&Risk::ControlCharacters), "{r:?}");
        // Too large to diff, whatever it holds.
        let mut big = scan(b"#!/bin/sh\n");
        big.size = super::super::diff::SIZE_CAP + 1;
        assert!(assess(g, &c, &new(&big)).contains(&Risk::ContentNotShown));
        // A lone CR is flagged; CRLF line ends are not.
        let c = change(b"a.txt", None, NodeKind::File, 0o644);
        let (cr, crlf) = (scan(b"# x\rimport os\n"), scan(b"a\r\nb\r\n"));
        assert!(assess(g, &c, &new(&cr)).contains(&Risk::ControlCharacters));
        assert!(!assess(g, &c, &new(&crlf)).contains(&Risk::ControlCharacters));
    }

    #[test]
    fn symlink_escape() {
        let g = Path::new("/home/u/proj");
        assert!(!symlink_outside(g, b"a/link", b"../b"));
        assert!(symlink_outside(g, b"a/link", b"../../x"));
        assert!(symlink_outside(g, b"link", b"/etc/passwd"));
        assert!(!symlink_outside(g, b"link", b"/home/u/proj/sub"));
        assert!(symlink_outside(g, b"link", b"/home/u/proj/../other"));
        // Through another link of the agent's (`a/b/up -> ../..`): where
        // `up/..` ends depends on `up`, so it is flagged.
        assert!(!symlink_outside(g, b"a/b/up", b"../.."));
        assert!(symlink_outside(g, b"s2", b"a/b/up/../rootsecret"));
        assert!(symlink_outside(g, b"s", b"/home/u/proj/sub/../x"));
        assert!(!symlink_outside(g, b"a/b/s", b"../../c/./d"));
    }
}
