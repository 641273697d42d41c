//! `airlock run`'s network options and its terminal answer to ask-mode
//! questions. Questions arrive as `consent_requested` events of the task and
//! are answered through the supervisor's API, the same path the window and
//! D-Bus use.

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::event::{now_ms, EventKind};
use crate::i18n::{gettext, gettext_f};
use crate::netproxy::hosts::AllowList;
use crate::policy::{NetMode, Policy};
use crate::supervisor::{SupervisorHandle, TerminalHold};
use crate::task::TaskId;
use crate::Error;

/// Applies `--net`, `--allow-host` and `--consent-timeout` to `p`. Hosts
/// given without `--net` turn the allow-list on.
pub fn apply(
    p: &mut Policy,
    mode: Option<&str>,
    hosts: &[String],
    consent_timeout: Option<u64>,
) -> Result<(), Error> {
    AllowList::parse(hosts)?;
    p.net.allow_hosts.extend(hosts.iter().cloned());
    match mode {
        None if !hosts.is_empty() && p.net.mode == NetMode::None => p.net.mode = NetMode::Allow,
        None => {}
        Some("none") if !hosts.is_empty() => {
            return Err(Error::Invalid(gettext(
                "--allow-host cannot be used with --net none; use --net allow or --net ask",
            )))
        }
        Some("none") => p.net.mode = NetMode::None,
        Some("allow") => p.net.mode = NetMode::Allow,
        Some("ask") => p.net.mode = NetMode::Ask,
        Some(other) => {
            return Err(Error::Invalid(gettext_f(
                "--net {mode}: use none, allow or ask",
                &[("mode", other)],
            )))
        }
    }
    if let Some(t) = consent_timeout {
        if t == 0 {
            return Err(Error::Invalid(gettext(
                "--consent-timeout 0: give at least one second",
            )));
        }
        p.net.consent_timeout_secs = t;
    }
    Ok(())
}

/// Whether questions can be asked here: stdin and stderr are terminals.
pub fn interactive() -> bool {
    // SAFETY: isatty on our own standard descriptors.
    unsafe { libc::isatty(0) == 1 && libc::isatty(2) == 1 }
}

