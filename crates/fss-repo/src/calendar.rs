//! UTC calendar arithmetic for ids and prune periods, without a date crate.

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (proleptic Gregorian;
/// the civil-from-days algorithm).
#[must_use]
pub fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The calendar periods prune counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC hour.
    Hour,
    /// A UTC day.
    Day,
    /// A week from Monday 00:00 UTC.
    Week,
    /// A UTC calendar month.
    Month,
}

impl Period {
    /// Which period a time falls in (a number that is equal for times in the same period).
    #[must_use]
    pub fn bucket(self, secs: u64) -> u64 {
        let days = secs / 86_400;
        match self {
            Period::Hour => secs / 3600,
            Period::Day => days,
            // 1970-01-01 was a Thursday: shift so weeks start on Monday.
            Period::Week => (days + 3) / 7,
            Period::Month => {
                let (y, m, _) = civil(days);
                y * 12 + m
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_793), (2026, 12, 6));
        // 2026-11-30 (Monday) and 2026-12-06 (Sunday) share a week; 2026-12-07 does not.
        assert_eq!(
            Period::Week.bucket(20_787 * 86_400),
            Period::Week.bucket(20_793 * 86_400)
        );
        assert_ne!(
            Period::Week.bucket(20_793 * 86_400),
            Period::Week.bucket(20_794 * 86_400)
        );
    }
}
