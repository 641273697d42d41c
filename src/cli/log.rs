//! `airlock log`: the audit log, as a table for people or as JSON lines for
//! a SIEM (`--json`, format in [`crate::audit`]).
//!
//! Everything in the table that an agent could have chosen (paths, hosts,
//! commands, messages) is escaped: control characters, ANSI escape
//! sequences and bidi overrides never reach the terminal raw.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context;

use crate::audit::{self, is_terminal_unsafe, AuditStore, Filter};
use crate::event::{Event, EventKind};
use crate::i18n::{gettext, gettext_f};
use crate::task::TaskId;
use crate::Error;

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Only this task.
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
    /// Only what happened since WHEN: a date or time (2026-11-27,
    /// 2026-11-27T14:00:00+01:00; local time without an offset) or an age
    /// (90s, 30m, 2h, 3d, 1w).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Print JSON lines (one object per line) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: LogArgs) -> ExitCode {
    let stdout = io::stdout();
    let mut out = PipeWriter {
        inner: stdout.lock(),
        closed: false,
    };
    match run(&args, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        // `airlock log | head`: the reader left, which is not an error.
        Err(_) if out.closed => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("airlock: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Remembers that the reader closed the pipe, so that the error it causes
/// (wrapped by the export) can be told apart from a real one.
struct PipeWriter<W: Write> {
    inner: W,
    closed: bool,
}

impl<W: Write> Write for PipeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

impl<W: Write> PipeWriter<W> {
    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::BrokenPipe) {
            self.closed = true;
        }
        r
    }
}

fn run(args: &LogArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let task = args.task.as_deref().map(TaskId::parse).transpose()?;
    let since_ms = args
        .since
        .as_deref()
        .map(|s| parse_since(s, crate::event::now_ms()))
        .transpose()?;
    let path = audit::default_path();
    if !path.exists() {
        eprintln!(
            "{}",
            gettext_f(
                "There is no audit log yet ({path} does not exist); it is created when the first task runs.",
                &[("path", &path.display().to_string())],
            )
        );
        return Ok(());
    }
    let store = AuditStore::open(&path)?;
    if let Some(t) = &task {
        let only = Filter {
            task: Some(t.clone()),
            since_ms: None,
        };
        if store.tasks(&only)?.is_empty() {
            return Err(Error::NoSuchTask(t.to_string()).into());
        }
    }
    let filter = Filter { task, since_ms };
    if args.json {
        store.export_jsonl(out, &filter)?;
        return Ok(());
    }
    write_table(&store, &filter, out).context(gettext("the log could not be written"))
}

fn write_table(store: &AuditStore, filter: &Filter, out: &mut dyn Write) -> anyhow::Result<()> {
    if filter.task.is_some() {
        for t in store.tasks(filter)? {
            let line = gettext_f(
                "Task {task}: {command} (asked by {who}), {state}, {denials} denials",
                &[
                    ("task", t.id.as_str()),
                    ("command", &escape_for_terminal(&shell_words(&t.argv))),
                    ("who", &escape_for_terminal(&t.requested_by)),
                    ("state", t.state.as_str()),
                    ("denials", &t.denial_count.to_string()),
                ],
            );
            writeln!(out, "{}", escape_unsafe(&line))?;
        }
    }
    let events = store.events(filter.task.as_ref(), filter.since_ms)?;
    if events.is_empty() {
        writeln!(out, "{}", gettext("No events."))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<19}  {:<20}  {}",
        gettext("TIME"),
        gettext("TASK"),
        gettext("EVENT")
    )?;
    for e in &events {
        let line = format!(
            "{:<19}  {:<20}  {}",
            format_local_time(e.time_ms),
            e.task.as_str(),
            summary(e)
        );
        writeln!(out, "{}", escape_unsafe(&line))?;
    }
    out.flush()?;
    Ok(())
}

