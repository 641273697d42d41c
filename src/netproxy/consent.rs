//! The allow/ask decision for one `host:port`, and the live consent of ask
//! mode: unknown hosts are held while the user decides, identical questions
//! are merged, and the task remembers every lasting answer so it never asks
//! twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::hosts::{AllowList, Host};
use super::EventSink;
use crate::event::EventKind;
use crate::i18n::{gettext, gettext_f};
use crate::policy::NetMode;

/// What the user (or the supervisor on their behalf) answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentAnswer {
    /// The held connection(s) for this host proceed; the next one asks again.
    AllowOnce,
    /// Allowed until the task ends.
    AllowTask,
    /// Allowed for this task, and the supervisor saves
    /// [`ConsentRequest::allow_entry`] to the agent's profile. The proxy
    /// never writes profiles; it reports `allow_always` in
    /// [`EventKind::ConsentAnswered`].
    AllowAlways,
    /// Refused for the rest of the task.
    Deny,
}

impl ConsentAnswer {
    /// The word used in [`EventKind::ConsentAnswered`].
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentAnswer::AllowOnce => "allow_once",
            ConsentAnswer::AllowTask => "allow_task",
            ConsentAnswer::AllowAlways => "allow_always",
            ConsentAnswer::Deny => "deny",
        }
    }
}

/// One question to the user. The supervisor receives these on the channel
/// given to the proxy and calls [`ConsentRequest::answer`]; dropping the
/// request without answering denies.
#[derive(Debug)]
pub struct ConsentRequest {
    /// Same id as in [`EventKind::ConsentRequested`].
    pub id: u64,
    /// The normalised host (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    reply: oneshot::Sender<ConsentAnswer>,
}

impl ConsentRequest {
    /// Answers the question. After the timeout the answer is ignored.
    pub fn answer(self, answer: ConsentAnswer) {
        // The proxy stopped waiting (timeout or end of task): nothing to do.
        let _ = self.reply.send(answer);
    }

    /// Whether the proxy stopped waiting for the answer (its timeout, or
    /// the end of the task): then no answer may be taken, nor saved.
    pub fn is_withdrawn(&self) -> bool {
        self.reply.is_closed()
    }

    /// The `--allow-host` entry that stands for this request, for saving an
    /// "always" answer to a profile: `host:port`, exactly what was asked.
    pub fn allow_entry(&self) -> String {
        allow_entry(&self.host, self.port)
    }
}

/// The `--allow-host` entry for `host:port`, with its port always: the
/// user allowed that port, and an entry without one would allow both 80
/// and 443. An IPv6 address takes brackets, or its port would read as part
/// of it.
pub fn allow_entry(host: &str, port: u16) -> String {
    // A question's host is shown as `Host` shows it: IPv6 already in
    // brackets.
    if host.starts_with('[') {
        format!("{host}:{port}")
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Where consent questions go.
pub type ConsentSender = mpsc::UnboundedSender<ConsentRequest>;

/// The policy answer before any address is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(String),
    Denied(String),
    /// Ask mode, host unknown: [`Gate::ask`] first; only an allowed name is
    /// then resolved and its addresses checked.
    NeedsConsent,
}

/// How a question ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answer(ConsentAnswer),
    Timeout,
    /// No one to ask, or the request was dropped unanswered.
    Unanswered,
}

type Key = (Host, u16);

/// Questions one task may have open at once. More would bury the user in
/// dialogs, and a flood of them invites a reflexive "Allow".
pub const MAX_OPEN_QUESTIONS: usize = 3;
/// Questions one task may ask in all; after that, hosts not yet answered
/// are refused without asking, and the user is told once. This also
/// bounds what the task's answers take in memory.
pub const MAX_QUESTIONS: u32 = 30;

#[derive(Default)]
struct State {
    /// true = allowed for the task, false = denied for the task.
    remembered: HashMap<Key, bool>,
    pending: HashMap<Key, watch::Receiver<Option<Outcome>>>,
    /// Questions asked so far.
    asked: u32,
}

/// The network policy of one task, with the memory of its consent answers.
pub struct Gate {
    mode: NetMode,
    allow: AllowList,
    timeout: Duration,
    consent: Option<ConsentSender>,
    events: EventSink,
    state: Mutex<State>,
}

