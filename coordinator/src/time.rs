//! Times at the edges (command line, HTTP): RFC 3339 or an age in, protobuf timestamps and
//! RFC 3339 out.

/// A time that is neither RFC 3339 nor an age.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a time as RFC 3339 (2026-11-01T00:00:00Z) or an age (7d, 12h), found `{0}`")]
pub struct TimeError(pub String);

/// RFC 3339, or an age before `now_ms` (`7d`, `90m`), as milliseconds since the epoch.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, TimeError> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    match anom_lang::duration::parse(text) {
        Ok(age) => Ok(now_ms - age.as_millis() as i64),
        Err(_) => Err(TimeError(text.to_string())),
    }
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp as RFC 3339 (UTC); None when unset or out of range.
pub fn rfc3339(t: &Option<prost_types::Timestamp>) -> Option<String> {
    let t = t.as_ref()?;
    jiff::Timestamp::new(t.seconds, t.nanos)
        .ok()
        .map(|t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339_or_as_an_age_and_nothing_else() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("1h", now).unwrap(), now - 3_600_000);
        assert_eq!(
            parse_time("2026-11-01T00:00:00Z", now).unwrap(),
            1_793_491_200_000
        );
        let e = parse_time("yesterday", now).unwrap_err().to_string();
        assert!(e.contains("found `yesterday`"), "{e}");
    }

    #[test]
    fn a_timestamp_prints_as_the_time_it_was_made_from() {
        let ms = 1_793_491_200_123;
        assert_eq!(
            rfc3339(&Some(timestamp(ms))).as_deref(),
            Some("2026-11-01T00:00:00.123Z")
        );
        assert_eq!(rfc3339(&None), None);
        assert_eq!(timestamp(-1).seconds, -1);
        assert_eq!(timestamp(-1).nanos, 999_000_000);
    }
}
