//! Time as the core sees it: a value passed in by the driver, never read.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A moment, in milliseconds since the Unix epoch (UTC).
///
/// The core needs wall-clock time, not just a monotonic instant: message
/// timestamps go on the wire and the `wholast` history must survive a
/// restart. The driver passes the current time into every call; the core
/// clamps it so that its own clock never runs backwards, so a wall clock
/// stepped back by NTP cannot reorder deadlines or timestamps.
///
/// With the `serde` feature it is the number of milliseconds since the
/// epoch (`1795540321000`): this form is part of the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct Time(u64);

impl Time {
    /// The Unix epoch.
    pub const EPOCH: Time = Time(0);

    /// The moment `millis` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(millis: u64) -> Self {
        Time(millis)
    }

    /// The moment `secs` seconds after the Unix epoch.
    pub const fn from_unix_secs(secs: u64) -> Self {
        Time(secs.saturating_mul(1000))
    }

    /// Converts a `SystemTime` the driver has read; times before the epoch
    /// become the epoch.
    pub fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Time(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded down).
    pub const fn unix_secs(self) -> u64 {
        self.0 / 1000
    }

    /// This moment rounded down to the whole second, as timestamps on the
    /// wire are.
    pub const fn whole_second(self) -> Self {
        Time(self.0 - self.0 % 1000)
    }

    /// How long after `earlier` this moment is (zero if it is not after).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Formats as RFC 3339 UTC to the second, e.g. `2026-11-24T17:12:01Z`.
    pub fn to_rfc3339(self) -> String {
        Rfc3339(self).to_string()
    }

    /// Parses the RFC 3339 form [`Time::to_rfc3339`] writes (UTC, `Z`, whole
    /// seconds). Other offsets and fractions are refused: the wire has one form.
    pub fn parse_rfc3339(s: &str) -> Option<Time> {
        let b = s.as_bytes();
        if b.len() != 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'Z'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u64> {
            let part = &s[r];
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || h > 23 || mi > 59 || se > 59 {
            return None;
        }
        if d < 1 || d > days_in_month(y, mo) {
            return None;
        }
        let days = days_from_civil(y, mo, d);
        Some(Time::from_unix_secs(
            days * 86_400 + h * 3600 + mi * 60 + se,
        ))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Saturates at the far future rather than overflowing: a huge configured
/// timeout means "never", not a panic.
impl std::ops::Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(millis(d)))
    }
}

/// Saturates at the epoch.
impl std::ops::Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(millis(d)))
    }
}

/// "00" to "99", each number's two digits at twice its place.
const PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Displays a [`Time`] as RFC 3339 UTC to the second without allocating.
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339(pub Time);

impl Rfc3339 {
    /// The text, with its digits put in place by hand, two at a time from
    /// a table: every `MSG` line carries a timestamp, and the formatting
    /// machinery's padded numbers cost about as much as the rest of the
    /// line together (a digit at a time, still a fortieth of a message's
    /// instructions). `None` from the year 10000 on, which takes more than
    /// four digits.
    fn digits(self) -> Option<[u8; 20]> {
        let (y, mo, d, h, mi, s) = self.parts();
        if y > 9999 {
            return None;
        }
        let mut text = *b"0000-00-00T00:00:00Z";
        for (at, n) in [
            (0, y / 100),
            (2, y % 100),
            (5, mo),
            (8, d),
            (11, h),
            (14, mi),
            (17, s),
        ] {
            // Every n is below 100: the year is split in two.
            let i = 2 * (n as usize % 100);
            text[at..at + 2].copy_from_slice(&PAIRS[i..i + 2]);
        }
        Some(text)
    }

    /// Year, month, day, hour, minute, second.
    fn parts(self) -> (u64, u64, u64, u64, u64, u64) {
        let secs = self.0.unix_secs();
        let (y, mo, d) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        (y, mo, d, rem / 3600, rem % 3600 / 60, rem % 60)
    }

    /// Appends the text to `out`, as [`Display`](fmt::Display) would.
    pub(crate) fn push_to(self, out: &mut String) {
        match self.digits() {
            Some(text) => out.push_str(std::str::from_utf8(&text).unwrap_or_default()),
            None => {
                use fmt::Write as _;
                let _ = write!(out, "{self}");
            }
        }
    }
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.digits() {
            Some(text) => f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?),
            // Five digits and more: past any clock this runs on.
            None => {
                let (y, mo, d, h, mi, s) = self.parts();
                write!(f, "{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
            }
        }
    }
}

fn is_leap(y: u64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, restricted to dates from 1970 on).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: u64) -> (u64, u64, u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29T00:00:00Z.
    const START_OF_A_LEAP_DAY: u64 = 1_709_164_800;

    #[test]
    fn formats_as_padded_numbers_would() {
        // Every second of a day, a second every 11.6 days or so from 1970
        // to past 9999, and the first moments of five-digit years.
        let padded = |t: Time| {
            let secs = t.unix_secs();
            let (y, mo, d) = civil_from_days(secs / 86_400);
            let rem = secs % 86_400;
            format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            )
        };
        let last = Time::parse_rfc3339("9999-12-31T23:59:59Z")
            .unwrap()
            .unix_secs()
            + 86_400;
        let day = START_OF_A_LEAP_DAY..START_OF_A_LEAP_DAY + 86_400;
        for secs in day
            .chain((0..last).step_by(999_983))
            .chain(last - 5..last + 5)
        {
            let t = Time::from_unix_secs(secs);
            assert_eq!(t.to_rfc3339(), padded(t));
            let mut pushed = String::new();
            Rfc3339(t).push_to(&mut pushed);
            assert_eq!(pushed, padded(t));
        }
        assert_eq!(
            Time::from_unix_secs(last).to_rfc3339(),
            "10000-01-01T23:59:59Z"
        );
    }

    #[test]
    fn formats_known_moments() {
        assert_eq!(Time::EPOCH.to_rfc3339(), "1970-01-01T00:00:00Z");
        let t = Time::from_unix_secs(1_795_540_321);
        assert_eq!(t.to_rfc3339(), "2026-11-24T17:12:01Z");
        assert_eq!(
            Time::from_unix_secs(951_782_400).to_rfc3339(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn parses_what_it_formats_and_refuses_the_rest() {
        let t = Time::parse_rfc3339("2026-11-24T17:12:01Z").unwrap();
        assert_eq!(t, Time::from_unix_secs(1_795_540_321));
        for bad in [
            "2026-11-24T17:12:01",
            "2026-02-30T00:00:00Z",
            "2026-11-24 17:12:01Z",
            "2026-11-24T24:00:00Z",
            "+026-11-24T17:12:01Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(Time::parse_rfc3339(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn rfc3339_round_trips(secs in 0u64..253_402_300_800) {
            let t = Time::from_unix_secs(secs);
            proptest::prop_assert_eq!(Time::parse_rfc3339(&t.to_rfc3339()), Some(t));
        }
    }
}
