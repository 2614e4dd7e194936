//! The OpenAPI document of the HTTP API, generated from the routes' annotations.

use axum::Json;
use utoipa::OpenApi;

use super::problem::Problem;
use super::{alerts, backtests, cluster, history, ingest, overview, pipelines};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Anom HTTP API",
        description = "Pipelines, events, alerts and backtests of an Anom installation over HTTP/JSON: the gRPC services' own checks and refusals. Errors are application/problem+json (RFC 9457)."
    ),
    paths(
        overview::overview,
        pipelines::list,
        pipelines::apply,
        pipelines::check,
        pipelines::get,
        pipelines::history,
        pipelines::version,
        pipelines::diff,
        pipelines::pause,
        pipelines::resume,
        pipelines::delete,
        ingest::post_events,
        history::events,
        history::dead_letters,
        history::replay,
        alerts::list,
        alerts::live,
        alerts::get,
        alerts::acknowledge,
        alerts::resolve,
        alerts::silences,
        alerts::add_silence,
        alerts::expire_silence,
        backtests::start,
        backtests::list,
        backtests::get,
        backtests::progress,
        backtests::cancel,
        backtests::report,
        cluster::workers,
        cluster::assignments,
    ),
    components(schemas(
        Problem,
        overview::Overview,
        overview::PipelineGlance,
        ingest::IngestReport,
        ingest::Refusal,
        pipelines::PipelineStatus,
        pipelines::PipelineVersion,
        pipelines::PipelineDetail,
        pipelines::Applied,
        pipelines::CheckReport,
        pipelines::DefinitionProblem,
        pipelines::PlanSummary,
        pipelines::Diff,
        pipelines::DefinitionBody,
        alerts::AlertPage,
        alerts::AlertAction,
        alerts::ActionBody,
        alerts::Silence,
        alerts::SilenceBody,
        backtests::BacktestStatus,
        backtests::Target,
        backtests::StartBody,
        cluster::Worker,
        cluster::Unit,
        cluster::Assignments,
        history::StoredEvent,
        history::EventPage,
        history::Refused,
        history::DeadLetter,
        history::DeadLetterPage,
        history::ReplayBody,
        history::ReplayReport,
        history::ReplayRefusal,
    )),
    tags(
        (name = "pipelines", description = "Definitions and their versions"),
        (name = "ingest", description = "Sending events"),
        (name = "history", description = "Events and dead letters read back; dead letters replayed"),
        (name = "alerts", description = "Alerts, acknowledgements and silences"),
        (name = "backtests", description = "Replaying history through a version or a draft"),
        (name = "cluster", description = "Workers and what they run"),
    )
)]
pub struct ApiDoc;

/// `GET /v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