/// Answers our task's network questions on a thread of its own, so the
/// task's output and events keep flowing while a question is open.
pub struct ConsentPrompt {
    task: std::sync::mpsc::Sender<TaskId>,
    /// Set when the task has ended: an open question is withdrawn.
    ended: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConsentPrompt {
    /// Subscribes now (before the task is submitted, so no question is
    /// missed). `interactive`: ask on the terminal; otherwise deny at once.
    pub fn start(
        sup: &SupervisorHandle,
        timeout_secs: u64,
        interactive: bool,
        hold: Option<TerminalHold>,
    ) -> ConsentPrompt {
        let (task_tx, task_rx) = std::sync::mpsc::channel::<TaskId>();
        let mut sub = sup.subscribe();
        let sup = sup.clone();
        let ended = Arc::new(AtomicBool::new(false));
        let cancel = ended.clone();
        // Ends with our task (or the supervisor's bus).
        let thread = std::thread::Builder::new()
            .name("airlock-consent".into())
            .spawn(move || {
                let mut ours: Option<TaskId> = None;
                let mut early = Vec::new();
                while let Some(ev) = sub.blocking_recv() {
                    if let EventKind::ConsentRequested { id, host, port } = &ev.kind {
                        early.push((ev.task.clone(), *id, host.clone(), *port, ev.time_ms));
                    }
                    if ours.is_none() {
                        ours = task_rx.try_recv().ok();
                    }
                    let Some(task) = &ours else { continue };
                    if &ev.task == task && matches!(ev.kind, EventKind::Exited { .. } | EventKind::Failed { .. }) {
                        return;
                    }
                    for (t, id, host, port, asked_ms) in std::mem::take(&mut early) {
                        if &t != task {
                            continue;
                        }
                        let waited = now_ms().saturating_sub(asked_ms) / 1000;
                        let left = timeout_secs.saturating_sub(waited);
                        let answer = if interactive {
                            // The task's output waits while the question
                            // is on the terminal.
                            let _turn = hold.as_ref().map(TerminalHold::hold);
                            let withdrawn = || {
                                cancel.load(Ordering::SeqCst)
                                    || !sup
                                        .runtime()
                                        .block_on(sup.pending_consents())
                                        .is_ok_and(|p| p.iter().any(|c| c.id == id))
                            };
                            ask_on_terminal(&host, port, left, &withdrawn)
                        } else {
                            super::say!(
                                "airlock: {}",
                                gettext_f(
                                    "denied {host}:{port}: the task asked to reach it, and there is no terminal to ask you on (use --allow-host {host}:{port}, or run in a terminal)",
                                    &[("host", &host), ("port", &port.to_string())],
                                )
                            );
                            "deny"
                        };
                        // A question that timed out meanwhile has no answer to take.
                        let _ = sup.runtime().block_on(sup.answer_consent(id, answer));
                    }
                }
            })
            .ok();
        ConsentPrompt {
            task: task_tx,
            ended,
            thread,
        }
    }

    /// The task has ended: an open question is withdrawn, and the terminal
    /// is ours again once this returns (a question that outlived its task
    /// would read the keys meant for the review or the shell).
    pub fn finish(mut self) {
        self.ended.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The task whose questions are ours.
    pub fn follow(&self, id: &TaskId) {
        let _ = self.task.send(id.clone());
    }
}

/// Asks on `/dev/tty`; Deny when nothing is typed within `secs` seconds.
fn ask_on_terminal(host: &str, port: u16, secs: u64, withdrawn: &dyn Fn() -> bool) -> &'static str {
    let Ok(mut tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        super::say!(
            "airlock: {}",
            gettext_f(
                "denied {host}:{port}: the terminal (/dev/tty) cannot be opened to ask you",
                &[("host", host), ("port", &port.to_string())],
            )
        );
        return "deny";
    };
    let question = gettext_f(
        "airlock: the task wants to reach {host} port {port}. Allow [o]nce / for this [t]ask / [a]lways / [d]eny (d in {secs}s)? ",
        &[("host", host), ("port", &port.to_string()), ("secs", &secs.to_string())],
    );
    // Visible, and on a line of its own: the agent's output may have left
    // the terminal drawing invisibly and the cursor anywhere.
    let question = format!("{}\r\n{question}", super::terminal::RESET_DRAWING);
    let _ = tty.write_all(question.as_bytes());
    let _ = tty.flush();
    let mut out = &tty;
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let line = super::terminal::answer(
        tty.as_fd(),
        &mut out,
        &question,
        Some(Duration::from_secs(secs)),
        Some(withdrawn),
    );
    // Withdrawn before its time: the task ended (at its time, the proxy's
    // own timeout withdraws it as ours runs out).
    let timed_out = std::time::Instant::now() + Duration::from_secs(1) >= deadline;
    if line.is_none() && !timed_out && withdrawn() {
        let _ = writeln!(
            tty,
            "\r\nairlock: {host}:{port}: {}",
            gettext("the task has ended; the question is withdrawn")
        );
        return "deny";
    }
    let ready = line.is_some();
    let mut line = line.unwrap_or_default();
    // "Always" lasts beyond this task: asked twice, so that one key
    // pressed at the wrong moment cannot save it.
    if line.trim().eq_ignore_ascii_case("a") {
        let confirm = gettext_f(
            "airlock: allow {host} port {port} for every later task of this agent too? Type yes to confirm: ",
            &[("host", host), ("port", &port.to_string())],
        );
        let _ = out.write_all(confirm.as_bytes());
        let _ = out.flush();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let sure =
            super::terminal::answer(tty.as_fd(), &mut out, &confirm, Some(left), Some(withdrawn));
        if !sure.is_some_and(|s| s.trim().eq_ignore_ascii_case("yes")) {
            let _ = out.write_all(b"\r\n");
            line = "d".into();
        }
    }
    let (answer, said) = match line.trim().chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('o') => ("allow_once", gettext("allowed once")),
        Some('t') => ("allow_task", gettext("allowed for this task")),
        // The supervisor saves it to the task's agent profile, or says it
        // lasts for this task when there is none.
        Some('a') => (
            "allow_always",
            gettext("allowed always: saved to the agent profile, or for this task only when the task has none"),
        ),
        _ if !ready => ("deny", gettext("no answer in time: denied")),
        _ => ("deny", gettext("denied")),
    };
    if !ready {
        let _ = tty.write_all(b"\n");
    }
    let _ = writeln!(tty, "airlock: {host}:{port}: {said}");
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_the_network_policy() {
        let mut p = Policy::default();
        apply(&mut p, None, &[], None).unwrap();
        assert_eq!(p.net.mode, NetMode::None);
        assert_eq!(p.net.consent_timeout_secs, 60);

        let hosts = vec!["example.org".to_string(), "10.0.0.1:8080".to_string()];
        apply(&mut p, None, &hosts, None).unwrap();
        assert_eq!(p.net.mode, NetMode::Allow);
        assert_eq!(p.net.allow_hosts, hosts);

        let mut p = Policy::default();
        apply(&mut p, Some("ask"), &[], Some(5)).unwrap();
        assert_eq!((p.net.mode, p.net.consent_timeout_secs), (NetMode::Ask, 5));

        let mut p = Policy::default();
        assert!(apply(&mut p, Some("maybe"), &[], None).is_err());
        assert!(apply(&mut p, Some("none"), &hosts, None).is_err());
        assert!(apply(&mut p, Some("allow"), &[], Some(0)).is_err());
        let bad = vec!["exa mple.org".to_string()];
        let e = apply(&mut p, Some("allow"), &bad, None).unwrap_err();
        assert!(e.to_string().contains("exa mple.org"), "{e}");
    }
}
