//! Sizes as people write them: `512K`, `2G`, `1.5GiB`, `4096`.

use crate::Error;

/// Parses a size with an optional `K`/`M`/`G`/`T` suffix (powers of 1024;
/// `KB`, `KiB` and lower case are accepted too).
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(Error::Invalid(format!(
                "{s:?} is not a size: use a number with K, M, G or T (for example 512M)"
            )))
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| Error::Invalid(format!("{s:?} is not a size (for example 512M or 2G)")))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(Error::Invalid(format!("{s:?} is out of range")));
    }
    Ok(bytes as u64)
}

/// `2147483648` → `2 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || (v.fract()).abs() < 0.05 {
        format!("{:.0} {}", v, UNITS[i])
    } else {
        format!("{:.1} {}", v, UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("10mb").unwrap(), 10 << 20);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(format_size(2 << 30), "2 GiB");
        assert_eq!(format_size(1536), "1.5 KiB");
    }
}
