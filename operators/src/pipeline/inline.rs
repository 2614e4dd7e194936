//! Aggregates written inline in a rule (`sum(amount) over 1d > 2000`, `prev(country)`).
//!
//! Each one becomes a hidden aggregate of the pipeline, and its text in the condition is
//! replaced by an identifier of exactly the same length naming it, so the expression
//! compiler (which knows nothing of windows) checks it like any field and every error
//! column still points into the text the user wrote.

use std::sync::LazyLock;

use regex::Regex;

static INLINE: LazyLock<Regex> = LazyLock::new(|| {
    let dur = r"(?:\d+(?:ms|s|m|h|d|w))+";
    let window = format!(
        r"(?:(?:tumbling|session)\s+{dur}|calendar\s+(?:day|week|month)(?:\s+tz\s+[A-Za-z0-9_/+\-]+)?|{dur}(?:\s+every\s+{dur})?)"
    );
    Regex::new(&format!(
        r"\b(?:count|sum|avg|min|max|stddev|last|distinct|p50|p90|p99|rate)\(\s*(?:[A-Za-z_][A-Za-z0-9_]*)?\s*\)\s+over\s+{window}|\bprev\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)"
    ))
    .expect("the inline aggregate pattern is valid")
});

/// Whether all of `text` is one inline aggregate, as `extract` would find it.
pub fn is_inline(text: &str) -> bool {
    INLINE
        .find(text)
        .is_some_and(|m| m.range() == (0..text.len()))
}

/// An inline aggregate found in a condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Inline {
    /// The identifier that replaced it.
    pub name: String,
    /// The aggregate as written.
    pub spec: String,
}

/// Rewrites `when`, returning the new text and the aggregates it uses. `taken` says whether
/// an identifier is already in use; `counter` numbers hidden aggregates across rules.
pub fn extract(when: &str, counter: &mut usize, known: &mut Vec<Inline>) -> String {
    let mut out = String::with_capacity(when.len());
    let mut last = 0;
    let quoted = quoted_ranges(when);
    for m in INLINE.find_iter(when) {
        // Text inside a string literal or a quoted field name is not an aggregate.
        if quoted
            .iter()
            .any(|q| q.start < m.end() && m.start() < q.end)
        {
            continue;
        }
        out.push_str(&when[last..m.start()]);
        let spec = m.as_str().to_string();
        let name = match known.iter().find(|i| i.spec == spec) {
            Some(i) => i.name.clone(),
            None => {
                let mut name = format!("_{}_", *counter);
                *counter += 1;
                let width = spec.chars().count();
                while name.chars().count() < width {
                    name.push('_');
                }
                known.push(Inline {
                    name: name.clone(),
                    spec: spec.clone(),
                });
                name
            }
        };
        out.push_str(&name);
        last = m.end();
    }
    out.push_str(&when[last..]);
    out
}

/// Byte ranges of the string literals (`'…'`, `"…"`, with `\` escapes) and quoted field
/// names (`` `…` ``) in `text`, quotes included, as the expression lexer reads them.
pub(super) fn quoted_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut chars = text.char_indices();
    while let Some((start, c)) = chars.next() {
        if !matches!(c, '\'' | '"' | '`') {
            continue;
        }
        let mut end = text.len();
        while let Some((i, d)) = chars.next() {
            if d == '\\' && c != '`' {
                chars.next();
            } else if d == c {
                end = i + 1;
                break;
            }
        }
        ranges.push(start..end);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_inline_aggregates_keeping_columns() {
        let mut n = 0;
        let mut known = Vec::new();
        let when =
            "sum(amount) over 1d > 2000 and prev(country) != country and sum(amount) over 1d < 9";
        let out = extract(when, &mut n, &mut known);
        assert_eq!(out.len(), when.len());
        assert_eq!(known.len(), 2);
        assert_eq!(known[0].spec, "sum(amount) over 1d");
        assert_eq!(known[1].spec, "prev(country)");
        assert!(out.starts_with(&format!("{} > 2000", known[0].name)));
        assert_eq!(out.find(" != country"), when.find(" != country"));
    }

    #[test]
    fn leaves_scalar_functions_and_plain_fields_alone() {
        let mut n = 0;
        let mut known = Vec::new();
        let when = "min(a, b) > 3 and max(x, 1) < overage and count > 1";
        assert_eq!(extract(when, &mut n, &mut known), when);
        assert!(known.is_empty());
        let when =
            "count() over calendar day tz Europe/Berlin > 5 and p99(ms) over 1h every 5m > 100";
        let out = extract(when, &mut n, &mut known);
        assert_eq!(known.len(), 2);
        assert_eq!(known[1].spec, "p99(ms) over 1h every 5m");
        assert!(out.ends_with("> 100"));
    }

    #[test]
    fn leaves_quoted_text_alone() {
        let mut n = 0;
        let mut known = Vec::new();
        let when = r"fileName == 'count() over 5m' and `sum(x) over 1d` > 1 and note != 'it\'s prev(x)' and count() over 5m > 2";
        let out = extract(when, &mut n, &mut known);
        assert_eq!(known.len(), 1);
        assert_eq!(known[0].spec, "count() over 5m");
        assert!(out.starts_with("fileName == 'count() over 5m' and `sum(x) over 1d` > 1 and note != 'it\\'s prev(x)' and _0_"), "{out}");
    }
}
