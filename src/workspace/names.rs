//! Showing file names an agent chose, safely. A name can hold newlines,
//! terminal escape sequences, bidirectional overrides that reorder what the
//! user reads, or bytes that are not UTF-8; [`escape`] turns any of them
//! into visible `\` escapes so what is shown is what is on disk.

/// Escapes a name (or a relative path) for display. Printable text passes
/// through; `\` becomes `\\`; control characters, bidi and invisible
/// formatting characters become `\n`, `\t`, `\x1b`, `\u{202e}`; bytes that
/// are not UTF-8 become `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    // std's utf8_chunks is newer than our MSRV: walk the errors by hand.
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => {
                let (v, _) = rest.split_at(e.valid_up_to());
                let v = std::str::from_utf8(v).unwrap_or_default();
                (v, e.error_len().unwrap_or(rest.len() - e.valid_up_to()))
            }
        };
        for c in valid.chars() {
            push_char(&mut out, c);
        }
        let start = valid.len();
        for b in &rest[start..start + bad] {
            out.push_str(&format!("\\x{b:02x}"));
        }
        rest = &rest[start + bad..];
    }
    out
}

/// [`escape`] for a path on disk.
pub fn escape_path(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    escape(p.as_os_str().as_bytes())
}

/// Escapes file *content* for a terminal: like [`escape`] but tabs and
/// backslashes stay as they are (code is full of them); escape sequences,
/// other control and bidi characters are still made visible.
pub fn escape_text(s: &str) -> String {
    escape_text_runs(s).into_iter().map(|(t, _)| t).collect()
}

/// [`escape_text`] in runs, each saying whether it is an escape, so a
/// terminal can show a real carriage return (`\r`, highlighted) apart from
/// the two characters backslash and r in the text.
pub fn escape_text_runs(s: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    let mut one = String::new();
    let mut prev = None;
    for c in s.chars() {
        one.clear();
        let shown_as_is = emoji_presentation(prev, c);
        prev = Some(c);
        let escaped = match c {
            '\\' | '\t' => {
                one.push(c);
                false
            }
            c if shown_as_is => {
                one.push(c);
                false
            }
            c => {
                push_char(&mut one, c);
                one.len() != c.len_utf8() || !one.starts_with(c)
            }
        };
        match out.last_mut() {
            Some((t, e)) if *e == escaped => t.push_str(&one),
            _ => out.push((one.clone(), escaped)),
        }
    }
    out
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if is_hidden_format(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.push(c),
    }
}

/// Text or emoji presentation (U+FE0E, U+FE0F) right after a symbol that
/// has both (❤️, ☺︎, keycaps): ordinary in text with emoji, and shown as
/// it is there. Anywhere else a variation selector is escaped and flagged.
pub fn emoji_presentation(prev: Option<char>, c: char) -> bool {
    matches!(c, '\u{fe0e}' | '\u{fe0f}')
        && prev.is_some_and(|p| {
            matches!(p as u32,
                0x23 | 0x2a | 0x30..=0x39 | 0xa9 | 0xae
                | 0x2000..=0x2bff
                | 0x3030 | 0x303d | 0x3297 | 0x3299
                | 0x1f000..=0x1faff)
        })
}

/// C1 controls, bidi embeddings/overrides/isolates, marks, zero-width and
/// other invisible characters that can make a name look like another.
pub fn is_hidden_format(c: char) -> bool {
    matches!(c as u32,
        0x80..=0x9f
        | 0xad
        | 0x034f
        | 0x061c
        | 0x180e
        | 0x200b..=0x200f
        | 0x2028..=0x202e
        | 0x2060..=0x206f
        | 0xfeff
        | 0xfff9..=0xfffb
        // Variation selectors (identifier characters in JavaScript and
        // Python: `isAdmin` and `isAdmin` + U+FE00 are two names), the
        // Mongolian free variation selectors, shorthand format controls,
        // and the rest of Unicode's default-ignorable code points.
        | 0x180b..=0x180f
        | 0xfe00..=0xfe0f
        | 0xfff0..=0xfff8
        | 0x1bca0..=0x1bca3
        | 0xe0000..=0xe0fff
        // Letters and signs that draw as blank space: the Hangul fillers
        // and Khmer inherent vowels are identifier characters in
        // JavaScript and Python ("invisible backdoor" parameters), the
        // braille blank and the musical-symbol formats pass for spaces.
        | 0x115f
        | 0x1160
        | 0x17b4
        | 0x17b5
        | 0x2800
        | 0x3164
        | 0xffa0
        | 0x1d173..=0x1d17a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_visible() {
        assert_eq!(escape(b"plain name.txt"), "plain name.txt");
        assert_eq!(escape(b"a\nb"), "a\\nb");
        assert_eq!(escape(b"\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(
            escape("evil\u{202e}txt.exe".as_bytes()),
            "evil\\u{202e}txt.exe"
        );
        assert_eq!(escape(b"caf\xe9"), "caf\\xe9");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape("\u{9b}31m".as_bytes()), "\\u{9b}31m");
        assert_eq!(escape("Größe €".as_bytes()), "Größe €");
        assert_eq!(escape_text("\tif a\\b \x1b[2J"), "\tif a\\b \\x1b[2J");
        assert_eq!(
            escape_text_runs("a\\r\rb"),
            vec![
                ("a\\r".to_string(), false),
                ("\\r".to_string(), true),
                ("b".to_string(), false)
            ]
        );
    }

    #[test]
    fn escaping_is_injective_on_samples() {
        // Two different names never display the same.
        let names: [&[u8]; 6] = [b"a\\x41", b"aA", b"a\x41", b"a\\\\x41", b"a\\nb", b"a\nb"];
        let shown: std::collections::HashSet<String> = names.iter().map(|n| escape(n)).collect();
        assert_eq!(shown.len(), 5, "b\"aA\" and b\"a\\x41\" are the same bytes");
    }
}
