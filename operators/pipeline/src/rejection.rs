//! Why an input was refused. A rejection never stops a stage: the runtime dead-letters the
//! input's original bytes with the reason in headers and counts it by kind.

use std::fmt;

/// A bounded set of reasons, used as a header and as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// Not parseable as JSON or MessagePack.
    Decode,
    /// Parsed, but does not match the pipeline's schema.
    Schema,
    /// Larger than the pipeline's `max_event_bytes`.
    TooLarge,
    /// The key field is missing or null.
    MissingKey,
    /// Sent to a pipeline that does not exist.
    UnknownPipeline,
    /// An inter-stage message that is not a valid envelope (or of another pipeline version).
    Envelope,
    /// A sink gave up delivering after its retries.
    Delivery,
    /// A model could not score the event.
    Model,
    /// A user-defined function failed for the event: it panicked, returned null, or a
    /// detector's score outside [0, 1].
    Udf,
}

impl RejectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Decode => "decode",
            RejectKind::Schema => "schema",
            RejectKind::TooLarge => "too_large",
            RejectKind::MissingKey => "missing_key",
            RejectKind::UnknownPipeline => "unknown_pipeline",
            RejectKind::Envelope => "envelope",
            RejectKind::Delivery => "delivery",
            RejectKind::Model => "model",
            RejectKind::Udf => "udf",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub reason: String,
}

impl Rejection {
    pub fn new(kind: RejectKind, reason: impl Into<String>) -> Rejection {
        Rejection {
            kind,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.reason)
    }
}
