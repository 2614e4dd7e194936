//! Who may do what: the one place every route asks. Each route names the scope it needs and
//! the pipeline it touches; today every caller is anonymous and allowed (the coordinator
//! listens on loopback by default), and the security issue will decide here from the
//! caller's credentials, without touching the routes.

use axum::http::HeaderMap;

use super::problem::Problem;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Reads: lists, definitions, alerts, events.
    Read,
    /// Changes data or state of a pipeline: ingest, acknowledge, apply.
    Write,
    /// Changes the installation: delete pipelines, manage workers.
    Admin,
}

/// The caller, as its request says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
}

impl Identity {
    pub fn of(_headers: &HeaderMap) -> Identity {
        Identity::Anonymous
    }
}

/// Allows or refuses `identity` doing `scope` on `pipeline` (None: the installation).
pub fn check(identity: &Identity, scope: Scope, pipeline: Option<&str>) -> Result<(), Problem> {
    let _ = (identity, scope, pipeline);
    Ok(())
}

/// As [`check`], for a route whose pipeline is an optional filter (empty: every pipeline, so
/// the installation).
pub fn check_filter(headers: &HeaderMap, scope: Scope, pipeline: &str) -> Result<(), Problem> {
    check(
        &Identity::of(headers),
        scope,
        (!pipeline.is_empty()).then_some(pipeline),
    )
}
