//! The syntax tree, its precedence-climbing (Pratt) parser and its canonical printer.
//!
//! Each binary operator has a precedence; `expr(min)` parses operands and keeps folding
//! operators of precedence `>= min` into the left-hand side. An inline aggregate
//! (`sum(x) over 1d`) is a call followed by the lexer's `over <window>` token.

use std::fmt;

use super::lexer::{tokenize, Tok, Token, KEYWORDS};
use super::ExprError;

/// Deeper trees are rejected so that parsing, checking and evaluation, which recurse,
/// can never exhaust the stack. Real conditions are a handful of levels deep.
pub(crate) const MAX_DEPTH: usize = 100;

// Precedences, lowest first. `Ast::precedence` and the parser share them, so the
// printer puts parentheses exactly where the parser needs them.
const P_OR: u8 = 1;
const P_AND: u8 = 2;
const P_NOT: u8 = 3;
const P_CMP: u8 = 4;
const P_ADD: u8 = 5;
const P_MUL: u8 = 6;
const P_NEG: u8 = 7;
const P_PRIMARY: u8 = 8;

/// A node of the syntax tree and the column (1-based, in chars) it is reported at:
/// its operator for operators, its first char otherwise.
///
/// Equality ignores columns, so a tree equals the re-parse of its printout.
#[derive(Clone, Debug)]
pub struct Ast {
    pub kind: AstKind,
    pub column: usize,
    depth: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AstKind {
    Literal(Literal),
    Field(String),
    Call {
        name: String,
        args: Vec<Ast>,
    },
    /// An aggregate over a window, written inline: `sum(amount) over 1d`. `call` is the
    /// aggregate's call, `window` the window as written and `text` the whole as written,
    /// which is how it is printed and how a scope names the value computed for it (see
    /// [`super::Scope::computed`]).
    Aggregate {
        call: Box<Ast>,
        window: String,
        text: String,
    },
    Unary {
        op: UnaryOp,
        operand: Box<Ast>,
    },
    Binary {
        op: BinaryOp,
        left: Box<Ast>,
        right: Box<Ast>,
    },
    /// `operand in [list]`, or `operand not in [list]` when `negated`.
    In {
        operand: Box<Ast>,
        list: Vec<Ast>,
        negated: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    /// Negative when the source had a `-` right before the number.
    Int(i64),
    /// Always finite.
    Float(f64),
    Str(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Not,
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinaryOp {
    /// The canonical spelling.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "or",
            BinaryOp::And => "and",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }

    fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => P_OR,
            BinaryOp::And => P_AND,
            BinaryOp::Add | BinaryOp::Sub => P_ADD,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => P_MUL,
            _ => P_CMP,
        }
    }
}

impl PartialEq for Ast {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl Ast {
    /// A node; its depth is derived from its children's.
    pub fn new(kind: AstKind, column: usize) -> Ast {
        let child_depth = match &kind {
            AstKind::Literal(_) | AstKind::Field(_) => 0,
            AstKind::Call { args, .. } => args.iter().map(|a| a.depth).max().unwrap_or(0),
            AstKind::Aggregate { call, .. } => call.depth,
            AstKind::Unary { operand, .. } => operand.depth,
            AstKind::Binary { left, right, .. } => left.depth.max(right.depth),
            AstKind::In { operand, list, .. } => list
                .iter()
                .map(|a| a.depth)
                .max()
                .unwrap_or(0)
                .max(operand.depth),
        };
        Ast {
            kind,
            column,
            depth: child_depth + 1,
        }
    }

    /// Nodes on the longest path from this node to a leaf, this node included.
    pub fn depth(&self) -> usize {
        self.depth
    }