/// One event in plain words; every value an agent could choose is escaped.
pub fn summary(e: &Event) -> String {
    let esc = |s: &str| escape_for_terminal(s);
    let repeat = |count: u64, last_ms: u64| {
        if count > 1 {
            gettext_f(
                " ({count} times, last at {time})",
                &[
                    ("count", &count.to_string()),
                    ("time", &format_local_time(last_ms)),
                ],
            )
        } else {
            String::new()
        }
    };
    match &e.kind {
        EventKind::StateChanged { from: Some(from), to } => gettext_f(
            "state {from} → {to}",
            &[("from", from.as_str()), ("to", to.as_str())],
        ),
        EventKind::StateChanged { from: None, to } => gettext_f("state {to}", &[("to", to.as_str())]),
        EventKind::Started { argv, helper_pid } => gettext_f(
            "started {command} (helper pid {pid})",
            &[("command", &esc(&shell_words(argv))), ("pid", &helper_pid.to_string())],
        ),
        EventKind::Enforcement { layers } => {
            let list: Vec<String> = layers
                .iter()
                .map(|l| format!("{} {} ({})", esc(&l.what), esc(&l.value), esc(&l.mechanism)))
                .collect();
            gettext_f("enforced: {list}", &[("list", &list.join(", "))])
        }
        EventKind::SyscallDenied {
            syscall,
            detail,
            count,
            last_ms,
            ..
        } => {
            let what = match detail {
                Some(d) => format!("{} {}", esc(syscall), esc(d)),
                None => esc(syscall),
            };
            gettext_f("blocked system call {syscall}", &[("syscall", &what)]) + &repeat(*count, *last_ms)
        }
        EventKind::FileAttempt {
            op,
            path,
            denied,
            count,
            last_ms,
            ..
        } => {
            let args = [("op", esc(op)), ("path", esc(path))];
            let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let text = if *denied {
                gettext_f("blocked {op} of {path}", &args)
            } else {
                gettext_f("{op} of {path}", &args)
            };
            text + &repeat(*count, *last_ms)
        }
        EventKind::NetAttempt {
            syscall,
            address,
            count,
            last_ms,
            ..
        } => {
            gettext_f(
                "blocked direct connection to {address} ({syscall})",
                &[("address", &esc(address)), ("syscall", &esc(syscall))],
            ) + &repeat(*count, *last_ms)
        }
        EventKind::LimitHit { limit, detail } => gettext_f(
            "limit reached: {limit} ({detail})",
            &[("limit", &esc(limit)), ("detail", &esc(detail))],
        ),
        EventKind::Flow {
            host,
            port,
            protocol,
            decision,
            reason,
            bytes_out,
            bytes_in,
            ..
        } => gettext_f(
            "network {decision}: {host}:{port} over {protocol} ({reason}), {out} sent, {in} received",
            &[
                ("decision", &esc(decision)),
                ("host", &esc(host)),
                ("port", &port.to_string()),
                ("protocol", &esc(protocol)),
                ("reason", &esc(reason)),
                ("out", &crate::policy::format_size(*bytes_out)),
                ("in", &crate::policy::format_size(*bytes_in)),
            ],
        ),
        EventKind::DnsQuery { name, answer } => gettext_f(
            "DNS lookup of {name}: {answer}",
            &[("name", &esc(name)), ("answer", &esc(answer))],
        ),
        EventKind::ConsentRequested { id, host, port } => gettext_f(
            "asked whether {host}:{port} may be reached (question {id})",
            &[("host", &esc(host)), ("port", &port.to_string()), ("id", &id.to_string())],
        ),
        EventKind::ConsentAnswered { id, answer } => gettext_f(
            "answer to question {id}: {answer}",
            &[("id", &id.to_string()), ("answer", &esc(answer))],
        ),
        EventKind::Exited { status, changed_files } => {
            let files = changed_files.to_string();
            match status.signal {
                Some(sig) => gettext_f(
                    "killed by signal {signal}, {files} changed files to review",
                    &[("signal", &sig.to_string()), ("files", &files)],
                ),
                None => gettext_f(
                    "exited with status {code}, {files} changed files to review",
                    &[("code", &status.code.to_string()), ("files", &files)],
                ),
            }
        }
        EventKind::Failed { error } => gettext_f("failed: {error}", &[("error", &esc(error))]),
        EventKind::Warning { message } => gettext_f("warning: {message}", &[("message", &esc(message))]),
        EventKind::Committed {
            files,
            conflicts,
            outcome,
        } => gettext_f(
            "commit {outcome}: {files} files, {conflicts} conflicts",
            &[
                ("outcome", &esc(outcome)),
                ("files", &files.to_string()),
                ("conflicts", &conflicts.to_string()),
            ],
        ),
    }
}

