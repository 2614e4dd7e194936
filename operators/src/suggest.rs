//! "Did you mean …?" for names a user mistyped.

/// The closest candidate to `name`, if one is close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if let Some(same) = candidates.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        return Some(same);
    }
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(name, c), *c))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `", did you mean `x`?"` or an empty string.
pub fn did_you_mean(name: &str, candidates: &[&str]) -> String {
    match closest(name, candidates) {
        Some(c) => format!(", did you mean `{c}`?"),
        None => String::new(),
    }
}
