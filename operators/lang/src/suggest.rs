//! "Did you mean …?" for names a user mistyped: fields, functions, enum values, pipelines.

/// The candidate closest to `name`: a case-insensitive match first, else the nearest by edit
/// distance if it is within a third of the name's length.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let candidates: Vec<(&str, String)> = candidates
        .into_iter()
        .map(|c| (c, c.to_lowercase()))
        .collect();
    if let Some((c, _)) = candidates.iter().find(|(_, l)| *l == lower) {
        return Some(c);
    }
    let limit = lower.chars().count() / 3;
    candidates
        .iter()
        .map(|(c, l)| (strsim::damerau_levenshtein(&lower, l), *c))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// `", did you mean `x`?"` or an empty string.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match closest(name, candidates) {
        Some(c) => format!(", did you mean `{c}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_only_close_names() {
        let names = ["durationMs", "route", "status"];
        assert_eq!(closest("durationMS", names), Some("durationMs"));
        assert_eq!(closest("durationM", names), Some("durationMs"));
        assert_eq!(closest("stauts", names), Some("status"));
        assert_eq!(closest("x", names), None);
        assert_eq!(
            did_you_mean("routez", ["routes", "iot"]),
            ", did you mean `routes`?"
        );
    }
}
