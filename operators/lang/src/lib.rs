//! Anom's language: the values events carry, durations, the rule expression language
//! ([`expr`]: lexer, parser, type checker, compiled evaluation) and aggregates ([`aggregate`]:
//! specs as written, per-key windowed state). Pure: no I/O, no async.

pub mod aggregate;
pub mod duration;
pub mod expr;
pub mod suggest;
pub mod value;
