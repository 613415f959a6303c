//! UTC calendar times for rollout names and timestamps, without a date library: the fake needs
//! only the proleptic Gregorian conversion of Unix time and back (Howard Hinnant's
//! `civil_from_days`/`days_from_civil`).

/// A UTC time to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year, e.g. 2023.
    pub year: i64,
    /// Month, 1..=12.
    pub month: u32,
    /// Day of the month, 1..=31.
    pub day: u32,
    /// Hour, 0..=23.
    pub hour: u32,
    /// Minute, 0..=59.
    pub minute: u32,
    /// Second, 0..=59.
    pub second: u32,
    /// Millisecond, 0..=999.
    pub milli: u32,
}

const DAY_MS: u64 = 86_400_000;

impl Utc {
    /// The UTC time `ms` milliseconds after the Unix epoch.
    pub fn from_ms(ms: u64) -> Self {
        let days = i64::try_from(ms / DAY_MS).unwrap_or(i64::MAX);
        let in_day = ms % DAY_MS;
        let (year, month, day) = civil_from_days(days);
        let narrow = |value: u64| u32::try_from(value).unwrap_or(0);
        Self {
            year,
            month,
            day,
            hour: narrow(in_day / 3_600_000),
            minute: narrow(in_day / 60_000 % 60),
            second: narrow(in_day / 1000 % 60),
            milli: narrow(in_day % 1000),
        }
    }

    /// `YYYY-MM-DDThh:mm:ss.mmmZ`, the form of Codex's rollout timestamps.
    pub fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.milli
        )
    }

    /// `YYYY-MM-DDThh-mm-ss`, the time in a rollout's file name (no `:`, which some file
    /// systems refuse).
    pub fn file_stamp(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// Parses what [`Utc::iso`] writes back into epoch seconds; `None` for anything else.
    pub fn parse_iso_s(text: &str) -> Option<u64> {
        let bytes = text.as_bytes();
        let number =
            |range: std::ops::Range<usize>| -> Option<u64> { text.get(range)?.parse().ok() };
        let shape = bytes.len() >= 20
            && bytes[4] == b'-'
            && bytes[7] == b'-'
            && bytes[10] == b'T'
            && bytes[13] == b':'
            && bytes[16] == b':';
        if !shape {
            return None;
        }
        let (month, day) = (number(5..7)?, number(8..10)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return None;
        }
        let days = days_from_civil(
            i64::try_from(number(0..4)?).ok()?,
            u32::try_from(month).ok()?,
            u32::try_from(day).ok()?,
        );
        let seconds = number(11..13)? * 3600 + number(14..16)? * 60 + number(17..19)?;
        u64::try_from(days)
            .ok()?
            .checked_mul(86_400)?
            .checked_add(seconds)
    }
}

/// Year, month, day of the day `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let narrow = |value: i64| u32::try_from(value).unwrap_or(1);
    (year, narrow(month), narrow(day))
}

/// Days from 1970-01-01 to `year`-`month`-`day`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_format_and_parse_back() {
        let virtual_epoch = Utc::from_ms(1_700_000_000_123);
        assert_eq!(virtual_epoch.iso(), "2023-11-14T22:13:20.123Z");
        assert_eq!(virtual_epoch.file_stamp(), "2023-11-14T22-13-20");
        assert_eq!(Utc::from_ms(0).iso(), "1970-01-01T00:00:00.000Z");
        // A leap day, and the last moment of a year.
        assert_eq!(
            Utc::from_ms(951_782_400_000).iso(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            Utc::from_ms(1_767_225_599_999).iso(),
            "2025-12-31T23:59:59.999Z"
        );
        for ms in [0, 951_782_400_000, 1_700_000_000_123, 1_767_225_599_999] {
            assert_eq!(Utc::parse_iso_s(&Utc::from_ms(ms).iso()), Some(ms / 1000));
        }
        assert_eq!(Utc::parse_iso_s("yesterday"), None);
        assert_eq!(Utc::parse_iso_s("2023-13-14T22:13:20.000Z"), None);
    }
}
