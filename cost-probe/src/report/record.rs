//! One NDJSON line, read in place: borrowed strings, unknown fields skipped, no allocation for a
//! record whose strings have no escapes. The shape is `output::records`' (README "Records").
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::alerts::days_from_civil;

/// The fields of any record that the report reads; the rest of the line is skipped.
#[derive(Deserialize, Debug, Default)]
pub struct Line<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub start: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub end: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub time: Option<Cow<'a, str>>,
    pub duration_ms: Option<f64>,
    #[serde(borrow)]
    pub comm: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub http: Option<Http<'a>>,
    pub bytes: Option<Bytes>,
    #[serde(default, deserialize_with = "hex")]
    pub request_hash: Option<u64>,
    pub first_chunk_ms: Option<f64>,
    #[serde(borrow)]
    pub model: Option<Cow<'a, str>>,
    pub tokens: Option<Tokens>,
    /// A request's `{gpu, cpu, dram, total}`; an interval's per-domain map is not read.
    pub energy_j: Option<Energy>,
    pub cost_usd: Option<Cost>,
    pub co2_g: Option<f64>,
    /// Kept as raw JSON text: only a `--by` on a tag key opens it.
    #[serde(borrow, default, deserialize_with = "raw")]
    pub tags: Option<&'a str>,
    /// Kept as raw JSON text: only `partial` is looked for.
    #[serde(borrow, default, deserialize_with = "raw")]
    pub flags: Option<&'a str>,
    // interval
    pub attributed_j: Option<f64>,
    pub idle_j: Option<f64>,
    pub other_j: Option<f64>,
    // lost
    pub events: Option<u64>,
}

fn hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<Cow<'de, str>>::deserialize(d)?
        .map(|s| {
            parse_hash(&s)
                .ok_or_else(|| serde::de::Error::custom("request_hash: not 16 hex digits"))
        })
        .transpose()
}

/// A `request_hash`: exactly 16 hex digits.
#[must_use]
pub fn parse_hash(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|c| c.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

fn raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de str>, D::Error> {
    Ok(Option::<&'de RawValue>::deserialize(d)?.map(RawValue::get))
}

#[derive(Deserialize, Debug)]
pub struct Http<'a> {
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    pub status: Option<u16>,
}

#[derive(Deserialize, Debug, Clone, Copy)]
pub struct Bytes {
    pub out: u64,
}

#[derive(Deserialize, Debug, Clone, Copy)]
pub struct Tokens {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
}

impl Tokens {
    #[must_use]
    pub fn total(self) -> u64 {
        self.prompt.unwrap_or(0) + self.completion.unwrap_or(0)
    }
}

#[derive(Deserialize, Debug, Clone, Copy)]
pub struct Energy {
    pub total: f64,
}

#[derive(Deserialize, Debug, Clone, Copy)]
pub struct Cost {
    pub total: f64,
    /// Absent in records from before egress was priced.
    #[serde(default)]
    pub egress: Option<f64>,
}

/// Nanoseconds since the Unix epoch of an RFC 3339 UTC stamp as the records write it
/// (`2026-12-01T21:32:13.540535177Z`, any number of fraction digits). The common shape is parsed
/// by hand, as it is on every line; anything else goes through humantime.
#[must_use]
pub fn unix_nanos(stamp: &str) -> Option<i64> {
    let s = stamp;
    let b = s.as_bytes();
    let fast = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && *b.last()? == b'Z';
    if !fast {
        return slow(s);
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut n = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + i64::from(c - b'0');
        }
        Some(n)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut frac = 0i64;
    let rest = &b[19..b.len() - 1];
    if !rest.is_empty() {
        if rest[0] != b'.' || rest.len() < 2 {
            return slow(s);
        }
        let digits = &rest[1..];
        for (i, &c) in digits.iter().enumerate() {
            if !c.is_ascii_digit() {
                return None;
            }
            if i < 9 {
                frac = frac * 10 + i64::from(c - b'0');
            }
        }
        for _ in digits.len()..9 {
            frac *= 10;
        }
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + min) * 60_000_000_000 + sec * 1_000_000_000 + frac)
}

fn slow(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_match_humantime() {
        for s in [
            "2026-12-01T21:32:13.540535177Z",
            "1970-01-01T00:00:00Z",
            "2024-02-29T23:59:59.5Z",
            "2000-03-01T00:00:00.000001Z",
        ] {
            assert_eq!(unix_nanos(s), slow(s), "{s}");
        }
        assert_eq!(unix_nanos("1970-01-01T00:00:01.25Z"), Some(1_250_000_000));
        assert_eq!(unix_nanos("2026-13-01T00:00:00Z"), None);
        assert_eq!(unix_nanos("yesterday"), None);
    }

    #[test]
    fn tags_are_read_in_place() {
        let l: Line = serde_json::from_str(
            r#"{"v":1,"type":"request","tags":{"team":"a\"b","endpoint":"chat"},"x":[1,{"y":2}]}"#,
        )
        .unwrap();
        assert_eq!(l.tags, Some(r#"{"team":"a\"b","endpoint":"chat"}"#));
        assert_eq!(l.flags, None);
    }
}
