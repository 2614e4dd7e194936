//! TEMPORARY stub until the real module lands.
use crate::value::{Value, ValueType};
pub struct FieldInfo<'a> {
    pub index: usize,
    pub ty: ValueType,
    pub allowed: Option<&'a [String]>,
}
pub trait Scope {
    fn field(&self, name: &str) -> Option<FieldInfo<'_>>;
    fn field_names(&self) -> Vec<&str>;
}
#[derive(Debug, Clone, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ExprError {
    pub column: usize,
    pub message: String,
}
#[derive(Debug, Clone)]
pub struct CompiledExpr {
    src: String,
}
impl CompiledExpr {
    pub fn eval(&self, _row: &[Value]) -> Value {
        Value::Null
    }
    pub fn matches(&self, row: &[Value]) -> bool {
        matches!(self.eval(row), Value::Bool(true))
    }
    pub fn result_type(&self) -> ValueType {
        ValueType::Bool
    }
    pub fn fields(&self) -> Vec<usize> {
        vec![]
    }
    pub fn source(&self) -> &str {
        &self.src
    }
}
pub fn compile_predicate(source: &str, _scope: &dyn Scope) -> Result<CompiledExpr, ExprError> {
    Ok(CompiledExpr { src: source.into() })
}
