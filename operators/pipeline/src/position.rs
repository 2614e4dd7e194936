//! Where a node of the definition is in its YAML text, found by its path
//! (`rules[1].when.conditions[0].op`).
//!
//! serde_norway keeps no positions in what it deserializes, but it attaches the position of
//! the node being read to every error. So the text is read once more, walking down the path
//! and ignoring everything else, and the node at the end of the path refuses itself: the
//! position of that error is the node's. This runs only to report a problem.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Line and column (1-based) where the node at `path` starts in `source`, if the path leads
/// to a node: map keys separated by `.`, list indexes in brackets.
pub(crate) fn locate_path(source: &str, path: &str) -> Option<(usize, usize)> {
    let segments = parse_path(path)?;
    let deserializer = serde_norway::Deserializer::from_str(source);
    let error = Probe(&segments).deserialize(deserializer).err()?;
    if !error.to_string().contains(FOUND) {
        return None;
    }
    error.location().map(|l| (l.line(), l.column()))
}

/// Said by the node at the end of the path, so its error tells from any other.
const FOUND: &str = "the node named by the path";

#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn parse_path(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if key.is_empty() {
            return None;
        }
        segments.push(Segment::Key(key));
        while let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            segments.push(Segment::Index(inner[..end].parse().ok()?));
            rest = &inner[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(segments)
}

/// Walks down the remaining segments.
struct Probe<'p, 'a>(&'p [Segment<'a>]);

impl<'de> DeserializeSeed<'de> for Probe<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.0.first() {
            None => deserializer.deserialize_any(Target),
            Some(Segment::Key(_)) => deserializer.deserialize_map(self),
            Some(Segment::Index(_)) => deserializer.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Probe<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map or a list on the path")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some(Segment::Key(want)) = self.0.first() else {
            return Ok(());
        };
        while let Some(key) = map.next_key::<String>()? {
            if key == *want {
                return map.next_value_seed(Probe(&self.0[1..]));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(Segment::Index(want)) = self.0.first() else {
            return Ok(());
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe(&self.0[1..]))?;
        Ok(())
    }
}

/// The node at the end of the path: whatever it is, it is "unexpected", and the error
/// carries its position.
struct Target;

impl Visitor<'_> for Target {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(FOUND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "name: p
rules:
  - name: a
    when: x > 1
  - name: b
    when:
      type: all
      conditions:
        - { type: field_compare, field: x, op: '>>', value: 1 }
        - type: not
          condition: {type: is_null, field: y}
";

    #[test]
    fn finds_the_node_a_path_names() {
        assert_eq!(locate_path(YAML, "name"), Some((1, 7)));
        assert_eq!(locate_path(YAML, "rules[0].when"), Some((4, 11)));
        assert_eq!(locate_path(YAML, "rules[1].when"), Some((7, 7)));
        assert_eq!(
            locate_path(YAML, "rules[1].when.conditions[0].op"),
            Some((9, 48))
        );
        assert_eq!(
            locate_path(YAML, "rules[1].when.conditions[1].condition.field"),
            Some((11, 45))
        );
    }

    #[test]
    fn a_path_that_leads_nowhere_has_no_position() {
        assert_eq!(locate_path(YAML, "rules[2].when"), None);
        assert_eq!(locate_path(YAML, "rules[0].when.op"), None);
        assert_eq!(locate_path(YAML, "schema.x"), None);
        assert_eq!(locate_path(YAML, ""), None);
        assert_eq!(locate_path(YAML, "rules[x]"), None);
        assert_eq!(locate_path("", "name"), None);
        assert_eq!(locate_path("[1, 2", "name"), None);
    }
}
