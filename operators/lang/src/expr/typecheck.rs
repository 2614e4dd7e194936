//! Type checking: resolves fields through the [`Scope`], checks every operator's and
//! function's operand types, and lowers the [`Ast`] into the compiled [`Node`] tree,
//! folding sub-expressions whose inputs are all constants.

use super::eval::{ArithOp, CmpOp, CompiledExpr, InSet, Node, Set};
use super::parser::{Ast, AstKind, BinaryOp, Literal, UnaryOp};
use super::{functions, ExprError, Scope};
use crate::value::{Value, ValueType};

pub(crate) fn compile_ast(
    ast: &Ast,
    source: &str,
    scope: &dyn Scope,
) -> Result<CompiledExpr, ExprError> {
    let mut checker = Checker {
        scope,
        fields: Vec::new(),
    };
    let typed = checker.check(ast)?;
    Ok(CompiledExpr::new(
        typed.node,
        typed.ty,
        checker.fields,
        source,
    ))
}

/// A compiled node with its static type.
pub(crate) struct Typed {
    pub node: Node,
    pub ty: ValueType,
}

pub(crate) struct Checker<'s> {
    pub(crate) scope: &'s dyn Scope,
    /// Field indexes in order of first use, for `CompiledExpr::fields`.
    fields: Vec<usize>,
}

/// Evaluates a node at load time when all its inputs are constants.
pub(crate) fn fold(node: Node, ty: ValueType) -> Typed {
    let node = if node.children_are_const() {
        Node::Const(node.eval(&[]).into_value())
    } else {
        node
    };
    Typed { node, ty }
}

/// An operand as error messages show it: "5000 (int)", "`route` (string)".
pub(crate) fn describe(ast: &Ast, ty: ValueType) -> String {
    let mut text = ast.to_string();
    if text.chars().count() > 40 {
        text = text.chars().take(37).collect::<String>() + "...";
    }
    match &ast.kind {
        AstKind::Literal(Literal::Null) => "null".to_string(),
        AstKind::Field(name) => format!("`{name}` ({ty})"),
        AstKind::Literal(_) => format!("{text} ({ty})"),
        _ => format!("`{text}` ({ty})"),
    }
}

pub(crate) use crate::suggest::closest as suggest;

fn is_null_literal(ast: &Ast) -> bool {
    matches!(ast.kind, AstKind::Literal(Literal::Null))
}

fn null_comparison(ast: &Ast) -> ExprError {
    ExprError::new(
        ast.column,
        "a comparison with `null` is always null and never matches; \
         use is_null(x) or is_present(x) instead",
    )
}

fn literal_value(lit: &Literal) -> (Value, ValueType) {
    match lit {
        Literal::Null => (Value::Null, ValueType::Null),
        Literal::Bool(b) => (Value::Bool(*b), ValueType::Bool),
        Literal::Int(i) => (Value::Int(*i), ValueType::Int),
        Literal::Float(x) => (Value::Float(*x), ValueType::Float),
        Literal::Str(s) => (Value::from(s.as_str()), ValueType::Str),
    }
}

