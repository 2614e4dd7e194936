//! `/v1/pipelines…` and `/v1/check`: the `Pipelines` service over HTTP. Every route calls the
//! gRPC service's own method, so checks, refusals and their texts are the same.
//!
//! A definition is sent as the YAML file's text (`Content-Type: application/yaml`, with
//! `comment`, `author` and `source` as query parameters) or as JSON: `{"yaml": "...",
//! "comment": "..."}` or `{"definition": {...the same document as JSON...}}`.

use anom_pipeline::MAX_DEFINITION_BYTES;
use anom_proto::v1;
use anom_proto::v1::pipelines_server::Pipelines;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use tonic::Request;
use utoipa::{IntoParams, ToSchema};

use super::access::{self, Identity, Scope};
use super::problem::{answer, Problem};
use super::query::typed;
use super::App;
use crate::time::rfc3339;

/// A pipeline and where it stands.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineStatus {
    pub name: String,
    pub current_version: u32,
    /// How many versions are stored.
    pub versions: u32,
    pub paused: bool,
    pub deleted: bool,
    pub description: String,
    pub partitions: u32,
    /// RFC 3339.
    pub updated_at: Option<String>,
}

impl From<v1::PipelineStatus> for PipelineStatus {
    fn from(s: v1::PipelineStatus) -> PipelineStatus {
        PipelineStatus {
            updated_at: rfc3339(&s.updated_at),
            name: s.name,
            current_version: s.current_version,
            versions: s.versions,
            paused: s.paused,
            deleted: s.deleted,
            description: s.description,
            partitions: s.partitions,
        }
    }
}

/// One stored version of a definition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineVersion {
    pub name: String,
    pub version: u32,
    /// The definition as YAML (JSON definitions are stored converted).
    pub yaml: String,
    /// RFC 3339.
    pub applied_at: Option<String>,
    /// Why this version exists.
    pub comment: String,
    pub author: String,
    /// xxh3 of the YAML text, hex.
    pub digest: String,
}

impl From<v1::PipelineVersion> for PipelineVersion {
    fn from(v: v1::PipelineVersion) -> PipelineVersion {
        PipelineVersion {
            applied_at: rfc3339(&v.applied_at),
            name: v.name,
            version: v.version,
            yaml: v.yaml,
            comment: v.comment,
            author: v.author,
            digest: v.digest,
        }
    }
}

/// A pipeline with its current definition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineDetail {
    pub status: PipelineStatus,
    pub definition: PipelineVersion,
}

/// What an apply did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Applied {
    pub version: PipelineVersion,
    /// False when the definition equals the current version: nothing was stored.
    pub changed: bool,
}

/// A located problem of a definition, as `anom check` prints it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DefinitionProblem {
    /// `file:line:column: path: message`.
    pub text: String,
    /// The field, as a path (`rules[0].when`).
    pub path: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// What a valid definition compiles to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanSummary {
    pub name: String,
    pub key: String,
    pub partitions: u32,
    pub fields: Vec<String>,
    pub rules: Vec<String>,
    pub aggregates: Vec<String>,
    pub sinks: Vec<String>,
    /// The (stage, partition) units it runs as.
    pub units: u32,
}

/// The verdict on a definition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckReport {
    pub valid: bool,
    /// Every problem found, each located.
    pub problems: Vec<DefinitionProblem>,
    /// Of a valid definition.
    pub plan: Option<PlanSummary>,
}

impl From<v1::ValidateResponse> for CheckReport {
    fn from(r: v1::ValidateResponse) -> CheckReport {
        CheckReport {
            valid: r.valid,
            problems: r
                .problems
                .into_iter()
                .map(|p| DefinitionProblem {
                    text: p.text,
                    path: p.path,
                    line: p.line,
                    column: p.column,
                    message: p.message,
                })
                .collect(),
            plan: r.plan.map(|p| PlanSummary {
                name: p.name,
                key: p.key,
                partitions: p.partitions,
                fields: p.fields,
                rules: p.rules,
                aggregates: p.aggregates,
                sinks: p.sinks,
                units: p.units,
            }),
        }
    }
}

/// Two versions compared.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Diff {
    /// Unified diff of the two YAML texts.
    pub unified: String,
    /// One line per changed part: "rule slow: when changed", "aggregate avg_1h added", ...
    pub summary: Vec<String>,
}

/// A definition sent as JSON.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinitionBody {
    /// The YAML file's text...
    pub yaml: Option<String>,
    /// ...or the same document as JSON.
    #[schema(value_type = Option<Object>)]
    pub definition: Option<serde_json::Value>,
    /// Shown in error locations (`routes.yaml:12:7: ...`); default `<request>`.
    pub source: Option<String>,
    /// Why this version exists (apply only).
    pub comment: Option<String>,
    pub author: Option<String>,
}

/// Query parameters of a definition sent as YAML.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DefinitionQuery {
    /// Shown in error locations; default `<request>`.
    pub source: Option<String>,
    /// Why this version exists (apply only).
    pub comment: Option<String>,
    pub author: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Deleted pipelines too.
    #[serde(default)]
    pub include_deleted: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// Default: the version before `to`.
    pub from: Option<u32>,
    /// Default: the current version.
    pub to: Option<u32>,
}

