//! Schedule intervals: `30s`, `5m`, `1h`, `7d` (a bare number is seconds).

/// The longest interval accepted (about 100 years): beyond it, times overflow nothing useful.
const MAX_SECONDS: u64 = 100 * 365 * 86_400;

/// Seconds in `text`: a positive whole number with an optional unit `s`, `m`, `h` or `d`.
///
/// # Errors
/// A message that names the bad text and says what is accepted.
pub fn parse_every(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("bad interval '{text}': give a positive whole number with s, m, h or d (30s, 5m, 1h, 7d)")
    };
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match n.checked_mul(scale) {
        Some(s) if s > 0 && s <= MAX_SECONDS => Ok(s),
        _ => Err(bad()),
    }
}

/// `secs` in the largest unit that divides it exactly (`90` is `90s`, `7200` is `2h`).
#[must_use]
pub fn format_every(secs: u64) -> String {
    for (scale, unit) in [(86_400, 'd'), (3600, 'h'), (60, 'm')] {
        if secs >= scale && secs % scale == 0 {
            return format!("{}{unit}", secs / scale);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse_every("30s"), Ok(30));
        assert_eq!(parse_every("45"), Ok(45));
        assert_eq!(parse_every("5m"), Ok(300));
        assert_eq!(parse_every("2h"), Ok(7200));
        assert_eq!(parse_every("7d"), Ok(604_800));
        for bad in [
            "",
            "0s",
            "m",
            "5x",
            "1.5h",
            "-1s",
            "5 m",
            "99999999999999999999d",
            "1h30m",
        ] {
            let e = parse_every(bad).unwrap_err();
            assert!(e.contains("bad interval"), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(secs in 1u64..MAX_SECONDS) {
            prop_assert_eq!(parse_every(&format_every(secs)), Ok(secs));
        }
    }
}