/// A command line as the user would type it, quoting words with spaces.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes a value an agent chose safe to print: backslashes doubled,
/// control characters (ESC of ANSI sequences, newlines that would forge a
/// line, C1 CSI), DEL and bidi overrides shown as `\u{…}`.
pub fn escape_for_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if is_terminal_unsafe(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Last line of defence for a whole output line: escapes what is unsafe
/// without doubling backslashes already produced by [`escape_for_terminal`].
pub(crate) fn escape_unsafe(s: &str) -> String {
    super::escape_where(s, is_terminal_unsafe)
}

/// `YYYY-MM-DD HH:MM:SS` in local time.
pub fn format_local_time(ms: u64) -> String {
    let secs = (ms / 1000) as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r only writes to the tm we own; null means failure.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return ms.to_string();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Parses `--since`: an age (`90s`, `30m`, `2h`, `3d`, `1w`) counted back
/// from `now_ms`, an RFC 3339 date-time (`2026-11-27T14:00:00Z`,
/// `…+01:00`, fractions allowed), or a date or date-time without an offset,
/// taken as local time. Returns milliseconds since the epoch.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, Error> {
    let bad = || {
        Error::Invalid(gettext_f(
            "--since {value}: not a date, a time or an age; use for example 2026-11-27, 2026-11-27T14:00:00Z, 2h or 3d",
            &[("value", &escape_for_terminal(s))],
        ))
    };
    let t = s.trim();
    if let Some(unit) = t.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let digits = &t[..t.len() - 1];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let n: u64 = digits.parse().map_err(|_| bad())?;
            let unit_ms: u64 = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                'w' => 7 * 86_400_000,
                _ => return Err(bad()),
            };
            return Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms)));
        }
    }
    parse_datetime(t).ok_or_else(bad)
}