const YAML_TYPES: [&str; 4] = [
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
];

/// The definition, comment and author a body carries.
async fn definition(
    headers: &HeaderMap,
    query: DefinitionQuery,
    body: Body,
) -> Result<(v1::Definition, String, String), Problem> {
    // The definition's own limit, plus room for JSON's quoting.
    let bytes = axum::body::to_bytes(body, 2 * MAX_DEFINITION_BYTES + 4096)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than a definition may be: expected at most {MAX_DEFINITION_BYTES} bytes of YAML"
                ),
            )
        })?;
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("the definition is not UTF-8: {e}"),
            )
        })
    };
    let (source, body) = match essence.as_deref() {
        Some(ct) if YAML_TYPES.contains(&ct) => (
            v1::definition::Source::Yaml(text(&bytes)?),
            DefinitionBody {
                source: query.source,
                comment: query.comment,
                author: query.author,
                ..Default::default()
            },
        ),
        Some("application/json") => {
            let b: DefinitionBody = serde_json::from_slice(&bytes).map_err(|e| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not a definition request: {e} (expected {{\"yaml\": \"...\"}} or {{\"definition\": {{...}}}})"),
                )
            })?;
            let source = match (&b.yaml, &b.definition) {
                (Some(y), None) => v1::definition::Source::Yaml(y.clone()),
                // As the gRPC service does with a Struct: the same document as YAML.
                (None, Some(d)) => v1::definition::Source::Yaml(
                    serde_norway::to_string(d).map_err(|e| {
                        Problem::new(
                            StatusCode::BAD_REQUEST,
                            format!("definition: cannot convert to YAML: {e}"),
                        )
                    })?,
                ),
                _ => {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "expected exactly one of `yaml` (the file's text) and `definition` (the document as JSON)",
                    ))
                }
            };
            (source, b)
        }
        other => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{}: expected application/yaml (the file's text) or application/json",
                    other.map_or("the request has no Content-Type".to_string(), |ct| format!(
                        "Content-Type `{ct}` is not accepted"
                    ))
                ),
            ))
        }
    };
    Ok((
        v1::Definition {
            source: Some(source),
            source_name: body.source.unwrap_or_default(),
        },
        body.comment.unwrap_or_default(),
        body.author.unwrap_or_default(),
    ))
}

#[utoipa::path(get, path = "/v1/pipelines", tag = "pipelines", params(ListQuery),
    responses((status = 200, description = "Every pipeline, by name", body = Vec<PipelineStatus>)))]
pub async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<PipelineStatus>>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, None)?;
    let q: ListQuery = typed(query.as_deref())?;
    let r = answer(
        app.pipelines
            .list(Request::new(v1::ListPipelinesRequest {
                include_deleted: q.include_deleted,
            }))
            .await,
    )?;
    Ok(Json(r.pipelines.into_iter().map(Into::into).collect()))
}

#[utoipa::path(post, path = "/v1/pipelines", tag = "pipelines", params(DefinitionQuery),
    request_body(description = "The definition: its YAML text, or JSON", content(
        (String = "application/yaml"), (DefinitionBody = "application/json"))),
    responses(
        (status = 201, description = "Stored as the pipeline's next version", body = Applied),
        (status = 200, description = "Equal to the current version: nothing stored", body = Applied),
        (status = 400, description = "The definition does not compile; `problems` lists each, located", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn apply(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<(StatusCode, Json<Applied>), Problem> {
    let identity = Identity::of(&headers);
    let (definition, comment, author) =
        self::definition(&headers, typed(query.as_deref())?, body).await?;
    // The pipeline it names is known only once it parses: check write on the installation.
    access::check(&identity, Scope::Write, None)?;
    let applied = app
        .pipelines
        .apply(Request::new(v1::ApplyRequest {
            definition: Some(definition.clone()),
            comment,
            author,
        }))
        .await;
    match applied {
        Ok(r) => {
            let r = r.into_inner();
            let version = r.version.map(Into::into).ok_or_else(|| {
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the service answered without a version",
                )
            })?;
            let status = if r.changed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                status,
                Json(Applied {
                    version,
                    changed: r.changed,
                }),
            ))
        }
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            // The same refusal, with each problem located for a client to point at.
            let checked = app
                .pipelines
                .validate(Request::new(v1::ValidateRequest {
                    definition: Some(definition),
                }))
                .await
                .map(|r| CheckReport::from(r.into_inner()).problems)
                .unwrap_or_default();
            Err(Problem::from(s).with("problems", checked))
        }
        Err(s) => Err(s.into()),
    }
}

#[utoipa::path(post, path = "/v1/check", tag = "pipelines", params(DefinitionQuery),
    request_body(description = "The definition: its YAML text, or JSON", content(
        (String = "application/yaml"), (DefinitionBody = "application/json"))),
    responses((status = 200, description = "The verdict: valid with its plan, or every problem located (nothing is stored)", body = CheckReport)))]
