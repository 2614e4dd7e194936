//! Turns source text into tokens, each with the 1-based column (in chars) where it starts.

use std::fmt;

use super::ExprError;

/// The lowercase keywords. Any other casing (`AND`, `Null`) is rejected with a hint,
/// because a rule author who writes `AND` almost always means the operator.
pub(crate) const KEYWORDS: [&str; 7] = ["and", "or", "not", "in", "true", "false", "null"];

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// Unsigned: the parser folds a leading `-` in, which is how `-9223372036854775808` fits.
    Int(u64),
    Float(f64),
    Str(String),
    Ident(String),
    /// A backtick-quoted identifier; never a function name or keyword.
    QuotedIdent(String),
    /// `over <window>` right after a call's `)`: the window as written (`1d`, `1h every 5m`,
    /// `tumbling 1h`, `session 30m`, `calendar day tz Europe/Berlin`), and the index (in
    /// chars) just past it.
    Over {
        window: String,
        end: usize,
    },
    True,
    False,
    Null,
    And,
    Or,
    Not,
    In,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub column: usize,
}

impl fmt::Display for Tok {
    /// How a token is named in "expected …, found …" messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sym = match self {
            Tok::Int(i) => return write!(f, "number {i}"),
            Tok::Float(x) => return write!(f, "number {x:?}"),
            Tok::Str(s) => return write!(f, "string {}", super::parser::quote_str(s)),
            Tok::Ident(s) => return write!(f, "`{s}`"),
            Tok::QuotedIdent(s) => return write!(f, "`{}`", super::parser::quote_ident(s)),
            Tok::Over { window, .. } => return write!(f, "`over {window}`"),
            Tok::Eof => return f.write_str("the end of the expression"),
            Tok::True => "true",
            Tok::False => "false",
            Tok::Null => "null",
            Tok::And => "and",
            Tok::Or => "or",
            Tok::Not => "not",
            Tok::In => "in",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Eq => "==",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
        };
        write!(f, "`{sym}`")
    }
}

/// Lexes the whole source; the last token is always `Eof` at column `chars + 1`.
pub(crate) fn tokenize(source: &str) -> Result<Vec<Token>, ExprError> {
    // Collecting chars makes columns plain indexes; expressions are short.
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let column = i + 1;
        let next = chars.get(i + 1).copied();
        let single = |tok| Ok((tok, 1));
        let double = |tok| Ok((tok, 2));
        let lexed: Result<(Tok, usize), ExprError> = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => single(Tok::LParen),
            ')' => single(Tok::RParen),
            '[' => single(Tok::LBracket),
            ']' => single(Tok::RBracket),
            ',' => single(Tok::Comma),
            '+' => single(Tok::Plus),
            '-' => single(Tok::Minus),
            '*' => single(Tok::Star),
            '/' => single(Tok::Slash),
            '%' => single(Tok::Percent),
            '=' => match next {
                Some('=') => double(Tok::Eq),
                Some('>') => Err(ExprError::new(
                    column,
                    "`=>` is not an operator; did you mean `>=`?",
                )),
                Some('<') => Err(ExprError::new(
                    column,
                    "`=<` is not an operator; did you mean `<=`?",
                )),
                _ => single(Tok::Eq),
            },
            '!' => match next {
                Some('=') => double(Tok::Ne),
                _ => single(Tok::Not),
            },
            '<' => match next {
                Some('=') => double(Tok::Le),
                Some('>') => double(Tok::Ne),
                _ => single(Tok::Lt),
            },
            '>' => match next {
                Some('=') => double(Tok::Ge),
                _ => single(Tok::Gt),
            },
            '&' => match next {
                Some('&') => double(Tok::And),
                _ => Err(ExprError::new(
                    column,
                    "unexpected `&`; did you mean `and` (or `&&`)?",
                )),
            },
            '|' => match next {
                Some('|') => double(Tok::Or),
                _ => Err(ExprError::new(
                    column,
                    "unexpected `|`; did you mean `or` (or `||`)?",
                )),
            },
            '\'' | '"' => lex_string(&chars, i),
            '`' => lex_quoted_ident(&chars, i),
            '.' if next.is_some_and(|n| n.is_ascii_digit()) => Err(ExprError::new(
                column,
                "a number cannot start with `.`; write `0.5` instead of `.5`",
            )),
            c if c.is_ascii_digit() => lex_number(&chars, i),
            c if c.is_ascii_alphabetic() || c == '_' => {
                match over_window(&chars, i, tokens.last()) {
                    Some((window, len)) => Ok((
                        Tok::Over {
                            window,
                            end: i + len,
                        },
                        len,
                    )),
                    None => lex_word(&chars, i),
                }
            }
            c if c.is_alphabetic() => Err(ExprError::new(
                column,
                format!(
                    "unexpected character `{c}`; put field names with unusual characters in backticks"
                ),
            )),
            c => Err(ExprError::new(
                column,
                format!("unexpected character `{}`", c.escape_debug()),
            )),
        };
        let (tok, len) = lexed?;
        tokens.push(Token { tok, column });
        i += len;
    }
    tokens.push(Token {
        tok: Tok::Eof,
        column: chars.len() + 1,
    });
    Ok(tokens)
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `over <window>` at `start`, right after a `)`: the window and the length of the whole.
/// Durations are lexed here, not as numbers, because `1d` is not a number followed by a
/// name; anything that is not a window leaves `over` an identifier (a field may be called
/// that).
fn over_window(chars: &[char], start: usize, previous: Option<&Token>) -> Option<(String, usize)> {
    if previous.is_none_or(|t| t.tok != Tok::RParen) {
        return None;
    }
    let after = literal(chars, start, "over")?;
    let from = spaces(chars, after)?;
    let to = window(chars, from)?;
    Some((chars[from..to].iter().collect(), to - start))
}

