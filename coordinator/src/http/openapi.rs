//! The OpenAPI document of the HTTP API, generated from the routes' annotations.

use axum::Json;
use utoipa::OpenApi;

use super::ingest;
use super::problem::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Anom HTTP API",
        description = "Pipelines, events and alerts of an Anom installation over HTTP/JSON. Errors are application/problem+json (RFC 9457)."
    ),
    paths(ingest::post_events),
    components(schemas(ingest::IngestReport, ingest::Refusal, Problem)),
    tags((name = "ingest", description = "Sending events"))
)]
pub struct ApiDoc;

/// `GET /v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
