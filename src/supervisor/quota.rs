//! How much one task may put in the audit log. Denials are coalesced by the
//! monitor; connections, DNS answers and warnings are not, and each one the
//! agent can cause at will (a loop of refused `CONNECT`s is some 2,000 a
//! second, with host names up to 64 KiB). Past a quota, events of that kind
//! are counted rather than recorded one by one, the user is told once, and
//! the counts are reported when the task ends. The proxy still decides
//! every connection: only the logging stops.

use crate::event::EventKind;
use crate::i18n::gettext_f;

/// Connections recorded one by one per task.
pub const MAX_FLOWS: u64 = 10_000;
/// DNS answers recorded one by one per task.
pub const MAX_DNS: u64 = 10_000;
/// Warnings recorded one by one per task.
pub const MAX_WARNINGS: u64 = 1_000;
/// The longest text of one field kept in the log (a host name, a reason,
/// a warning); longer text is cut, and says so.
pub const MAX_TEXT: usize = 1024;

#[derive(Debug, Default)]
pub struct Quota {
    /// Allowed and refused connections count apart, so that a flood of
    /// refused ones (which cost the agent nothing) never keeps an allowed
    /// one, where data may have gone, out of the log.
    flows_allowed: u64,
    flows_refused: u64,
    dns: u64,
    warnings: u64,
    /// Events past the quota, by kind: (connections allowed, refused), DNS
    /// answers, warnings.
    unlogged: (u64, u64, u64, u64),
}

/// What to do with one event.
pub enum Admit {
    Record(EventKind),
    /// Past its quota: counted, not recorded.
    Drop,
}

impl Quota {
    pub fn admit(&mut self, mut kind: EventKind) -> Admit {
        let (used, max, what) = match &mut kind {
            EventKind::Flow {
                host,
                reason,
                decision,
                ..
            } => {
                clip(host);
                clip(reason);
                if decision == "allow" {
                    if self.flows_allowed >= MAX_FLOWS {
                        self.unlogged.0 += 1;
                    }
                    (&mut self.flows_allowed, MAX_FLOWS, "allowed connections")
                } else {
                    if self.flows_refused >= MAX_FLOWS {
                        self.unlogged.1 += 1;
                    }
                    (&mut self.flows_refused, MAX_FLOWS, "refused connections")
                }
            }
            EventKind::DnsQuery { name, answer } => {
                clip(name);
                clip(answer);
                if self.dns >= MAX_DNS {
                    self.unlogged.2 += 1;
                }
                (&mut self.dns, MAX_DNS, "DNS answers")
            }
            EventKind::Warning { message } => {
                clip(message);
                if self.warnings >= MAX_WARNINGS {
                    self.unlogged.3 += 1;
                }
                (&mut self.warnings, MAX_WARNINGS, "warnings")
            }
            _ => return Admit::Record(kind),
        };
        *used += 1;
        match (*used).cmp(&(max + 1)) {
            std::cmp::Ordering::Less => Admit::Record(kind),
            // The first one past: the user learns that logging stops here.
            std::cmp::Ordering::Equal => Admit::Record(EventKind::Warning {
                message: gettext_f(
                    "the task has caused more than {max} {what}; the rest are counted, not logged one by one",
                    &[("max", &max.to_string()), ("what", what)],
                ),
            }),
            std::cmp::Ordering::Greater => Admit::Drop,
        }
    }

    /// What was counted and not logged, said once (at the task's end).
    pub fn take_summary(&mut self) -> Option<String> {
        let (allowed, refused, dns, warnings) = std::mem::take(&mut self.unlogged);
        (allowed + refused + dns + warnings > 0).then(|| {
            gettext_f(
                "not logged one by one: {allowed} connections allowed, {refused} refused, {dns} DNS answers, {warnings} warnings",
                &[
                    ("allowed", &allowed.to_string()),
                    ("refused", &refused.to_string()),
                    ("dns", &dns.to_string()),
                    ("warnings", &warnings.to_string()),
                ],
            )
        })
    }
}

/// Cuts `s` to [`MAX_TEXT`] bytes at a character boundary.
fn clip(s: &mut String) {
    if s.len() <= MAX_TEXT {
        return;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.len() - end;
    s.truncate(end);
    s.push_str(&format!("… ({cut} more bytes)"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(decision: &str, host: String) -> EventKind {
        EventKind::Flow {
            host,
            port: 443,
            address: None,
            protocol: "connect".into(),
            decision: decision.into(),
            reason: "r".into(),
            bytes_out: 0,
            bytes_in: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn past_the_quota_events_are_counted_and_said_once() {
        let mut q = Quota::default();
        let mut recorded = 0;
        let mut warned = 0;
        for i in 0..MAX_FLOWS + 500 {
            let d = if i % 2 == 0 { "allow" } else { "deny" };
            match q.admit(flow(d, "h".into())) {
                Admit::Record(EventKind::Flow { .. }) => recorded += 1,
                Admit::Record(EventKind::Warning { .. }) => warned += 1,
                Admit::Record(other) => panic!("{other:?}"),
                Admit::Drop => {}
            }
        }
        // Half allowed, half refused: each kind has its own quota.
        assert_eq!((recorded, warned), (MAX_FLOWS + 500, 0));
        for _ in 0..MAX_FLOWS {
            q.admit(flow("deny", "h".into()));
        }
        // The refused ones past their quota never push an allowed one out.
        assert!(matches!(
            q.admit(flow("allow", "h".into())),
            Admit::Record(EventKind::Flow { .. })
        ));
        let s = q.take_summary().unwrap();
        assert!(s.contains("0 connections allowed, 5250 refused"), "{s}");
        assert_eq!(q.take_summary(), None);
        // Other kinds are never held back.
        assert!(matches!(
            q.admit(EventKind::Failed { error: "e".into() }),
            Admit::Record(EventKind::Failed { .. })
        ));
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let mut q = Quota::default();
        let host = "é".repeat(40_000);
        let Admit::Record(EventKind::Flow { host, .. }) = q.admit(flow("deny", host)) else {
            panic!()
        };
        assert!(host.len() < MAX_TEXT + 40, "{}", host.len());
        assert!(host.ends_with("more bytes)"), "{host}");
    }
}