    fn precedence(&self) -> u8 {
        match &self.kind {
            AstKind::Literal(Literal::Int(i)) if *i < 0 => P_NEG,
            AstKind::Literal(Literal::Float(x)) if x.is_sign_negative() => P_NEG,
            AstKind::Literal(_)
            | AstKind::Field(_)
            | AstKind::Call { .. }
            | AstKind::Aggregate { .. } => P_PRIMARY,
            AstKind::Unary {
                op: UnaryOp::Not, ..
            } => P_NOT,
            AstKind::Unary {
                op: UnaryOp::Neg, ..
            } => P_NEG,
            AstKind::Binary { op, .. } => op.precedence(),
            AstKind::In { .. } => P_CMP,
        }
    }
}

/// Parses an expression into its syntax tree, without resolving names or types.
pub fn parse(source: &str) -> Result<Ast, ExprError> {
    let tokens = tokenize(source)?;
    let eof = Token {
        tok: Tok::Eof,
        column: source.chars().count() + 1,
    };
    let mut parser = Parser {
        tokens,
        chars: source.chars().collect(),
        pos: 0,
        eof,
        nesting: 0,
    };
    let ast = parser.expr(P_OR)?;
    let next = parser.peek();
    if next.tok != Tok::Eof {
        let hint = match next.tok {
            Tok::Ident(_) | Tok::QuotedIdent(_) | Tok::Int(_) | Tok::Float(_) | Tok::Str(_) => {
                " (is an operator missing?)"
            }
            _ => "",
        };
        return Err(ExprError::new(
            next.column,
            format!(
                "expected an operator or the end of the expression, found {}{hint}",
                next.tok
            ),
        ));
    }
    Ok(ast)
}

struct Parser {
    tokens: Vec<Token>,
    /// The source, for the text of inline aggregates as written.
    chars: Vec<char>,
    pos: usize,
    /// Returned by `peek` past the end, so lookahead never indexes out of bounds.
    eof: Token,
    /// Current recursion depth of `expr`, bounded by `MAX_DEPTH`.
    nesting: usize,
}

/// An operator that continues an expression after an operand.
enum Infix {
    Binary(BinaryOp),
    In { negated: bool },
}

impl Parser {
    fn peek(&self) -> &Token {
        self.tokens.get(self.pos).unwrap_or(&self.eof)
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        &self.tokens.get(self.pos + ahead).unwrap_or(&self.eof).tok
    }

    fn bump(&mut self) -> Token {
        let token = self.peek().clone();
        self.pos += 1;
        token
    }

    fn node(&self, kind: AstKind, column: usize) -> Result<Ast, ExprError> {
        let ast = Ast::new(kind, column);
        if ast.depth > MAX_DEPTH {
            return Err(too_deep(column));
        }
        Ok(ast)
    }

    /// Consumes the expected token or reports what was found instead.
    fn expect(&mut self, tok: Tok, context: impl FnOnce() -> String) -> Result<(), ExprError> {
        let next = self.peek();
        if next.tok == tok {
            self.pos += 1;
            Ok(())
        } else {
            Err(ExprError::new(
                next.column,
                format!("expected {tok} {}, found {}", context(), next.tok),
            ))
        }
    }

    /// Parses an expression whose operators all have precedence `>= min`.
    fn expr(&mut self, min: u8) -> Result<Ast, ExprError> {
        self.nesting += 1;
        let result = if self.nesting > MAX_DEPTH {
            Err(too_deep(self.peek().column))
        } else {
            self.expr_inner(min)
        };
        self.nesting -= 1;
        result
    }

    fn expr_inner(&mut self, min: u8) -> Result<Ast, ExprError> {
        let mut left = self.prefix(min)?;
        // The comparison just folded into `left`, to reject `a < b < c`.
        let mut last_comparison: Option<&'static str> = None;
        while let Some((infix, width)) = self.infix() {
            let precedence = match &infix {
                Infix::Binary(op) => op.precedence(),
                Infix::In { .. } => P_CMP,
            };
            if precedence < min {
                break;
            }
            let op_token = self.peek().clone();
            let symbol = match &infix {
                Infix::Binary(op) => op.symbol(),
                Infix::In { negated: true } => "not in",
                Infix::In { negated: false } => "in",
            };
            if precedence == P_CMP {
                if let Some(previous) = last_comparison {
                    return Err(ExprError::new(
                        op_token.column,
                        format!(
                            "comparisons cannot be chained (`{symbol}` after `{previous}`); \
                             combine them with `and`, e.g. `a < b and b < c`"
                        ),
                    ));
                }
            }
            self.pos += width;
            left = match infix {
                Infix::Binary(op) => {
                    let right = self.expr(precedence + 1)?;
                    self.node(
                        AstKind::Binary {
                            op,
                            left: Box::new(left),
                            right: Box::new(right),
                        },
                        op_token.column,
                    )?
                }
                Infix::In { negated } => {
                    let list = self.in_list(symbol)?;
                    self.node(
                        AstKind::In {
                            operand: Box::new(left),
                            list,
                            negated,
                        },
                        op_token.column,
                    )?
                }
            };
            last_comparison = (precedence == P_CMP).then_some(symbol);
        }
        Ok(left)
    }

