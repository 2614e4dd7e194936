//! NATS subject and stream names, in one place: `anom.<pipeline>.<stage>[.<partition>]`,
//! streams `ANOM_<PIPELINE>_<PART>`.

/// All pipelines publish into one ingest stream, so events sent to a pipeline that does not
/// exist are kept and dead-lettered with a reason instead of vanishing (see docs/architecture.md).
pub const INGEST_STREAM: &str = "ANOM_INGEST";
pub const INGEST_SUBJECTS: &str = "anom.*.in";
pub const DLQ_STREAM: &str = "ANOM_DLQ";
pub const DLQ_SUBJECTS: &str = "anom.*.dlq";
pub const LATE_STREAM: &str = "ANOM_LATE";
pub const LATE_SUBJECTS: &str = "anom.*.late";

/// The subjects and streams of one pipeline, computed once.
#[derive(Debug, Clone)]
pub struct Subjects {
    pub pipeline: String,
    pub input: String,
    pub dlq: String,
    pub alerts: String,
    /// Events later than the allowed lateness, kept aside.
    pub late: String,
    valid_prefix: String,
    enriched_prefix: String,
    scored_prefix: String,
    detections_prefix: String,
    pub valid_stream: String,
    pub enriched_stream: String,
    pub scored_stream: String,
    pub detections_stream: String,
    pub alerts_stream: String,
}

/// A pipeline's part of its stream names: `a-b` → `A_B`. Stream names allow neither `-` nor
/// lowercase-only distinctions, so `a-b` and `a_b` share a token: two pipelines must not.
pub fn stream_token(pipeline: &str) -> String {
    pipeline.to_ascii_uppercase().replace('-', "_")
}

/// The pipeline among `others` (not `pipeline` itself) whose streams would be `pipeline`'s.
pub fn stream_collision<'a>(
    pipeline: &str,
    others: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let token = stream_token(pipeline);
    others
        .into_iter()
        .find(|o| *o != pipeline && stream_token(o) == token)
}

impl Subjects {
    pub fn new(pipeline: &str) -> Subjects {
        let upper = stream_token(pipeline);
        Subjects {
            pipeline: pipeline.to_string(),
            input: input_subject(pipeline),
            dlq: dlq_subject(pipeline),
            alerts: format!("anom.{pipeline}.alerts"),
            late: format!("anom.{pipeline}.late"),
            valid_prefix: format!("anom.{pipeline}.valid."),
            enriched_prefix: format!("anom.{pipeline}.enriched."),
            enriched_stream: format!("ANOM_{upper}_ENRICHED"),
            scored_prefix: format!("anom.{pipeline}.scored."),
            scored_stream: format!("ANOM_{upper}_SCORED"),
            detections_prefix: format!("anom.{pipeline}.detections."),
            valid_stream: format!("ANOM_{upper}_VALID"),
            detections_stream: format!("ANOM_{upper}_DETECTIONS"),
            alerts_stream: format!("ANOM_{upper}_ALERTS"),
        }
    }

    pub fn valid(&self, partition: u32) -> String {
        format!("{}{partition}", self.valid_prefix)
    }

    /// What every partition's valid subject starts with.
    pub fn valid_prefix(&self) -> String {
        self.valid_prefix.clone()
    }

    pub fn valid_all(&self) -> String {
        format!("{}*", self.valid_prefix)
    }

    pub fn enriched(&self, partition: u32) -> String {
        format!("{}{partition}", self.enriched_prefix)
    }

    pub fn enriched_all(&self) -> String {
        format!("{}*", self.enriched_prefix)
    }

    pub fn scored(&self, partition: u32) -> String {
        format!("{}{partition}", self.scored_prefix)
    }

    pub fn scored_all(&self) -> String {
        format!("{}*", self.scored_prefix)
    }

    pub fn detections(&self, partition: u32) -> String {
        format!("{}{partition}", self.detections_prefix)
    }

    pub fn detections_all(&self) -> String {
        format!("{}*", self.detections_prefix)
    }
}

pub fn input_subject(pipeline: &str) -> String {
    format!("anom.{pipeline}.in")
}

/// The stream that keeps a pipeline's raw events for its `retention` (backtests read it),
/// sourced from the ingest stream.
pub fn history_stream(pipeline: &str) -> String {
    format!("ANOM_{}_HISTORY", stream_token(pipeline))
}

pub fn dlq_subject(pipeline: &str) -> String {
    format!("anom.{pipeline}.dlq")
}

/// The pipeline token of `anom.<pipeline>.<stage>…`.
pub fn pipeline_of(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("anom.")?;
    rest.split('.').next()
}

/// Message headers Anom sets on dead-lettered messages.
pub mod headers {
    /// Why the message was dead-lettered, in words.
    pub const REASON: &str = "Anom-Reason";
    /// A bounded class of reason (`decode`, `schema`, `too_large`, …), also a metric label.
    pub const REASON_KIND: &str = "Anom-Reason-Kind";
    /// The stage that rejected it.
    pub const STAGE: &str = "Anom-Stage";
    /// Subject and stream sequence it was read from.
    pub const SOURCE_SUBJECT: &str = "Anom-Source-Subject";
    pub const SOURCE_SEQUENCE: &str = "Anom-Source-Sequence";
    /// For a line of an NDJSON batch: which line (1-based).
    pub const SOURCE_LINE: &str = "Anom-Source-Line";
    pub const CONTENT_TYPE: &str = "Content-Type";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differing_in_dash_and_underscore_collide() {
        assert_eq!(stream_token("a-b"), "A_B");
        assert_eq!(stream_collision("a_b", ["x", "a-b"]), Some("a-b"));
        assert_eq!(stream_collision("a-b", ["a-b", "ab"]), None);
        assert_eq!(
            Subjects::new("a_b").valid_stream,
            Subjects::new("a-b").valid_stream
        );
    }
}
