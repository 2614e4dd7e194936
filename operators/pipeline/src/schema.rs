//! A pipeline's compiled schema: typed fields in declaration order, and the checks an event
//! must pass. Events become rows (`Vec<Value>` in schema order) so later stages read fields
//! by index.

use crate::diagnostics::Diagnostics;
use std::collections::HashMap;
use std::sync::Arc;

use anom_lang::expr::{FieldInfo, Scope};
use anom_lang::value::{Value, ValueType};

use super::definition::{FieldDef, TypeName, UnknownFields};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Str,
    Int,
    Float,
    Bool,
    Timestamp,
    /// A string restricted to the field's `values`.
    Enum,
}

impl FieldType {
    pub fn value_type(self) -> ValueType {
        match self {
            FieldType::Str | FieldType::Enum => ValueType::Str,
            FieldType::Int => ValueType::Int,
            FieldType::Float => ValueType::Float,
            FieldType::Bool => ValueType::Bool,
            FieldType::Timestamp => ValueType::Timestamp,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FieldType::Str => "string",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
            FieldType::Enum => "enum",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub required: bool,
    /// `Value::Null` when the field has no default.
    pub default: Value,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub allowed: Option<Vec<String>>,
}

impl Field {
    /// Converts a decoded scalar into this field's type, or says why it cannot.
    pub fn accept(&self, raw: Raw<'_>) -> Result<Value, String> {
        let value = match (self.ty, raw) {
            (_, Raw::Null) => return Ok(Value::Null),
            (FieldType::Str | FieldType::Enum, Raw::Str(s)) => Value::Str(Arc::from(s)),
            (FieldType::Int, Raw::Int(i)) => Value::Int(i),
            (FieldType::Int, Raw::UInt(u)) => match i64::try_from(u) {
                Ok(i) => Value::Int(i),
                Err(_) => return Err(self.mismatch("an int within 64 bits", &raw)),
            },
            (FieldType::Int, Raw::Float(f))
                if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 =>
            {
                Value::Int(f as i64)
            }
            (FieldType::Float, Raw::Int(i)) => Value::Float(i as f64),
            (FieldType::Float, Raw::UInt(u)) => Value::Float(u as f64),
            (FieldType::Float, Raw::Float(f)) if f.is_finite() => Value::Float(f),
            // Not finite (the arm above took the rest).
            (FieldType::Float, Raw::Float(_)) => {
                return Err(self.mismatch("a finite float (not NaN or an infinity)", &raw))
            }
            (FieldType::Bool, Raw::Bool(b)) => Value::Bool(b),
            (FieldType::Timestamp, Raw::Str(s)) => match parse_timestamp(s) {
                Some(ms) => Value::Timestamp(ms),
                None => {
                    return Err(self.mismatch(
                        "an RFC 3339 timestamp (2026-11-21T10:00:00Z) or epoch milliseconds",
                        &raw,
                    ))
                }
            },
            (FieldType::Timestamp, Raw::Int(i)) => Value::Timestamp(i),
            (FieldType::Timestamp, Raw::UInt(u)) => match i64::try_from(u) {
                Ok(i) => Value::Timestamp(i),
                Err(_) => return Err(self.mismatch("epoch milliseconds", &raw)),
            },
            _ => return Err(self.mismatch(self.ty.name(), &raw)),
        };
        self.check_bounds(&value)?;
        Ok(value)
    }

    fn mismatch(&self, expected: &str, found: &Raw<'_>) -> String {
        format!("field `{}`: expected {expected}, found {found}", self.name)
    }

    fn check_bounds(&self, value: &Value) -> Result<(), String> {
        if let Some(x) = value.as_f64() {
            if let Some(min) = self.min {
                if x < min {
                    return Err(format!(
                        "field `{}`: {value} is below the minimum {min}",
                        self.name
                    ));
                }
            }
            if let Some(max) = self.max {
                if x > max {
                    return Err(format!(
                        "field `{}`: {value} is above the maximum {max}",
                        self.name
                    ));
                }
            }
        }
        if let (Some(allowed), Value::Str(s)) = (&self.allowed, value) {
            if !allowed.iter().any(|a| a.as_str() == &**s) {
                return Err(format!(
                    "field `{}`: `{s}` is not one of the allowed values ({})",
                    self.name,
                    allowed.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// A scalar as decoded from JSON or MessagePack, before it is given its field's type.
#[derive(Debug, Clone, Copy)]
pub enum Raw<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    /// A map or array where a scalar was expected.
    Nested(&'static str),
}

impl std::fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Raw::Null => f.write_str("null"),
            Raw::Bool(b) => write!(f, "bool {b}"),
            Raw::Int(i) => write!(f, "int {i}"),
            Raw::UInt(u) => write!(f, "int {u}"),
            Raw::Float(x) => write!(f, "float {x}"),
            Raw::Str(s) if s.len() > 40 => write!(f, "string \"{}…\"", truncate(s, 40)),
            Raw::Str(s) => write!(f, "string \"{s}\""),
            Raw::Nested(kind) => f.write_str(kind),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// RFC 3339 (`2026-11-21T10:00:00Z`, with offset or fraction) to epoch milliseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[derive(Debug, Clone)]
pub struct Schema {
    fields: Vec<Field>,
    by_name: HashMap<String, usize>,
    pub unknown_fields: UnknownFields,
}

impl Schema {
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn field(&self, index: usize) -> Option<&Field> {
        self.fields.get(index)
    }

    /// Appends a field the validate stage computes (`derive:`) rather than reads from events;
    /// returns its index in rows.
    pub fn push_derived(&mut self, name: &str, ty: FieldType) -> usize {
        let index = self.fields.len();
        self.fields.push(Field {
            name: name.to_string(),
            ty,
            required: false,
            default: Value::Null,
            min: None,
            max: None,
            allowed: None,
        });
        self.by_name.insert(name.to_string(), index);
        index
    }

    /// Fills defaults and checks required fields once all of an event's fields are read.
    pub fn finish_row(&self, row: &mut [Value]) -> Result<(), String> {
        for (field, value) in self.fields.iter().zip(row.iter_mut()) {
            if value.is_null() {
                if !field.default.is_null() {
                    *value = field.default.clone();
                } else if field.required {
                    return Err(format!("missing required field `{}`", field.name));
                }
            }
        }
        Ok(())
    }

    /// Restores field types lost in transit: rows travel as untyped MessagePack scalars,
    /// where a timestamp is an int.
    pub fn retype(&self, row: &mut Vec<Value>) {
        row.resize(self.fields.len(), Value::Null);
        for (field, value) in self.fields.iter().zip(row.iter_mut()) {
            match (field.ty, &*value) {
                (FieldType::Timestamp, Value::Int(i)) => *value = Value::Timestamp(*i),
                (FieldType::Float, Value::Int(i)) => *value = Value::Float(*i as f64),
                _ => {}
            }
        }
    }
}

impl Scope for Schema {
    fn field(&self, name: &str) -> Option<FieldInfo<'_>> {
        let index = self.index_of(name)?;
        let f = &self.fields[index];
        Some(FieldInfo {
            index,
            ty: f.ty.value_type(),
            allowed: f.allowed.as_deref(),
        })
    }

    fn field_names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name.as_str()).collect()
    }
}

/// Compiles the `schema:` section; problems are returned as (path, message) pairs.
pub fn compile(
    defs: &[(String, FieldDef)],
    unknown_fields: UnknownFields,
    diags: &mut Diagnostics,
) -> Option<Schema> {
    let reported = diags.count();
    let mut fields = Vec::with_capacity(defs.len());
    if defs.is_empty() {
        diags.report(
            "schema".to_string(),
            "expected at least one field".to_string(),
        );
    }
    for (name, def) in defs {
        let path = format!("schema.{name}");
        if !valid_field_name(name) {
            diags.report(path.clone(),
                format!("`{name}` is not a valid field name: expected letters, digits and `_`, not starting with a digit"));
        }
        let ty = match def.ty {
            TypeName::String => FieldType::Str,
            TypeName::Int => FieldType::Int,
            TypeName::Float => FieldType::Float,
            TypeName::Bool => FieldType::Bool,
            TypeName::Timestamp => FieldType::Timestamp,
            TypeName::Enum => FieldType::Enum,
        };
        if ty == FieldType::Enum && def.values.as_ref().is_none_or(|v| v.is_empty()) {
            diags.report(
                format!("{path}.values"),
                "an enum field needs its allowed `values`, e.g. values: [OK, FAILED]",
            );
        }
        if def.values.is_some() && !matches!(ty, FieldType::Enum | FieldType::Str) {
            diags.report(
                format!("{path}.values"),
                format!(
                    "`values` applies to string and enum fields, not {}",
                    ty.name()
                ),
            );
        }
        if (def.min.is_some() || def.max.is_some())
            && !matches!(ty, FieldType::Int | FieldType::Float)
        {
            diags.report(
                path.clone(),
                format!(
                    "`min`/`max` apply to int and float fields, not {}",
                    ty.name()
                ),
            );
        }
        if let (Some(min), Some(max)) = (def.min, def.max) {
            if min > max {
                diags.report(path.clone(), format!("min {min} is greater than max {max}"));
            }
        }
        let mut field = Field {
            name: name.clone(),
            ty,
            required: def.required,
            default: Value::Null,
            min: def.min,
            max: def.max,
            allowed: def.values.clone(),
        };
        if let Some(default) = &def.default {
            match yaml_scalar(default).and_then(|raw| field.accept(raw)) {
                Ok(v) => field.default = v,
                Err(e) => diags.report(format!("{path}.default"), e),
            }
        }
        fields.push(field);
    }
    if diags.count() > reported {
        return None;
    }
    let by_name = fields
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.clone(), i))
        .collect();
    Some(Schema {
        fields,
        by_name,
        unknown_fields,
    })
}

fn yaml_scalar(v: &serde_norway::Value) -> Result<Raw<'_>, String> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Raw::Null,
        Y::Bool(b) => Raw::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Raw::Int(i)
            } else if let Some(u) = n.as_u64() {
                Raw::UInt(u)
            } else {
                Raw::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Y::String(s) => Raw::Str(s),
        _ => return Err("expected a scalar default value".into()),
    })
}

pub fn valid_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