/// A window, as a rule writes it: `(tumbling|session) <duration>`,
/// `calendar (day|week|month) [tz <zone>]` or `<duration> [every <duration>]`. Returns the
/// index just past it.
fn window(chars: &[char], at: usize) -> Option<usize> {
    for kind in ["tumbling", "session"] {
        if let Some(after) = literal(chars, at, kind) {
            return duration(chars, spaces(chars, after)?);
        }
    }
    if let Some(after) = literal(chars, at, "calendar") {
        let period = spaces(chars, after)?;
        let end = ["day", "week", "month"]
            .into_iter()
            .find_map(|p| literal(chars, period, p))?;
        let zone = spaces(chars, end)
            .and_then(|tz| literal(chars, tz, "tz"))
            .and_then(|after| spaces(chars, after))
            .and_then(|name| {
                let len = chars[name..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '+' | '-'))
                    .count();
                (len > 0).then_some(name + len)
            });
        return Some(zone.unwrap_or(end));
    }
    let end = duration(chars, at)?;
    let hop = spaces(chars, end)
        .and_then(|every| literal(chars, every, "every"))
        .and_then(|after| spaces(chars, after))
        .and_then(|hop| duration(chars, hop));
    Some(hop.unwrap_or(end))
}

/// One or more `<digits><unit>` groups (`ms`, `s`, `m`, `h`, `d`, `w`), e.g. `1h30m`.
fn duration(chars: &[char], at: usize) -> Option<usize> {
    let mut end = at;
    loop {
        let digits = chars[end..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            break;
        }
        let unit = ["ms", "s", "m", "h", "d", "w"]
            .into_iter()
            .find_map(|u| literal(chars, end + digits, u));
        match unit {
            Some(after) => end = after,
            None => break,
        }
    }
    (end > at).then_some(end)
}

/// The index past `word` if it is spelt at `at`.
fn literal(chars: &[char], at: usize, word: &str) -> Option<usize> {
    let mut i = at;
    for w in word.chars() {
        if chars.get(i) != Some(&w) {
            return None;
        }
        i += 1;
    }
    Some(i)
}

