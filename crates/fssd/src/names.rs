//! Names of volumes and snapshots, and sizes with IEC suffixes, as DESIGN fixes them.

/// Why a name or size was refused; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Check a volume or snapshot name: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}`.
///
/// # Errors
/// The name breaks the rule; the message says how.
pub fn check_name(name: &str) -> Result<(), Invalid> {
    let ok_first = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok_rest = |c: char| ok_first(c) || c == '.' || c == '-';
    let mut chars = name.chars();
    let valid = match chars.next() {
        Some(c) => ok_first(c) && chars.all(ok_rest) && name.len() <= 64,
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(Invalid(format!(
            "invalid name '{name}': use 1 to 64 letters, digits, '_', '.' or '-', not starting with \
             '.' or '-'"
        )))
    }
}

/// Parse a size: a number with an optional K, M, G or T suffix (powers of 1024; case and a
/// trailing "iB" or "B" ignored), as fssconfig's strsuftoll.
///
/// # Errors
/// Not a size, or it overflows.
pub fn parse_size(text: &str) -> Result<u64, Invalid> {
    let bad = || {
        Invalid(format!(
            "invalid size '{text}': use a number with an optional K, M, G or T suffix (powers of \
             1024), for example 512, 64K, 1G"
        ))
    };
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .unwrap_or(t);
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    // Only digits are left, so a parse failure is an overflow.
    let too_large = || {
        Invalid(format!(
            "size '{text}' is too large: sizes must stay below 16 EiB (2^64 bytes); give a \
             smaller size"
        ))
    };
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    let shift = match suffix {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(too_large)
}

/// Format bytes for people: "1.0 GiB", "64 KiB", "512 B".
#[must_use]
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut v = bytes;
    while v >= 1024 && v % 1024 == 0 && unit < UNITS.len() - 1 {
        v /= 1024;
        unit += 1;
    }
    if unit > 0 || bytes < 1024 {
        return format!("{v} {}", UNITS[unit]);
    }
    let mut f = bytes as f64;
    let mut unit = 0;
    while f >= 1024.0 && unit < UNITS.len() - 1 {
        f /= 1024.0;
        unit += 1;
    }
    format!("{f:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["default", "fss0", "a", "A_b.c-d", "_x", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a b", &"x".repeat(65), "é"] {
            let e = check_name(bad).unwrap_err();
            assert!(e.0.contains("invalid name"), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for big in [
            "99999999999999T",
            "99999999T",
            "18446744073709551616",
            "16777216T",
        ] {
            let e = parse_size(big).unwrap_err().0;
            assert!(e.contains("too large"), "{big}: {e}");
        }
        assert_eq!(parse_size("16777215T"), Ok(16_777_215 << 40));
        for bad in ["", "G", "1Q", "-1", "1.5G"] {
            assert!(
                parse_size(bad).unwrap_err().0.contains("invalid size"),
                "{bad}"
            );
        }
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(100), "100 B");
    }
}
