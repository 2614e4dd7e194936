//! The one way the compiler's passes report problems: each says where in the definition
//! (`rules[2].when`, `schema.amount.min`) and what was expected, and [`Diagnostics`] locates
//! it in the source — at the text it is about when the pass knows it, else at the node the
//! path names — keeping every problem, in the order found.

use crate::{position, DefinitionError, DefinitionErrors};

/// The problems found so far in one definition.
pub struct Diagnostics<'s> {
    source: &'s str,
    found: Vec<DefinitionError>,
}

impl<'s> Diagnostics<'s> {
    /// Problems in `source` (the YAML text; empty when there is none to point into).
    pub fn new(source: &'s str) -> Diagnostics<'s> {
        Diagnostics {
            source,
            found: Vec::new(),
        }
    }

    /// A problem at `path`, located at the start of the node there.
    pub fn report(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let at = position::locate_path(self.source, &path);
        self.push(path, message.into(), at);
    }

    /// A problem at `column` (1-based, in chars) of `text`, which the source holds: located
    /// there when the source holds it once, else at the node `path` names.
    pub fn report_in(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        text: &str,
        column: usize,
    ) {
        let path = path.into();
        let at = locate(self.source, text)
            .map(|(line, c)| (line, c + column.saturating_sub(1)))
            .or_else(|| position::locate_path(self.source, &path));
        self.push(path, message.into(), at);
    }

    fn push(&mut self, path: String, message: String, at: Option<(usize, usize)>) {
        let (line, column) = at.map_or((None, None), |(l, c)| (Some(l), Some(c)));
        self.found.push(DefinitionError {
            file: None,
            path,
            line,
            column,
            message,
        });
    }

    /// How many problems were reported so far (a pass compares before and after).
    pub fn count(&self) -> usize {
        self.found.len()
    }

    /// Every problem reported, if there was any.
    pub fn finish(self) -> Result<(), DefinitionErrors> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(DefinitionErrors(self.found))
        }
    }
}

/// Line and column (1-based) of `needle` in `source`, when it occurs exactly once.
fn locate(source: &str, needle: &str) -> Option<(usize, usize)> {
    if needle.is_empty() {
        return None;
    }
    let at = source.find(needle)?;
    if source[at + needle.len()..].contains(needle) {
        return None;
    }
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}