impl Checker<'_> {
    pub(crate) fn check(&mut self, ast: &Ast) -> Result<Typed, ExprError> {
        match &ast.kind {
            AstKind::Literal(lit) => {
                let (value, ty) = literal_value(lit);
                Ok(Typed {
                    node: Node::Const(value),
                    ty,
                })
            }
            AstKind::Field(name) => self.field(name, ast.column),
            AstKind::Call { name, args } => match self.scope.computed(&ast.to_string()) {
                Some(info) => Ok(self.read(info)),
                None => functions::check_call(self, name, args, ast.column),
            },
            AstKind::Aggregate { text, .. } => match self.scope.computed(text) {
                Some(info) => Ok(self.read(info)),
                None => Err(ExprError::new(
                    ast.column,
                    format!("`{text}` is an aggregate, which only a pipeline's rules compute inline; declare it under `aggregates:` to use it here"),
                )),
            },
            AstKind::Unary { op, operand } => self.unary(*op, operand, ast.column),
            AstKind::Binary { op, left, right } => self.binary(*op, left, right, ast.column),
            AstKind::In {
                operand,
                list,
                negated,
            } => self.in_list(operand, list, *negated, ast.column),
        }
    }

    fn field(&mut self, name: &str, column: usize) -> Result<Typed, ExprError> {
        let Some(info) = self.scope.field(name) else {
            let names = self.scope.field_names();
            let message = match suggest(name, names.iter().copied()) {
                Some(close) => format!("unknown field `{name}`, did you mean `{close}`?"),
                None => format!("unknown field `{name}`"),
            };
            return Err(ExprError::new(column, message));
        };
        Ok(self.read(info))
    }

    /// Reads a resolved field (or computed value) from the row.
    fn read(&mut self, info: super::FieldInfo<'_>) -> Typed {
        if !self.fields.contains(&info.index) {
            self.fields.push(info.index);
        }
        Typed {
            node: Node::Field {
                index: info.index,
                ty: info.ty,
            },
            ty: info.ty,
        }
    }

    fn unary(&mut self, op: UnaryOp, operand: &Ast, column: usize) -> Result<Typed, ExprError> {
        let inner = self.check(operand)?;
        let (node, ty) = match (op, inner.ty) {
            (UnaryOp::Not, ValueType::Bool | ValueType::Null) => {
                (Node::Not(Box::new(inner.node)), ValueType::Bool)
            }
            (UnaryOp::Neg, ty @ (ValueType::Int | ValueType::Float | ValueType::Null)) => {
                (Node::Neg(Box::new(inner.node)), ty)
            }
            (UnaryOp::Not, ty) => {
                return Err(ExprError::new(
                    column,
                    format!(
                        "`not` expects a condition (bool), found {}",
                        describe(operand, ty)
                    ),
                ))
            }
            (UnaryOp::Neg, ty) => {
                return Err(ExprError::new(
                    column,
                    format!("`-` expects a number, found {}", describe(operand, ty)),
                ))
            }
        };
        Ok(fold(node, ty))
    }

    fn binary(
        &mut self,
        op: BinaryOp,
        left_ast: &Ast,
        right_ast: &Ast,
        column: usize,
    ) -> Result<Typed, ExprError> {
        if op.is_comparison() {
            // Checked before the operands, as the hint matters more than their errors.
            if let Some(null) = [left_ast, right_ast]
                .into_iter()
                .find(|a| is_null_literal(a))
            {
                return Err(null_comparison(null));
            }
        }
        let left = self.check(left_ast)?;
        let right = self.check(right_ast)?;
        let found = || {
            format!(
                "{} and {}",
                describe(left_ast, left.ty),
                describe(right_ast, right.ty)
            )
        };
        use ValueType::*;
        let (l, r) = (left.ty, right.ty);
        let a = Box::new(left.node);
        let b = Box::new(right.node);
        let (node, ty) = match op {
            BinaryOp::And | BinaryOp::Or => {
                for (side, ast, ty) in [("left", left_ast, l), ("right", right_ast, r)] {
                    if !matches!(ty, Bool | Null) {
                        return Err(ExprError::new(
                            column,
                            format!(
                                "`{}` expects a condition (bool) on its {side}, found {}",
                                op.symbol(),
                                describe(ast, ty)
                            ),
                        ));
                    }
                }
                let node = if op == BinaryOp::And {
                    Node::And(a, b)
                } else {
                    Node::Or(a, b)
                };
                (node, Bool)
            }
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => {
                let equality = matches!(op, BinaryOp::Eq | BinaryOp::Ne);
                let comparable = match (l, r) {
                    (Null, _) | (_, Null) | (Str, Str) | (Timestamp, Timestamp) => true,
                    (Bool, Bool) => equality,
                    _ => l.is_numeric() && r.is_numeric(),
                };
                if !comparable {
                    let detail = if (l, r) == (Bool, Bool) {
                        format!(" with `{}`: bools support only `==` and `!=`", op.symbol())
                    } else {
                        String::new()
                    };
                    return Err(ExprError::new(
                        column,
                        format!(
                            "cannot compare {} with {}{detail}",
                            describe(left_ast, l),
                            describe(right_ast, r)
                        ),
                    ));
                }
                if equality {
                    self.check_enum_value(left_ast, right_ast)?;
                    self.check_enum_value(right_ast, left_ast)?;
                }
                let cmp = match op {
                    BinaryOp::Eq => CmpOp::Eq,
                    BinaryOp::Ne => CmpOp::Ne,
                    BinaryOp::Lt => CmpOp::Lt,
                    BinaryOp::Le => CmpOp::Le,
                    BinaryOp::Gt => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                (Node::Cmp(cmp, a, b), Bool)
            }
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => {
                let (arith, expected) = match op {
                    BinaryOp::Add => (
                        ArithOp::Add,
                        "two numbers, two strings, or a timestamp and an int",
                    ),
                    BinaryOp::Sub => (
                        ArithOp::Sub,
                        "two numbers, two timestamps, or a timestamp and an int",
                    ),
                    BinaryOp::Mul => (ArithOp::Mul, "two numbers"),
                    BinaryOp::Div => (ArithOp::Div, "two numbers"),
                    _ => (ArithOp::Mod, "two ints"),
                };
                let Some(ty) = arith_type(arith, l, r) else {
                    return Err(ExprError::new(
                        column,
                        format!("`{}` expects {expected}, found {}", op.symbol(), found()),
                    ));
                };
                (Node::Arith(arith, a, b), ty)
            }
        };
        Ok(fold(node, ty))
    }

    /// Rejects `status == 'FAILD'` when `status` is an enum field without that value.
    fn check_enum_value(&self, field: &Ast, value: &Ast) -> Result<(), ExprError> {
        let (AstKind::Field(name), AstKind::Literal(Literal::Str(text))) =
            (&field.kind, &value.kind)
        else {
            return Ok(());
        };
        let Some(allowed) = self.scope.field(name).and_then(|info| info.allowed) else {
            return Ok(());
        };
        if allowed.iter().any(|a| a == text) {
            return Ok(());
        }
        let mut message = format!(
            "`{text}` is not an allowed value of `{name}` (one of {})",
            allowed.join(", ")
        );
        if let Some(close) = suggest(text, allowed.iter().map(String::as_str)) {
            message.push_str(&format!("; did you mean `{close}`?"));
        }
        Err(ExprError::new(value.column, message))
    }

    fn in_list(
        &mut self,
        operand_ast: &Ast,
        list: &[Ast],
        negated: bool,
        column: usize,
    ) -> Result<Typed, ExprError> {
        if is_null_literal(operand_ast) {
            return Err(null_comparison(operand_ast));
        }
        let operand = self.check(operand_ast)?;
        if operand.ty == ValueType::Timestamp {
            return Err(ExprError::new(
                column,
                format!(
                    "`in` cannot test timestamps, found {}",
                    describe(operand_ast, operand.ty)
                ),
            ));
        }
        let mut ints = Vec::new();
        let mut floats = Vec::new();
        let mut strs = Vec::new();
        let (mut has_true, mut has_false) = (false, false);
        for item in list {
            let AstKind::Literal(lit) = &item.kind else {
                return Err(ExprError::new(
                    item.column,
                    format!(
                        "the list after `in` may hold only literals, found `{item}`; \
                         compare with `==` and `or` instead"
                    ),
                ));
            };
            let item_ty = literal_value(lit).1;
            let fits = match (operand.ty, lit) {
                (_, Literal::Null) => {
                    return Err(ExprError::new(
                        item.column,
                        "`null` in an `in` list never matches; test with is_null(x) instead",
                    ))
                }
                (ValueType::Int | ValueType::Float | ValueType::Null, Literal::Int(i)) => {
                    ints.push(*i);
                    true
                }
                (ValueType::Int | ValueType::Float | ValueType::Null, Literal::Float(x)) => {
                    floats.push(*x);
                    true
                }
                (ValueType::Str | ValueType::Null, Literal::Str(s)) => {
                    self.check_enum_value(operand_ast, item)?;
                    strs.push(Box::<str>::from(s.as_str()));
                    true
                }
                (ValueType::Bool | ValueType::Null, Literal::Bool(b)) => {
                    if *b {
                        has_true = true;
                    } else {
                        has_false = true;
                    }
                    true
                }
                _ => false,
            };
            if !fits {
                return Err(ExprError::new(
                    item.column,
                    format!(
                        "cannot compare {} with {} in the list after `in`",
                        describe(operand_ast, operand.ty),
                        describe(item, item_ty)
                    ),
                ));
            }
        }
        let set = match operand.ty {
            ValueType::Str => InSet::Str(Set::new(strs)),
            ValueType::Bool => InSet::Bool {
                has_true,
                has_false,
            },
            _ => InSet::Num {
                ints: Set::new(ints),
                floats,
            },
        };
        let node = Node::In {
            operand: Box::new(operand.node),
            set,
            negated,
        };
        Ok(fold(node, ValueType::Bool))
    }
}