/// Question ids, unique in the process: one supervisor queue holds the
/// questions of every task, and an answer names its question by id.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Gate {
    pub fn new(
        mode: NetMode,
        allow: AllowList,
        timeout: Duration,
        consent: Option<ConsentSender>,
        events: EventSink,
    ) -> Self {
        Gate {
            mode,
            allow,
            timeout,
            consent,
            events,
            state: Mutex::new(State::default()),
        }
    }

    pub fn allow_list(&self) -> &AllowList {
        &self.allow
    }

    /// The decision that needs no question.
    pub fn verdict(&self, host: &Host, port: u16) -> Verdict {
        match self.mode {
            NetMode::None => return Verdict::Denied(gettext("the network is off for this task")),
            _ if self.allow.allows(host, port) => {
                return Verdict::Allowed(gettext("on the allow-list"))
            }
            NetMode::Allow => {
                return Verdict::Denied(gettext_f(
                    "{host}:{port} is not on the allow-list",
                    &[("host", &host.to_string()), ("port", &port.to_string())],
                ))
            }
            NetMode::Ask => {}
        }
        match self.lock().remembered.get(&(host.clone(), port)) {
            Some(true) => Verdict::Allowed(gettext("allowed by the user for this task")),
            Some(false) => Verdict::Denied(gettext("denied by the user earlier in this task")),
            None => Verdict::NeedsConsent,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // (each update is one insert/remove), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the user about `host:port`, merging with a question already
    /// open for the same target. Ok(reason) when allowed.
    pub async fn ask(self: &Arc<Self>, host: &Host, port: u16) -> Result<String, String> {
        let key = (host.clone(), port);
        let mut rx = {
            let mut st = self.lock();
            match st.remembered.get(&key) {
                Some(true) => return Ok(gettext("allowed by the user for this task")),
                Some(false) => return Err(gettext("denied by the user earlier in this task")),
                None => {}
            }
            match st.pending.get(&key) {
                Some(rx) => rx.clone(),
                None if st.asked >= MAX_QUESTIONS => {
                    return Err(gettext_f(
                        "the task already asked about {n} hosts; add the ones it needs to the allow-list",
                        &[("n", &MAX_QUESTIONS.to_string())],
                    ));
                }
                None if st.pending.len() >= MAX_OPEN_QUESTIONS => {
                    return Err(gettext_f(
                        "the task already has {n} questions open",
                        &[("n", &MAX_OPEN_QUESTIONS.to_string())],
                    ));
                }
                None => {
                    st.asked += 1;
                    if st.asked == MAX_QUESTIONS {
                        let _ = self.events.send(EventKind::Warning {
                            message: gettext_f(
                                "the task has asked about {n} hosts; any further host is refused without asking (add the hosts it needs to the allow-list)",
                                &[("n", &MAX_QUESTIONS.to_string())],
                            ),
                        });
                    }
                    let (tx, rx) = watch::channel(None);
                    st.pending.insert(key.clone(), rx.clone());
                    // The question lives on its own, so a client that hangs
                    // up does not cancel it for the others merged into it.
                    tokio::spawn(Arc::clone(self).run_question(key, tx));
                    rx
                }
            }
        };
        let outcome = loop {
            if let Some(o) = *rx.borrow_and_update() {
                break o;
            }
            if rx.changed().await.is_err() {
                break Outcome::Unanswered;
            }
        };
        match outcome {
            Outcome::Answer(ConsentAnswer::AllowOnce) => Ok(gettext("allowed once by the user")),
            Outcome::Answer(ConsentAnswer::AllowTask) => {
                Ok(gettext("allowed by the user for this task"))
            }
            Outcome::Answer(ConsentAnswer::AllowAlways) => {
                Ok(gettext("allowed by the user always"))
            }
            Outcome::Answer(ConsentAnswer::Deny) => Err(gettext("denied by the user")),
            Outcome::Timeout => Err(gettext_f(
                "no answer within {secs} seconds",
                &[("secs", &self.timeout.as_secs().to_string())],
            )),
            Outcome::Unanswered => {
                Err(gettext("no one answered the question (no consent handler)"))
            }
        }
    }

    async fn run_question(self: Arc<Self>, key: Key, tx: watch::Sender<Option<Outcome>>) {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let host = key.0.to_string();
        let port = key.1;
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = ConsentRequest {
            id,
            host: host.clone(),
            port,
            reply: reply_tx,
        };
        // Queued first, so whoever answers on seeing the event finds it.
        let sent = self
            .consent
            .as_ref()
            .is_some_and(|c| c.send(request).is_ok());
        let _ = self
            .events
            .send(EventKind::ConsentRequested { id, host, port });
        let outcome = if !sent {
            Outcome::Unanswered
        } else {
            match tokio::time::timeout(self.timeout, reply_rx).await {
                Ok(Ok(a)) => Outcome::Answer(a),
                Ok(Err(_)) => Outcome::Unanswered,
                Err(_) => Outcome::Timeout,
            }
        };
        let answer = match outcome {
            Outcome::Answer(a) => a.as_str(),
            Outcome::Timeout => "timeout",
            Outcome::Unanswered => "unanswered",
        };
        let _ = self.events.send(EventKind::ConsentAnswered {
            id,
            answer: answer.to_string(),
        });
        {
            let mut st = self.lock();
            st.pending.remove(&key);
            match outcome {
                Outcome::Answer(ConsentAnswer::AllowTask | ConsentAnswer::AllowAlways) => {
                    st.remembered.insert(key, true);
                }
                // A timeout counts as Deny for the task: an agent retrying in
                // a loop must not raise a fresh question every time.
                Outcome::Answer(ConsentAnswer::Deny) | Outcome::Timeout | Outcome::Unanswered => {
                    st.remembered.insert(key, false);
                }
                Outcome::Answer(ConsentAnswer::AllowOnce) => {}
            }
        }
        let _ = tx.send(Some(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(
        mode: NetMode,
        timeout_ms: u64,
    ) -> (
        Arc<Gate>,
        mpsc::UnboundedReceiver<ConsentRequest>,
        mpsc::UnboundedReceiver<EventKind>,
    ) {
        let (ctx, crx) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let allow = AllowList::parse(&["ok.example"]).unwrap();
        let g = Gate::new(
            mode,
            allow,
            Duration::from_millis(timeout_ms),
            Some(ctx),
            etx,
        );
        (Arc::new(g), crx, erx)
    }

    fn h(s: &str) -> Host {
        Host::Name(s.into())
    }

    #[test]
    fn verdicts_by_mode() {
        let (g, _c, _e) = gate(NetMode::Allow, 10);
        assert!(matches!(
            g.verdict(&h("ok.example"), 443),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            g.verdict(&h("no.example"), 443),
            Verdict::Denied(_)
        ));
        let (g, _c, _e) = gate(NetMode::Ask, 10);
        assert_eq!(g.verdict(&h("no.example"), 443), Verdict::NeedsConsent);
        let (g, _c, _e) = gate(NetMode::None, 10);
        assert!(matches!(
            g.verdict(&h("ok.example"), 443),
            Verdict::Denied(_)
        ));
    }

    #[tokio::test]
    async fn concurrent_asks_are_merged_and_remembered() {
        let (g, mut crx, mut erx) = gate(NetMode::Ask, 5_000);
        let a = {
            let g = g.clone();
            tokio::spawn(async move { g.ask(&h("new.example"), 443).await })
        };
        let b = {
            let g = g.clone();
            tokio::spawn(async move { g.ask(&h("new.example"), 443).await })
        };
        let req = crx.recv().await.unwrap();
        let id = req.id;
        assert_eq!((req.host.as_str(), req.port), ("new.example", 443));
        assert_eq!(req.allow_entry(), "new.example:443");
        use crate::netproxy::hosts::normalize_host;
        assert_eq!(allow_entry("fd00::1", 8080), "[fd00::1]:8080");
        // How a real question carries an IPv6 host (pass 12B).
        let v6 = normalize_host("fd00::1").unwrap().to_string();
        assert_eq!(allow_entry(&v6, 443), "[fd00::1]:443");
        // What is saved allows what was asked and nothing more.
        use crate::netproxy::hosts::AllowEntry;
        for (host, port, other) in [("new.example", 80, 443), ("fd00::1", 8080, 443)] {
            let e = AllowEntry::parse(&allow_entry(host, port)).unwrap();
            let h = normalize_host(host).unwrap();
            assert!(e.matches(&h, port) && !e.matches(&h, other), "{host}");
        }
        req.answer(ConsentAnswer::AllowAlways);
        assert!(a.await.unwrap().is_ok());
        assert!(b.await.unwrap().is_ok());
        // Remembered: no second question.
        assert!(g.ask(&h("new.example"), 443).await.is_ok());
        assert!(matches!(
            g.verdict(&h("new.example"), 443),
            Verdict::Allowed(_)
        ));
        assert!(crx.try_recv().is_err());
        assert!(matches!(
            erx.recv().await,
            Some(EventKind::ConsentRequested { id: i, .. }) if i == id
        ));
        assert_eq!(
            erx.recv().await,
            Some(EventKind::ConsentAnswered {
                id,
                answer: "allow_always".into()
            })
        );
        assert!(erx.try_recv().is_err());
    }

    #[tokio::test]
    async fn once_is_not_remembered_deny_and_timeout_are() {
        let (g, mut crx, _e) = gate(NetMode::Ask, 200);
        let t = {
            let g = g.clone();
            tokio::spawn(async move { g.ask(&h("once.example"), 80).await })
        };
        crx.recv().await.unwrap().answer(ConsentAnswer::AllowOnce);
        assert!(t.await.unwrap().is_ok());
        assert_eq!(g.verdict(&h("once.example"), 80), Verdict::NeedsConsent);

        let t = {
            let g = g.clone();
            tokio::spawn(async move { g.ask(&h("deny.example"), 80).await })
        };
        crx.recv().await.unwrap().answer(ConsentAnswer::Deny);
        assert!(t.await.unwrap().is_err());
        assert!(matches!(
            g.verdict(&h("deny.example"), 80),
            Verdict::Denied(_)
        ));

        // Nobody answers: the timeout denies and is remembered.
        let r = g.ask(&h("slow.example"), 80).await;
        assert!(r.unwrap_err().contains("no answer"));
        assert!(matches!(
            g.verdict(&h("slow.example"), 80),
            Verdict::Denied(_)
        ));
    }

    #[tokio::test]
    async fn a_flood_of_questions_is_bounded() {
        let (g, mut crx, mut erx) = gate(NetMode::Ask, 5_000);
        let ask = |name: String| {
            let g = g.clone();
            tokio::spawn(async move { g.ask(&Host::Name(name), 443).await })
        };
        // Three open at once; a fourth host is refused without a question.
        let open: Vec<_> = (0..MAX_OPEN_QUESTIONS)
            .map(|i| ask(format!("h{i}.example")))
            .collect();
        let mut held = Vec::new();
        for _ in 0..MAX_OPEN_QUESTIONS {
            held.push(crx.recv().await.unwrap());
        }
        let extra = ask("more.example".into()).await.unwrap();
        assert!(extra.unwrap_err().contains("questions open"));
        assert!(crx.try_recv().is_err());
        for r in held {
            r.answer(ConsentAnswer::Deny);
        }
        for t in open {
            assert!(t.await.unwrap().is_err());
        }
        // In all, MAX_QUESTIONS questions; the rest are refused, with one
        // warning.
        let mut asked = MAX_OPEN_QUESTIONS as u32;
        loop {
            let t = ask(format!("n{asked}.example"));
            match crx.recv().await {
                Some(r) if asked < MAX_QUESTIONS => r.answer(ConsentAnswer::AllowOnce),
                other => panic!("question {asked}: {other:?}"),
            }
            assert!(t.await.unwrap().is_ok());
            asked += 1;
            if asked == MAX_QUESTIONS {
                break;
            }
        }
        let refused = ask("last.example".into()).await.unwrap();
        assert!(refused.unwrap_err().contains("allow-list"));
        assert!(crx.try_recv().is_err());
        let mut warnings = 0;
        while let Ok(e) = erx.try_recv() {
            warnings += matches!(e, EventKind::Warning { .. }) as u32;
        }
        assert_eq!(warnings, 1);
    }

    #[tokio::test]
    async fn no_handler_means_deny() {
        let (etx, _erx) = mpsc::unbounded_channel();
        let g = Arc::new(Gate::new(
            NetMode::Ask,
            AllowList::default(),
            Duration::from_secs(60),
            None,
            etx,
        ));
        assert!(g.ask(&h("x.example"), 443).await.is_err());
    }
}