fn parse_datetime(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let (mut hour, mut min, mut sec, mut ms) = (0, 0, 0, 0);
    let mut rest = &s[10..];
    if !rest.is_empty() {
        if !matches!(rest.as_bytes()[0], b'T' | b't' | b' ')
            || rest.len() < 6
            || rest.as_bytes()[3] != b':'
        {
            return None;
        }
        hour = num(11..13)?;
        min = num(14..16)?;
        rest = &s[16..];
        if rest.starts_with(':') {
            sec = num(17..19)?;
            rest = &s[19..];
            if let Some(frac) = rest.strip_prefix('.') {
                let n = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
                if n == 0 {
                    return None;
                }
                let digits = &frac[..n];
                ms = format!("{:0<3}", &digits[..n.min(3)]).parse().ok()?;
                rest = &frac[n..];
            }
        }
        if hour > 23 || min > 59 || sec > 60 {
            return None;
        }
    }
    let offset_secs = match rest {
        "" => None,
        "Z" | "z" => Some(0),
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = rest.as_bytes();
            if o.len() != 6 || o[3] != b':' {
                return None;
            }
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            Some(sign * (oh * 3600 + om * 60))
        }
    };
    let secs = match offset_secs {
        Some(off) => {
            days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - off
        }
        None => {
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            tm.tm_year = (year - 1900) as libc::c_int;
            tm.tm_mon = (month - 1) as libc::c_int;
            tm.tm_mday = day as libc::c_int;
            tm.tm_hour = hour as libc::c_int;
            tm.tm_min = min as libc::c_int;
            tm.tm_sec = sec as libc::c_int;
            // Let the C library decide whether daylight saving applies.
            tm.tm_isdst = -1;
            // SAFETY: mktime reads and normalises the tm we own.
            let t = unsafe { libc::mktime(&mut tm) };
            if t == -1 {
                return None;
            }
            t
        }
    };
    u64::try_from(secs).ok().map(|s| s * 1000 + ms as u64)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm), so offsets are applied without the C library's time zone.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn ages_count_back_from_now() {
        assert_eq!(parse_since("90s", NOW).unwrap(), NOW - 90_000);
        assert_eq!(parse_since("30m", NOW).unwrap(), NOW - 1_800_000);
        assert_eq!(parse_since("2h", NOW).unwrap(), NOW - 7_200_000);
        assert_eq!(parse_since("3d", NOW).unwrap(), NOW - 3 * 86_400_000);
        assert_eq!(parse_since("1w", NOW).unwrap(), NOW - 7 * 86_400_000);
        assert_eq!(parse_since("99999999999w", NOW).unwrap(), 0);
    }

    #[test]
    fn rfc3339_times_with_offsets() {
        assert_eq!(parse_since("1970-01-01T00:00:00Z", NOW).unwrap(), 0);
        assert_eq!(
            parse_since("2026-11-27T02:15:00Z", NOW).unwrap(),
            1_795_745_700_000
        );
        assert_eq!(
            parse_since("2026-11-27T03:15:00+01:00", NOW).unwrap(),
            1_795_745_700_000
        );
        assert_eq!(
            parse_since("2026-11-26T21:15:00-05:00", NOW).unwrap(),
            1_795_745_700_000
        );
        assert_eq!(
            parse_since("2026-11-27t02:15:00.25z", NOW).unwrap(),
            1_795_745_700_250
        );
        assert_eq!(
            parse_since("2024-02-29T00:00:00Z", NOW).unwrap(),
            1_709_164_800_000
        );
    }

    #[test]
    fn local_dates_and_times_go_through_the_time_zone() {
        let date = parse_since("2026-11-27", NOW).unwrap();
        let midnight = parse_since("2026-11-27 00:00", NOW).unwrap();
        assert_eq!(date, midnight);
        assert_eq!(format_local_time(date), "2026-11-27 00:00:00");
        let t = parse_since("2026-11-27T14:05:09", NOW).unwrap();
        assert_eq!(format_local_time(t), "2026-11-27 14:05:09");
    }

    #[test]
    fn nonsense_is_refused_with_the_value_escaped() {
        for bad in [
            "",
            "yesterday",
            "2h30m",
            "3x",
            "-2h",
            "2026-13-01",
            "2026-02-30",
            "2026-11-27T25:00",
            "2026-11-27T10:00+1",
            "2026-11-27T10:00:00.Z",
            "2026/11/27",
            "2026-11-27T10",
        ] {
            assert!(parse_since(bad, NOW).is_err(), "{bad:?} was accepted");
        }
        let err = parse_since("\u{1b}[2J", NOW).unwrap_err().to_string();
        assert!(!err.contains('\u{1b}'), "{err:?}");
    }

    #[test]
    fn escaping_leaves_nothing_a_terminal_would_act_on() {
        let evil = "a\u{1b}[31mred\u{7}\n\r\t\u{7f}\u{9b}2J\u{202E}txt.exe\u{2066}\u{200F}\\";
        let safe = escape_for_terminal(evil);
        assert!(!safe.chars().any(is_terminal_unsafe), "{safe:?}");
        assert_eq!(
            safe,
            "a\\u{1b}[31mred\\u{7}\\u{a}\\u{d}\\u{9}\\u{7f}\\u{9b}2J\\u{202e}txt.exe\\u{2066}\\u{200f}\\\\"
        );
        // Plain names, including non-Latin ones, are left alone.
        assert_eq!(
            escape_for_terminal("Документы/報告 v2.txt"),
            "Документы/報告 v2.txt"
        );
    }

    #[test]
    fn summaries_escape_what_the_agent_chose() {
        let task = TaskId::parse("t").unwrap();
        let e = Event::new(
            task,
            0,
            EventKind::FileAttempt {
                op: "open".into(),
                path: "/x\u{1b}]0;pwned\u{7}".into(),
                denied: true,
                pid: 1,
                count: 3,
                first_ms: 0,
                last_ms: 0,
            },
        );
        let s = summary(&e);
        assert!(!s.chars().any(is_terminal_unsafe), "{s:?}");
        assert!(s.contains("/x\\u{1b}]0;pwned\\u{7}"), "{s}");
        assert!(s.contains('3'), "{s}");
    }

    #[test]
    fn commands_are_quoted_like_a_shell() {
        let argv = vec![
            "grep".to_string(),
            "two words".into(),
            "it's".into(),
            "".into(),
        ];
        assert_eq!(shell_words(&argv), r"grep 'two words' 'it'\''s' ''");
    }
}