/// The result type of an arithmetic operator, or `None` if it does not apply.
/// A `null` operand takes the type that makes the expression valid.
fn arith_type(op: ArithOp, l: ValueType, r: ValueType) -> Option<ValueType> {
    use ValueType::*;
    let numeric = |t: ValueType| t.is_numeric() || t == Null;
    let number = match (l, r) {
        (Null, Null) => Null,
        (Int, Int) | (Int, Null) | (Null, Int) => Int,
        _ => Float,
    };
    match op {
        ArithOp::Add => match (l, r) {
            (Null, t) | (t, Null) if matches!(t, Str | Timestamp) => Some(t),
            (Str, Str) => Some(Str),
            (Timestamp, Int) | (Int, Timestamp) => Some(Timestamp),
            _ if numeric(l) && numeric(r) => Some(number),
            _ => None,
        },
        ArithOp::Sub => match (l, r) {
            (Timestamp, Timestamp) | (Null, Timestamp) => Some(Int),
            (Timestamp, Int) | (Timestamp, Null) => Some(Timestamp),
            _ if numeric(l) && numeric(r) => Some(number),
            _ => None,
        },
        ArithOp::Mul => (numeric(l) && numeric(r)).then_some(number),
        ArithOp::Div => (numeric(l) && numeric(r)).then_some(Float),
        ArithOp::Mod => (matches!(l, Int | Null) && matches!(r, Int | Null)).then_some(Int),
    }
}