/// The index past one or more whitespace characters at `at`.
fn spaces(chars: &[char], at: usize) -> Option<usize> {
    let n = chars
        .get(at..)
        .unwrap_or_default()
        .iter()
        .take_while(|c| c.is_whitespace())
        .count();
    (n > 0).then_some(at + n)
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a keyword or a plain identifier.
fn lex_word(chars: &[char], start: usize) -> Result<(Tok, usize), ExprError> {
    let len = chars
        .get(start..)
        .unwrap_or_default()
        .iter()
        .take_while(|&&c| is_word_char(c))
        .count();
    let word: String = chars.iter().skip(start).take(len).collect();
    let tok = match word.as_str() {
        "and" => Tok::And,
        "or" => Tok::Or,
        "not" => Tok::Not,
        "in" => Tok::In,
        "true" => Tok::True,
        "false" => Tok::False,
        "null" => Tok::Null,
        _ => {
            let lower = word.to_ascii_lowercase();
            if KEYWORDS.contains(&lower.as_str()) {
                return Err(ExprError::new(
                    start + 1,
                    format!(
                        "`{word}` is not a keyword (keywords are lowercase); did you mean `{lower}`? \
                         A field named `{word}` must be quoted in backticks"
                    ),
                ));
            }
            Tok::Ident(word)
        }
    };
    Ok((tok, len))
}

/// Integers (`5000`) and floats (`1.5`, `2e3`, `1.5e-3`).
fn lex_number(chars: &[char], start: usize) -> Result<(Tok, usize), ExprError> {
    let at = |i: usize| chars.get(i).copied();
    let digits_from = |i: usize| {
        chars
            .get(i..)
            .unwrap_or_default()
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut end = start + digits_from(start);
    let mut is_float = false;
    if at(end) == Some('.') {
        let frac = digits_from(end + 1);
        if frac == 0 {
            return Err(ExprError::new(
                end + 2,
                "expected a digit after the decimal point",
            ));
        }
        is_float = true;
        end += 1 + frac;
    }
    if matches!(at(end), Some('e' | 'E')) {
        let sign = usize::from(matches!(at(end + 1), Some('+' | '-')));
        let exp = digits_from(end + 1 + sign);
        if exp > 0 {
            is_float = true;
            end += 1 + sign + exp;
        }
    }
    let text: String = chars.iter().skip(start).take(end - start).collect();
    if let Some(c) = at(end).filter(|&c| is_word_char(c) || c == '.') {
        return Err(ExprError::new(
            end + 1,
            format!("unexpected `{c}` right after the number {text}"),
        ));
    }
    let tok = if is_float {
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Tok::Float(x),
            _ => {
                return Err(ExprError::new(
                    start + 1,
                    format!("number {text} is out of range"),
                ))
            }
        }
    } else {
        match text.parse::<u64>() {
            Ok(n) => Tok::Int(n),
            Err(_) => {
                return Err(ExprError::new(
                    start + 1,
                    format!("integer {text} is too large (the largest is {})", i64::MAX),
                ))
            }
        }
    };
    Ok((tok, end - start))
}

/// A single- or double-quoted string with the escapes `\\ \' \" \n \t`.
fn lex_string(chars: &[char], start: usize) -> Result<(Tok, usize), ExprError> {
    let quote = chars.get(start).copied().unwrap_or('\'');
    let unterminated = || {
        ExprError::new(
            start + 1,
            format!("unterminated string: missing the closing {quote}"),
        )
    };
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i).copied() {
            None => return Err(unterminated()),
            Some(c) if c == quote => return Ok((Tok::Str(out), i + 1 - start)),
            Some('\\') => {
                let escaped = match chars.get(i + 1).copied() {
                    None => return Err(unterminated()),
                    Some('\\') => '\\',
                    Some('\'') => '\'',
                    Some('"') => '"',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    // Any other escape is kept as written, so regexes read naturally:
                    // matches(f, '^\d+\.csv$').
                    Some(other) => {
                        out.push('\\');
                        other
                    }
                };
                out.push(escaped);
                i += 2;
            }
            Some(c) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// `` `odd-name` ``; a doubled backtick stands for one backtick in the name.
fn lex_quoted_ident(chars: &[char], start: usize) -> Result<(Tok, usize), ExprError> {
    let mut name = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i).copied() {
            None => {
                return Err(ExprError::new(
                    start + 1,
                    "unterminated quoted field name: missing the closing `",
                ))
            }
            Some('`') if chars.get(i + 1) == Some(&'`') => {
                name.push('`');
                i += 2;
            }
            Some('`') => break,
            Some(c) => {
                name.push(c);
                i += 1;
            }
        }
    }
    if name.is_empty() {
        return Err(ExprError::new(start + 1, "empty quoted field name"));
    }
    Ok((Tok::QuotedIdent(name), i + 1 - start))
}
