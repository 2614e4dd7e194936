//! The names a rule or message can use: the schema's fields, then the pipeline's aggregates,
//! then its detectors' scores. Rows that reach the rules stage are laid out the same way:
//! `data`, `enrichment`, then one score per detector.

use std::collections::HashMap;

use super::schema::Schema;
use super::NamedAggregate;
use anom_lang::expr::{FieldInfo, Scope};
use anom_lang::value::ValueType;

#[derive(Debug, Clone)]
pub struct RowScope {
    names: Vec<String>,
    /// What people see: the name, or an inline aggregate's text.
    display: Vec<String>,
    types: Vec<ValueType>,
    allowed: Vec<Option<Vec<String>>>,
    by_name: HashMap<String, usize>,
}

impl RowScope {
    pub fn new(schema: &Schema, aggregates: &[NamedAggregate]) -> RowScope {
        let mut scope = RowScope {
            names: Vec::new(),
            display: Vec::new(),
            types: Vec::new(),
            allowed: Vec::new(),
            by_name: HashMap::new(),
        };
        for f in schema.fields() {
            scope.push(&f.name, &f.name, f.ty.value_type(), f.allowed.clone());
        }
        for a in aggregates {
            scope.push(&a.name, a.display(), a.aggregate.result_type(), None);
        }
        scope
    }

    /// Appends the detectors' scores (floats, null while a detector warms up).
    pub fn with_detectors(mut self, detectors: &[super::DetectorSpec]) -> RowScope {
        for d in detectors {
            self.push(&d.name, &d.name, ValueType::Float, None);
        }
        self
    }

    fn push(&mut self, name: &str, display: &str, ty: ValueType, allowed: Option<Vec<String>>) {
        self.by_name.insert(name.to_string(), self.names.len());
        self.names.push(name.to_string());
        self.display.push(display.to_string());
        self.types.push(ty);
        self.allowed.push(allowed);
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The name people see at `index` (an inline aggregate shows as written).
    pub fn name(&self, index: usize) -> Option<&str> {
        self.display.get(index).map(String::as_str)
    }

    /// Display names in row order.
    pub fn display_names(&self) -> impl Iterator<Item = &str> {
        self.display.iter().map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Restores the types MessagePack does not carry (a timestamp travels as an int), for a
    /// row laid out as this scope: fields, then aggregates.
    pub fn retype(&self, row: &mut [anom_lang::value::Value]) {
        use anom_lang::value::Value;
        for (value, ty) in row.iter_mut().zip(&self.types) {
            match (ty, &*value) {
                (ValueType::Timestamp, Value::Int(i)) => *value = Value::Timestamp(*i),
                (ValueType::Float, Value::Int(i)) => *value = Value::Float(*i as f64),
                _ => {}
            }
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Scope for RowScope {
    fn field(&self, name: &str) -> Option<FieldInfo<'_>> {
        let index = self.index_of(name)?;
        Some(FieldInfo {
            index,
            ty: self.types[index],
            allowed: self.allowed[index].as_deref(),
        })
    }

    fn field_names(&self) -> Vec<&str> {
        // Hidden ones (named by their text) are not suggested as fields.
        self.names().filter(|n| is_identifier(n)).collect()
    }

    /// Inline aggregates and UDF calls are in the row under the text that asks for them.
    fn computed(&self, text: &str) -> Option<FieldInfo<'_>> {
        self.field(text)
    }
}

fn is_identifier(name: &str) -> bool {
    name.chars().all(|c| c.is_alphanumeric() || c == '_')
}
