//! The coordinator's HTTP/JSON face (axum), beside its gRPC API: for browsers and for
//! applications that speak only HTTP.
//!
//! Every route but ingest calls the gRPC service's own method (held in [`App`]), so the
//! checks, refusals and their texts are the same over both.
//!
//! | module | what it is |
//! |---|---|
//! | `ingest` | `POST /v1/pipelines/{pipeline}/events`: JSON, NDJSON, CSV, MessagePack |
//! | `pipelines` | definitions: apply, check, get, versions, diff, pause, resume, delete |
//! | `alerts` | alerts, acknowledgements, silences; alert changes live (server-sent events) |
//! | `backtests` | start, progress (server-sent events), cancel, report |
//! | `cluster` | workers and assignments |
//! | `overview` | every pipeline at a glance: events and their rate, dead letters, lag, alerts |
//! | `history` | a pipeline's events and dead letters read back; dead letters replayed |
//! | `console` | the web console's files, compiled in, served at `/` |
//! | `query` | query strings, read with refusals that name the parameter |
//! | `problem` | errors as `application/problem+json` |
//! | `access` | the one place a route asks whether its caller may do what it does |
//! | `openapi` | the OpenAPI document, generated from the routes (utoipa) |
//!
//! Every route names the scope it needs (`access::Scope`) before doing anything.

pub mod access;
pub mod alerts;
pub mod backtests;
pub mod cluster;
pub mod console;
pub mod history;
pub mod ingest;
pub mod openapi;
pub mod overview;
pub mod pipelines;
pub mod problem;
pub mod query;

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::server::alerts::AlertService;
use crate::server::backtests::BacktestService;
use crate::server::cluster::ClusterService;
use crate::server::control::Control;
use crate::server::pipelines::PipelineService;
use problem::Problem;

/// Where and how the HTTP API is served.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// The largest request body (ingest streams bodies, so this bounds time, not memory).
    pub max_body_bytes: u64,
}

impl HttpConfig {
    pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 << 30;
}

/// What every route works with.
#[derive(Clone)]
pub struct App {
    pub control: Arc<Control>,
    pub js: async_nats::jetstream::Context,
    pub max_body_bytes: u64,
    /// The services gRPC serves, shared with it.
    pub pipelines: Arc<PipelineService>,
    pub cluster: Arc<ClusterService>,
    pub alerts: Arc<AlertService>,
    pub backtests: Arc<BacktestService>,
    pub rates: overview::Rates,
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .route("/v1/pipelines", get(pipelines::list).post(pipelines::apply))
        .route("/v1/check", post(pipelines::check))
        .route("/v1/overview", get(overview::overview))
        .route(
            "/v1/pipelines/{pipeline}",
            get(pipelines::get).delete(pipelines::delete),
        )
        .route("/v1/pipelines/{pipeline}/versions", get(pipelines::history))
        .route(
            "/v1/pipelines/{pipeline}/versions/{version}",
            get(pipelines::version),
        )
        .route("/v1/pipelines/{pipeline}/diff", get(pipelines::diff))
        .route("/v1/pipelines/{pipeline}/pause", post(pipelines::pause))
        .route("/v1/pipelines/{pipeline}/resume", post(pipelines::resume))
        .route(
            "/v1/pipelines/{pipeline}/events",
            post(ingest::post_events).get(history::events),
        )
        .route(
            "/v1/pipelines/{pipeline}/dead-letters",
            get(history::dead_letters),
        )
        .route(
            "/v1/pipelines/{pipeline}/dead-letters/replay",
            post(history::replay),
        )
        .route("/v1/alerts", get(alerts::list))
        .route("/v1/alerts/live", get(alerts::live))
        .route("/v1/pipelines/{pipeline}/alerts/{id}", get(alerts::get))
        .route(
            "/v1/pipelines/{pipeline}/alerts/{id}/acknowledge",
            post(alerts::acknowledge),
        )
        .route(
            "/v1/pipelines/{pipeline}/alerts/{id}/resolve",
            post(alerts::resolve),
        )
        .route("/v1/silences", get(alerts::silences))
        .route(
            "/v1/pipelines/{pipeline}/silences",
            post(alerts::add_silence),
        )
        .route(
            "/v1/pipelines/{pipeline}/silences/{id}/expire",
            post(alerts::expire_silence),
        )
        .route("/v1/backtests", get(backtests::list))
        .route("/v1/pipelines/{pipeline}/backtests", post(backtests::start))
        .route("/v1/backtests/{id}", get(backtests::get))
        .route("/v1/backtests/{id}/progress", get(backtests::progress))
        .route("/v1/backtests/{id}/cancel", post(backtests::cancel))
        .route("/v1/backtests/{id}/report", get(backtests::report))
        .route("/v1/workers", get(cluster::workers))
        .route("/v1/assignments", get(cluster::assignments))
        .route("/v1/openapi.json", get(openapi::document))
        .fallback(|uri: axum::http::Uri| async move {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!("no route {uri} (the routes are in /v1/openapi.json)"),
            )
        })
        // Ingest enforces its own limit while streaming; axum's default (2 MiB) would cut
        // every large upload.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

/// Serves the API until `shutdown`; returns the address it listens on (useful with port 0).
pub async fn serve(
    app: App,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {listen}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, router(app))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the HTTP API stopped");
        }
    });
    tracing::info!(%addr, "coordinator serving HTTP");
    Ok(addr)
}
