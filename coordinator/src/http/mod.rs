//! The coordinator's HTTP/JSON face (axum), beside its gRPC API: for browsers and for
//! applications that speak only HTTP.
//!
//! | module | what it is |
//! |---|---|
//! | `ingest` | `POST /v1/pipelines/{pipeline}/events`: JSON, NDJSON, CSV, MessagePack |
//! | `problem` | errors as `application/problem+json` |
//! | `access` | the one place a route asks whether its caller may do what it does |
//! | `openapi` | the OpenAPI document, generated from the routes (utoipa) |
//!
//! Every route names the scope it needs (`access::Scope`) before doing anything.

pub mod access;
pub mod ingest;
pub mod openapi;
pub mod problem;

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::server::control::Control;
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
    pub control: std::sync::Arc<Control>,
    pub js: async_nats::jetstream::Context,
    pub max_body_bytes: u64,
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/v1/pipelines/{pipeline}/events", post(ingest::post_events))
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
