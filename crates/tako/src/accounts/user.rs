//! The user and the small types that carry its invariants.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Nickname;

/// A user's id: a UUID that the server generates. It doubles as the user's login secret
/// (the socket connects with it), so it is never published to other users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Uuid);

impl UserId {
    pub fn generate() -> UserId {
        UserId(Uuid::new_v4())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for UserId {
    fn from(uuid: Uuid) -> Self {
        UserId(uuid)
    }
}

impl FromStr for UserId {
    type Err = uuid::Error;

    /// Accepts the hyphenated form the clients use (and the other standard UUID spellings).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(UserId)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// How many stamps a user collected: never negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StampCount(i64);

impl StampCount {
    pub fn new(value: i64) -> Option<StampCount> {
        (value >= 0).then_some(StampCount(value))
    }

    /// Rows written by the original server may hold NULL or, in theory, a negative number;
    /// they are shown as stored (NULL as 0) rather than refused.
    pub fn from_stored(value: Option<i64>) -> StampCount {
        StampCount(value.unwrap_or(0))
    }

    pub fn get(&self) -> i64 {
        self.0
    }
}

/// A UTC instant with microsecond precision, as the original stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_micros(Utc::now().timestamp_micros())
    }

    pub fn from_micros(micros: i64) -> Timestamp {
        Timestamp(DateTime::from_timestamp_micros(micros).unwrap_or_default())
    }

    pub fn from_datetime(at: DateTime<Utc>) -> Timestamp {
        Timestamp::from_micros(at.timestamp_micros())
    }

    pub fn as_micros(&self) -> i64 {
        self.0.timestamp_micros()
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// ISO 8601 with six fractional digits and `Z`, the form the original's JSON uses.
    ///
    /// Written digit by digit: every user document carries two of these, and chrono's
    /// `format` parses its pattern again on each call (a third of a registration's own work
    /// in serializing). Years outside 0–9999 keep chrono's spelling (`+10000`, `-0001`).
    pub fn to_iso8601(&self) -> String {
        use chrono::{Datelike, Timelike};
        let at = &self.0;
        let year = at.year();
        if !(0..=9999).contains(&year) {
            return at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        }
        fn put(out: &mut [u8], mut value: u32) {
            for byte in out.iter_mut().rev() {
                *byte = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        put(&mut text[0..4], year as u32);
        put(&mut text[5..7], at.month());
        put(&mut text[8..10], at.day());
        put(&mut text[11..13], at.hour());
        put(&mut text[14..16], at.minute());
        put(&mut text[17..19], at.second());
        // As `%.6f`: the nanoseconds truncated to microseconds.
        put(&mut text[20..26], at.nanosecond() / 1_000);
        String::from_utf8(text.to_vec()).expect("ASCII digits")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub nickname: Option<Nickname>,
    pub stamps_collected: StampCount,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What an update changes; a field left `None` keeps its stored value, whatever another
/// concurrent update does to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserChanges {
    /// `Some(None)` clears the nickname.
    pub nickname: Option<Option<Nickname>>,
    pub stamps_collected: Option<StampCount>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        self.nickname.is_none() && self.stamps_collected.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderboardEntry {
    pub nickname: Nickname,
    pub stamps_collected: StampCount,
    /// 1 for the best; ties are ranked by who reached the count first.
    pub rank: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_parse_uuids_only() {
        let id: UserId = "681adb8b-be3d-4fca-8858-2827609d9b22".parse().unwrap();
        assert_eq!(id.to_string(), "681adb8b-be3d-4fca-8858-2827609d9b22");
        assert!("681adb8b".parse::<UserId>().is_err());
        assert!("not-a-uuid".parse::<UserId>().is_err());
        assert!("".parse::<UserId>().is_err());
    }

    #[test]
    fn stamp_counts_are_never_negative() {
        assert_eq!(StampCount::new(0).map(|s| s.get()), Some(0));
        assert_eq!(StampCount::new(7).map(|s| s.get()), Some(7));
        assert_eq!(StampCount::new(-1), None);
        assert_eq!(StampCount::from_stored(None).get(), 0);
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let at = Timestamp::from_micros(1_700_000_000_123_456);
        assert_eq!(at.to_iso8601(), "2023-11-14T22:13:20.123456Z");
        assert_eq!(at.as_micros(), 1_700_000_000_123_456);
        assert_eq!(Timestamp::from_micros(0).to_iso8601(), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn iso8601_is_chronos_spelling() {
        let chrono = |t: Timestamp| t.as_datetime().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        for micros in [
            0,
            1,
            999_999,
            -1,
            1_700_000_000_123_456,
            951_782_400_000_001,     // 2000-02-29
            -62_167_219_200_000_000, // 0000-01-01
            -62_167_219_200_000_001, // the year -1
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999
            253_402_300_800_000_000, // 10000-01-01
        ] {
            let t = Timestamp::from_micros(micros);
            assert_eq!(t.to_iso8601(), chrono(t), "{micros}");
        }
    }
}