    /// The infix operator at the current token, if any, and how many tokens it spans.
    fn infix(&self) -> Option<(Infix, usize)> {
        let op = match self.peek().tok {
            Tok::Or => BinaryOp::Or,
            Tok::And => BinaryOp::And,
            Tok::Eq => BinaryOp::Eq,
            Tok::Ne => BinaryOp::Ne,
            Tok::Lt => BinaryOp::Lt,
            Tok::Le => BinaryOp::Le,
            Tok::Gt => BinaryOp::Gt,
            Tok::Ge => BinaryOp::Ge,
            Tok::Plus => BinaryOp::Add,
            Tok::Minus => BinaryOp::Sub,
            Tok::Star => BinaryOp::Mul,
            Tok::Slash => BinaryOp::Div,
            Tok::Percent => BinaryOp::Mod,
            Tok::In => return Some((Infix::In { negated: false }, 1)),
            Tok::Not if *self.peek_at(1) == Tok::In => {
                return Some((Infix::In { negated: true }, 2))
            }
            _ => return None,
        };
        Some((Infix::Binary(op), 1))
    }

    /// `[a, b, ...]` after `in`; a trailing comma is allowed.
    fn in_list(&mut self, symbol: &str) -> Result<Vec<Ast>, ExprError> {
        let next = self.peek();
        if next.tok != Tok::LBracket {
            return Err(ExprError::new(
                next.column,
                format!(
                    "expected `[` after `{symbol}`, found {} (write e.g. `x {symbol} ['a', 'b']`)",
                    next.tok
                ),
            ));
        }
        let open = self.bump().column;
        let mut list = Vec::new();
        loop {
            if self.peek().tok == Tok::RBracket {
                self.pos += 1;
                return Ok(list);
            }
            list.push(self.expr(P_OR)?);
            let next = self.peek();
            match next.tok {
                Tok::Comma => self.pos += 1,
                Tok::RBracket => {}
                _ => {
                    return Err(ExprError::new(
                        next.column,
                        format!(
                            "expected `,` or `]` in the list opened at column {open}, found {}",
                            next.tok
                        ),
                    ))
                }
            }
        }
    }

    /// An operand: a literal, field, call, parenthesised expression or prefix operator.
    fn prefix(&mut self, min: u8) -> Result<Ast, ExprError> {
        let token = self.bump();
        let column = token.column;
        let kind = match token.tok {
            Tok::Int(n) => AstKind::Literal(Literal::Int(int_literal(n, false, column)?)),
            Tok::Float(x) => AstKind::Literal(Literal::Float(x)),
            Tok::Str(s) => AstKind::Literal(Literal::Str(s)),
            Tok::True => AstKind::Literal(Literal::Bool(true)),
            Tok::False => AstKind::Literal(Literal::Bool(false)),
            Tok::Null => AstKind::Literal(Literal::Null),
            Tok::Ident(name) if self.peek().tok == Tok::LParen => {
                self.pos += 1;
                let args = self.call_args(&name)?;
                let call = AstKind::Call { name, args };
                match self.peek().tok.clone() {
                    Tok::Over { window, end } => {
                        self.pos += 1;
                        AstKind::Aggregate {
                            call: Box::new(self.node(call, column)?),
                            window,
                            text: self.chars[column - 1..end].iter().collect(),
                        }
                    }
                    _ => call,
                }
            }
            Tok::Ident(name) | Tok::QuotedIdent(name) => AstKind::Field(name),
            Tok::LParen => {
                let inner = self.expr(P_OR)?;
                self.expect(Tok::RParen, || {
                    format!("to close the `(` at column {column}")
                })?;
                return Ok(inner);
            }
            Tok::Minus => match self.peek().tok {
                // `-5` is a literal, not a negation: that is how `-9223372036854775808`
                // is written, and it keeps printed negative literals stable.
                Tok::Int(n) => {
                    self.pos += 1;
                    AstKind::Literal(Literal::Int(int_literal(n, true, column)?))
                }
                Tok::Float(x) => {
                    self.pos += 1;
                    AstKind::Literal(Literal::Float(-x))
                }
                _ => AstKind::Unary {
                    op: UnaryOp::Neg,
                    operand: Box::new(self.expr(P_NEG)?),
                },
            },
            Tok::Not => {
                // `not` binds more loosely than the operator it would be an operand of
                // (as in `a == not b`); like Python, ask for parentheses, not a guess.
                if min > P_NOT {
                    return Err(ExprError::new(
                        column,
                        "`not` cannot be used here without parentheses; write `(not …)`",
                    ));
                }
                AstKind::Unary {
                    op: UnaryOp::Not,
                    operand: Box::new(self.expr(P_NOT)?),
                }
            }
            other => {
                return Err(ExprError::new(
                    column,
                    format!("expected an expression, found {other}"),
                ))
            }
        };
        self.node(kind, column)
    }

