//! Query strings whose parameters may repeat (`?status=firing&status=acknowledged`), read by
//! name, with refusals that name the parameter and say what was expected.

use axum::http::StatusCode;

use super::problem::Problem;

/// A request's query parameters, in order.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

fn bad(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

/// The time a parameter or field `name` gives (RFC 3339 or an age before now), as epoch
/// milliseconds; refused with its name.
pub fn time_ms(name: &str, text: &str) -> Result<i64, Problem> {
    crate::time::parse_time(text, anom_runtime::timebase::wall_ms())
        .map_err(|e| bad(format!("{name}: {e}")))
}

/// As [`time_ms`], for an optional value, as a protobuf timestamp.
pub fn timestamp(
    name: &str,
    text: Option<&str>,
) -> Result<Option<prost_types::Timestamp>, Problem> {
    text.map(|t| time_ms(name, t).map(crate::time::timestamp))
        .transpose()
}

/// A query string as `T` (whose `deny_unknown_fields` refuses a misspelt parameter).
pub fn typed<T: serde::de::DeserializeOwned>(query: Option<&str>) -> Result<T, Problem> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| bad(format!("the query string: {e}")))
}

impl Params {
    pub fn parse(query: Option<&str>) -> Result<Params, Problem> {
        let Some(query) = query else {
            return Ok(Params::default());
        };
        serde_urlencoded::from_str(query)
            .map(Params)
            .map_err(|e| bad(format!("the query string does not parse: {e}")))
    }

    /// Refuses a parameter not in `known` (a misspelt filter would silently match everything).
    pub fn only(&self, known: &[&str]) -> Result<(), Problem> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) => Err(bad(format!(
                "unknown query parameter `{k}`: expected one of {}{}",
                known.join(", "),
                anom_lang::suggest::did_you_mean(k, known.iter().copied())
            ))),
        }
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every value of `name`, comma-separated lists split.
    pub fn listed(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect()
    }

    /// The value of a parameter given at most once.
    pub fn one(&self, name: &str) -> Result<Option<String>, Problem> {
        let mut values = self.all(name);
        match values.len() {
            0 => Ok(None),
            1 => Ok(values.pop()),
            n => Err(bad(format!(
                "`{name}` is given {n} times: expected it at most once"
            ))),
        }
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, Problem> {
        self.one(name)?
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| bad(format!("`{name}`: expected a whole number, found `{v}`")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_repeat_split_and_are_refused_by_name() {
        let q = Params::parse(Some(
            "status=firing&status=acknowledged,resolved&matcher=env%3Dprod&page_size=5&x=1",
        ))
        .unwrap();
        assert_eq!(q.listed("status"), ["firing", "acknowledged", "resolved"]);
        assert_eq!(q.all("matcher"), ["env=prod"]);
        assert_eq!(q.number::<u32>("page_size").unwrap(), Some(5));
        assert!(q.one("status").unwrap_err().detail.contains("2 times"));
        let e = q.only(&["status", "matcher", "page_size"]).unwrap_err();
        assert!(
            e.detail.contains("unknown query parameter `x`"),
            "{}",
            e.detail
        );
        let e = Params::parse(Some("page_size=many"))
            .unwrap()
            .number::<u32>("page_size")
            .unwrap_err();
        assert!(e.detail.contains("found `many`"), "{}", e.detail);
    }
}