pub async fn check(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<CheckReport>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, None)?;
    let (definition, _, _) = self::definition(&headers, typed(query.as_deref())?, body).await?;
    let r = answer(
        app.pipelines
            .validate(Request::new(v1::ValidateRequest {
                definition: Some(definition),
            }))
            .await,
    )?;
    Ok(Json(r.into()))
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}", tag = "pipelines",
    params(("pipeline" = String, Path)),
    responses(
        (status = 200, description = "Where it stands and its current definition", body = PipelineDetail),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
) -> Result<Json<PipelineDetail>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, Some(&pipeline))?;
    let definition = answer(
        app.pipelines
            .get(Request::new(v1::GetPipelineRequest {
                name: pipeline.clone(),
                version: 0,
            }))
            .await,
    )?;
    let all = answer(
        app.pipelines
            .list(Request::new(v1::ListPipelinesRequest {
                include_deleted: true,
            }))
            .await,
    )?;
    let status = all
        .pipelines
        .into_iter()
        .find(|p| p.name == pipeline)
        .ok_or_else(|| Problem::from(crate::server::pipelines::not_found(&pipeline)))?;
    Ok(Json(PipelineDetail {
        status: status.into(),
        definition: definition.into(),
    }))
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/versions", tag = "pipelines",
    params(("pipeline" = String, Path)),
    responses(
        (status = 200, description = "Every version, oldest first", body = Vec<PipelineVersion>),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn history(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
) -> Result<Json<Vec<PipelineVersion>>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, Some(&pipeline))?;
    let r = answer(
        app.pipelines
            .history(Request::new(v1::HistoryRequest { name: pipeline }))
            .await,
    )?;
    Ok(Json(r.versions.into_iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/versions/{version}", tag = "pipelines",
    params(("pipeline" = String, Path), ("version" = u32, Path)),
    responses(
        (status = 200, description = "That version", body = PipelineVersion),
        (status = 404, description = "No such pipeline or version", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn version(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pipeline, version)): Path<(String, u32)>,
) -> Result<Json<PipelineVersion>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, Some(&pipeline))?;
    if version == 0 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "version: expected a version number from 1, found 0",
        ));
    }
    let r = answer(
        app.pipelines
            .get(Request::new(v1::GetPipelineRequest {
                name: pipeline,
                version,
            }))
            .await,
    )?;
    Ok(Json(r.into()))
}

#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/diff", tag = "pipelines",
    params(("pipeline" = String, Path), DiffQuery),
    responses(
        (status = 200, description = "The two versions compared", body = Diff),
        (status = 400, description = "No version before `to` to compare with", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline or version", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn diff(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Diff>, Problem> {
    access::check(&Identity::of(&headers), Scope::Read, Some(&pipeline))?;
    let q: DiffQuery = typed(query.as_deref())?;
    let r = answer(
        app.pipelines
            .diff(Request::new(v1::DiffRequest {
                name: pipeline,
                from_version: q.from.unwrap_or(0),
                to_version: q.to.unwrap_or(0),
            }))
            .await,
    )?;
    Ok(Json(Diff {
        unified: r.unified,
        summary: r.summary,
    }))
}

/// Pause, resume and delete: the same shape, another method of the service.
#[derive(Debug, Clone, Copy)]
pub enum Switch {
    Pause,
    Resume,
    Delete,
}

async fn switch(
    app: App,
    headers: HeaderMap,
    pipeline: String,
    what: Switch,
) -> Result<Json<PipelineStatus>, Problem> {
    let scope = match what {
        Switch::Pause | Switch::Resume => Scope::Write,
        Switch::Delete => Scope::Admin,
    };
    access::check(&Identity::of(&headers), scope, Some(&pipeline))?;
    let name = Request::new(v1::PipelineName { name: pipeline });
    let r = match what {
        Switch::Pause => app.pipelines.pause(name).await,
        Switch::Resume => app.pipelines.resume(name).await,
        Switch::Delete => app.pipelines.delete(name).await,
    };
    Ok(Json(answer(r)?.into()))
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/pause", tag = "pipelines",
    params(("pipeline" = String, Path)),
    responses(
        (status = 200, description = "Processing stopped; events accumulate in the ingest stream until resumed", body = PipelineStatus),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn pause(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
) -> Result<Json<PipelineStatus>, Problem> {
    switch(app, headers, pipeline, Switch::Pause).await
}

#[utoipa::path(post, path = "/v1/pipelines/{pipeline}/resume", tag = "pipelines",
    params(("pipeline" = String, Path)),
    responses(
        (status = 200, description = "Processing again", body = PipelineStatus),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn resume(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
) -> Result<Json<PipelineStatus>, Problem> {
    switch(app, headers, pipeline, Switch::Resume).await
}

#[utoipa::path(delete, path = "/v1/pipelines/{pipeline}", tag = "pipelines",
    params(("pipeline" = String, Path)),
    responses(
        (status = 200, description = "Stopped everywhere and hidden from the list; history and streams are kept, and applying it again brings it back", body = PipelineStatus),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(app): State<App>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
) -> Result<Json<PipelineStatus>, Problem> {
    switch(app, headers, pipeline, Switch::Delete).await
}
