//! `/v1/workers` and `/v1/assignments`: the read side of the `Cluster` service over HTTP
//! (registering, heartbeats and assignment watches stay gRPC: they are the workers' own).

use anom_proto::v1;
use anom_proto::v1::cluster_server::Cluster;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use tonic::Request;
use utoipa::{IntoParams, ToSchema};

use super::access::{self, Identity, Scope};
use super::problem::{answer, Problem};
use super::query::typed;
use super::App;
use crate::time::rfc3339;

/// A worker the coordinator knows.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Worker {
    pub worker_id: String,
    /// The stages it runs (empty: all).
    pub roles: Vec<String>,
    pub capacity: u32,
    /// Its lease is current.
    pub alive: bool,
    pub assigned_units: u32,
    /// As its last heartbeat said.
    pub running_units: u32,
    pub registered_at: Option<String>,
    pub last_heartbeat: Option<String>,
    pub metrics_addr: String,
    pub hostname: String,
}

/// One unit of work: a stage of a pipeline on one partition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Unit {
    pub pipeline: String,
    pub stage: String,
    pub partition: u32,
    /// For sinks: the sink's name.
    pub sink: String,
    pub version: u32,
    /// When its current owner got it.
    pub epoch: u64,
    /// Its owner (empty for an unassigned unit).
    pub worker_id: String,
    /// The version its owner reports running it at (0: not reported or not running);
    /// differs from `version` while a new version rolls out.
    pub running_version: u32,
}

impl From<v1::Unit> for Unit {
    fn from(u: v1::Unit) -> Unit {
        Unit {
            pipeline: u.pipeline,
            stage: u.stage,
            partition: u.partition,
            sink: u.sink,
            version: u.version,
            epoch: u.epoch,
            worker_id: u.worker_id,
            running_version: u.running_version,
        }
    }
}

/// Who runs what.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Assignments {
    /// Increases with every rebalance.
    pub generation: u64,
    pub units: Vec<Unit>,
    /// Units no live worker can run.
    pub unassigned: Vec<Unit>,
}

#[utoipa::path(get, path = "/v1/workers", tag = "cluster",
    responses((status = 200, description = "Every worker known, alive or not", body = Vec<Worker>)))]
pub async fn workers(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<Vec<Worker>>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, None)?;
    let r = answer(
        app.cluster
            .list_workers(Request::new(v1::ListWorkersRequest {}))
            .await,
    )?;
    Ok(Json(
        r.workers
            .into_iter()
            .map(|w| Worker {
                registered_at: rfc3339(&w.registered_at),
                last_heartbeat: rfc3339(&w.last_heartbeat),
                worker_id: w.worker_id,
                roles: w.roles,
                capacity: w.capacity,
                alive: w.alive,
                assigned_units: w.assigned_units,
                running_units: w.running_units,
                metrics_addr: w.metrics_addr,
                hostname: w.hostname,
            })
            .collect(),
    ))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AssignmentQuery {
    /// Only this pipeline's units (default: all).
    pub pipeline: Option<String>,
}

#[utoipa::path(get, path = "/v1/assignments", tag = "cluster", params(AssignmentQuery),
    responses(
        (status = 200, description = "Every unit with its owner, and the units nobody can run", body = Assignments),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn assignments(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Assignments>, Problem> {
    let q: AssignmentQuery = typed(query.as_deref())?;
    let pipeline = q.pipeline.unwrap_or_default();
    access::check_filter(&headers, Scope::Read, &pipeline)?;
    let r = answer(
        app.cluster
            .list_assignments(Request::new(v1::ListAssignmentsRequest { pipeline }))
            .await,
    )?;
    Ok(Json(Assignments {
        generation: r.generation,
        units: r.units.into_iter().map(Into::into).collect(),
        unassigned: r.unassigned.into_iter().map(Into::into).collect(),
    }))
}
