//! Durations as users write them in pipeline files: `250ms`, `5s`, `20m`, `1h30m`, `30d`, `2w`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parses `<number><unit>` groups (units `ms`, `s`, `m`, `h`, `d`, `w`), e.g. `1h30m`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(
            "expected a duration such as `5s`, `20m` or `1h`, found an empty string".into(),
        );
    }
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "expected a duration such as `5s`, `20m` or `1h`, found `{text}`"
            ));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration `{text}` is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => {
                return Err(format!(
                    "duration `{text}` needs a unit: one of ms, s, m, h, d, w"
                ))
            }
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{text}`: expected one of ms, s, m, h, d, w"
                ))
            }
        };
        total = total
            .checked_add(n.saturating_mul(unit_ms))
            .ok_or_else(|| format!("duration `{text}` is too large"))?;
        rest = &rest[unit_len..];
    }
    let ms = u64::try_from(total).map_err(|_| format!("duration `{text}` is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Serde adapter: `#[serde(with = "crate::duration")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as `5s`, `20m` or `1h`")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

/// Formats a duration the way users write them (`1h30m`, `250ms`).
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_groups() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86400));
        assert_eq!(format(parse("1h30m").unwrap()), "1h30m");
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        assert!(parse("5").unwrap_err().contains("needs a unit"));
        assert!(parse("5x")
            .unwrap_err()
            .contains("unknown duration unit `x`"));
        assert!(parse("s").unwrap_err().contains("expected a duration"));
        assert!(parse("").is_err());
    }
}