    /// The arguments after `name(`, through the closing `)`.
    fn call_args(&mut self, name: &str) -> Result<Vec<Ast>, ExprError> {
        let mut args = Vec::new();
        if self.peek().tok == Tok::RParen {
            self.pos += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expr(P_OR)?);
            let next = self.bump();
            match next.tok {
                Tok::Comma => {}
                Tok::RParen => return Ok(args),
                other => {
                    return Err(ExprError::new(
                        next.column,
                        format!("expected `,` or `)` in the arguments of `{name}`, found {other}"),
                    ))
                }
            }
        }
    }
}

fn too_deep(column: usize) -> ExprError {
    ExprError::new(
        column,
        format!("expression is nested too deeply (more than {MAX_DEPTH} levels)"),
    )
}

/// An integer literal, negated if a `-` preceded it.
fn int_literal(n: u64, negative: bool, column: usize) -> Result<i64, ExprError> {
    let value = if negative {
        0i64.checked_sub_unsigned(n)
    } else {
        i64::try_from(n).ok()
    };
    value.ok_or_else(|| {
        let message = if negative {
            format!("integer -{n} is too small (the smallest is {})", i64::MIN)
        } else {
            format!("integer {n} is too large (the largest is {})", i64::MAX)
        };
        ExprError::new(column, message)
    })
}

/// A string literal in canonical form: single quotes, with escapes.
pub(crate) fn quote_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A field name as written in source: bare when it lexes as a plain identifier,
/// otherwise in backticks (doubling any backtick inside).
pub(crate) fn quote_ident(name: &str) -> String {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !KEYWORDS.contains(&name.to_ascii_lowercase().as_str());
    if plain {
        name.to_string()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            // `{:?}` keeps a `.0` or exponent, so the float re-lexes as a float, exactly.
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::Str(s) => f.write_str(&quote_str(s)),
        }
    }
}

/// Writes `ast`, in parentheses if it binds more loosely than `min` requires.
fn write_operand(f: &mut fmt::Formatter<'_>, ast: &Ast, min: u8) -> fmt::Result {
    if ast.precedence() < min {
        write!(f, "({ast})")
    } else {
        write!(f, "{ast}")
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, items: &[Ast]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl fmt::Display for Ast {
    /// Canonical source: lowercase keywords, `==`/`!=`, single-quoted strings and
    /// parentheses only where precedence needs them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            AstKind::Literal(lit) => write!(f, "{lit}"),
            AstKind::Field(name) => f.write_str(&quote_ident(name)),
            AstKind::Call { name, args } => {
                write!(f, "{name}(")?;
                write_list(f, args)?;
                f.write_str(")")
            }
            AstKind::Aggregate { text, .. } => f.write_str(text),
            AstKind::Unary {
                op: UnaryOp::Not,
                operand,
            } => {
                f.write_str("not ")?;
                write_operand(f, operand, P_NOT)
            }
            AstKind::Unary {
                op: UnaryOp::Neg,
                operand,
            } => match operand.kind {
                // `-5` would re-parse as the literal -5, so negating a literal needs `-(5)`.
                AstKind::Literal(Literal::Int(_) | Literal::Float(_)) => {
                    write!(f, "-({operand})")
                }
                _ => {
                    f.write_str("-")?;
                    write_operand(f, operand, P_NEG)
                }
            },
            AstKind::Binary { op, left, right } => {
                let precedence = op.precedence();
                // Comparisons do not chain, so both sides must bind tighter.
                let left_min = if op.is_comparison() {
                    precedence + 1
                } else {
                    precedence
                };
                write_operand(f, left, left_min)?;
                write!(f, " {} ", op.symbol())?;
                write_operand(f, right, precedence + 1)
            }
            AstKind::In {
                operand,
                list,
                negated,
            } => {
                write_operand(f, operand, P_CMP + 1)?;
                f.write_str(if *negated { " not in [" } else { " in [" })?;
                write_list(f, list)?;
                f.write_str("]")
            }
        }
    }
}
