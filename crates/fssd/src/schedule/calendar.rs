//! UTC calendar fields of a time in seconds since the epoch (no time zone database: schedules
//! name and bucket snapshots in UTC).

/// A moment broken into UTC calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Days since 1970-01-01.
    pub days: i64,
    /// The year.
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u32,
    /// 0 to 59.
    pub minute: u32,
    /// 0 to 59.
    pub second: u32,
    /// 0 for Monday to 6 for Sunday.
    pub weekday: u32,
}

impl Utc {
    /// The calendar fields of `secs` seconds since the epoch.
    #[must_use]
    pub fn of(secs: u64) -> Utc {
        let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
        let rem = secs % 86_400;
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let narrow = |v: i64| u32::try_from(v).unwrap_or(0);
        Utc {
            days,
            year: yoe + era * 400 + i64::from(month <= 2),
            month: narrow(month),
            day: narrow(day),
            hour: narrow(i64::try_from(rem / 3600).unwrap_or(0)),
            minute: narrow(i64::try_from(rem % 3600 / 60).unwrap_or(0)),
            second: narrow(i64::try_from(rem % 60).unwrap_or(0)),
            // 1970-01-01 was a Thursday.
            weekday: narrow((days + 3).rem_euclid(7)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Utc;

    #[test]
    fn known_dates() {
        let t = Utc::of(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 3));
        // 2024-02-29T23:59:58Z, a Thursday.
        let t = Utc::of(1_709_251_198);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2024, 2, 29, 23, 59, 58, 3)
        );
        // 2026-12-07, a Monday.
        let t = Utc::of(1_796_601_600);
        assert_eq!((t.year, t.month, t.day, t.weekday), (2026, 12, 7, 0));
    }
}
