//! The `Pipelines` service: versions of pipeline definitions, checked exactly as the file
//! loader checks them, and rolled out to workers by a new assignment generation.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anom_pipeline::{DefinitionErrors, Pipeline};
use anom_proto::v1;
use anom_proto::v1::pipelines_server::Pipelines;
use serde_json::Value as Json;
use tonic::{Request, Response, Status};

use super::control::Control;
use super::store::{PipelineRecord, VersionRecord};
use anom_runtime::timebase::wall_ms;

pub struct PipelineService {
    pub control: Arc<Control>,
    pub models_dir: Option<PathBuf>,
}

impl PipelineService {
    fn compile(&self, text: &str, source: &str) -> Result<Pipeline, DefinitionErrors> {
        let p = compile(text, source)?;
        let Some(dir) = &self.models_dir else {
            return Ok(p);
        };
        let problems = anom_operators::model_registry::check_models(&p, dir);
        if problems.is_empty() {
            return Ok(p);
        }
        let mut errors = anom_pipeline::located(problems, text);
        for e in &mut errors.0 {
            e.file = Some(PathBuf::from(source));
        }
        Err(errors)
    }
}

pub fn timestamp(ms: i64) -> Option<prost_types::Timestamp> {
    Some(crate::time::timestamp(ms))
}

pub fn version_message(name: &str, v: &VersionRecord) -> v1::PipelineVersion {
    v1::PipelineVersion {
        name: name.to_string(),
        version: v.version,
        yaml: v.yaml.clone(),
        applied_at: timestamp(v.applied_at_ms),
        comment: v.comment.clone(),
        author: v.author.clone(),
        digest: v.digest.clone(),
    }
}

fn status_message(p: &PipelineRecord, compiled: Option<&Pipeline>) -> v1::PipelineStatus {
    v1::PipelineStatus {
        name: p.name.clone(),
        current_version: p.current().version,
        versions: p.versions.len() as u32,
        paused: p.paused,
        deleted: p.deleted,
        description: compiled
            .and_then(|c| c.description.clone())
            .unwrap_or_default(),
        partitions: compiled.map_or(0, |c| c.partitions),
        updated_at: timestamp(p.updated_at_ms),
    }
}

/// The YAML text of a definition, and the name its errors are reported against.
pub(crate) fn definition_text(d: Option<v1::Definition>) -> Result<(String, String), Status> {
    let d = d.ok_or_else(|| Status::invalid_argument("definition: expected yaml or structured"))?;
    let source = if d.source_name.is_empty() {
        "<request>".to_string()
    } else {
        d.source_name
    };
    let text = match d.source {
        Some(v1::definition::Source::Yaml(y)) => y,
        Some(v1::definition::Source::Structured(s)) => {
            let json = struct_to_json(s);
            serde_norway::to_string(&json).map_err(|e| {
                Status::invalid_argument(format!("definition.structured: cannot convert: {e}"))
            })?
        }
        None => {
            return Err(Status::invalid_argument(
                "definition: expected `yaml` or `structured`, found neither",
            ))
        }
    };
    Ok((text, source))
}

/// A protobuf Struct as JSON. Whole numbers become integers: `Struct` only has doubles, and
/// `partitions: 4.0` would not be a valid count.
pub fn struct_to_json(s: prost_types::Struct) -> Json {
    Json::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: prost_types::Value) -> Json {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Json::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
            }
        }
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::ListValue(l)) => Json::Array(l.values.into_iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

pub(crate) fn compile(text: &str, source: &str) -> Result<Pipeline, DefinitionErrors> {
    Pipeline::from_yaml(text).map_err(|mut errors| {
        for e in &mut errors.0 {
            e.file = Some(PathBuf::from(source));
        }
        errors
    })
}

fn problems(errors: &DefinitionErrors) -> Vec<v1::Problem> {
    errors
        .0
        .iter()
        .map(|e| v1::Problem {
            text: e.to_string(),
            path: e.path.clone(),
            line: e.line.unwrap_or(0) as u32,
            column: e.column.unwrap_or(0) as u32,
            message: e.message.clone(),
        })
        .collect()
}

fn plan_summary(p: &Pipeline) -> v1::PlanSummary {
    v1::PlanSummary {
        name: p.name.clone(),
        key: p.schema.fields()[p.key].name.clone(),
        partitions: p.partitions,
        fields: p.schema.fields().iter().map(|f| f.name.clone()).collect(),
        rules: p.rules.iter().map(|r| r.name.clone()).collect(),
        aggregates: p.aggregates.iter().map(|a| a.name.clone()).collect(),
        sinks: p.sinks.iter().map(|s| s.name().to_string()).collect(),
        units: anom_pipeline::unit::units(p).len() as u32,
    }
}

fn digest(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

pub fn not_found(name: &str) -> Status {
    Status::not_found(format!("no pipeline named `{name}`"))
}

/// One line per changed part of a definition: top-level settings, schema fields, rules and
/// aggregates by name.
pub fn summarize(old: &str, new: &str) -> Vec<String> {
    let parse = |t: &str| serde_norway::from_str::<Json>(t).unwrap_or(Json::Null);
    let (a, b) = (parse(old), parse(new));
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        let (x, y) = (a.get(key), b.get(key));
        if x == y {
            continue;
        }
        match (key.as_str(), x, y) {
            ("schema" | "aggregates", Some(Json::Object(x)), Some(Json::Object(y))) => {
                let what = if key == "schema" {
                    "field"
                } else {
                    "aggregate"
                };
                named_changes(what, x.iter().collect(), y.iter().collect(), &mut out);
            }
            ("rules" | "absence", Some(Json::Array(x)), Some(Json::Array(y))) => {
                let by_name = |v: &'_ Vec<Json>| -> Vec<(String, Json)> {
                    v.iter()
                        .enumerate()
                        .map(|(i, r)| {
                            let name = r
                                .get("name")
                                .and_then(Json::as_str)
                                .map_or_else(|| format!("#{i}"), str::to_string);
                            (name, r.clone())
                        })
                        .collect()
                };
                let (x, y) = (by_name(x), by_name(y));
                named_changes(
                    "rule",
                    x.iter().map(|(k, v)| (k, v)).collect(),
                    y.iter().map(|(k, v)| (k, v)).collect(),
                    &mut out,
                );
            }
            (_, None, Some(_)) => out.push(format!("{key} added")),
            (_, Some(_), None) => out.push(format!("{key} removed")),
            _ => out.push(format!("{key} changed")),
        }
    }
    out
}

fn named_changes(
    what: &str,
    a: Vec<(&String, &Json)>,
    b: Vec<(&String, &Json)>,
    out: &mut Vec<String>,
) {
    for (name, v) in &a {
        match b.iter().find(|(n, _)| n == name) {
            None => out.push(format!("{what} {name} removed")),
            Some((_, w)) if w != v => out.push(format!("{what} {name} changed")),
            _ => {}
        }
    }
    for (name, _) in &b {
        if !a.iter().any(|(n, _)| n == name) {
            out.push(format!("{what} {name} added"));
        }
    }
}

#[tonic::async_trait]
impl Pipelines for PipelineService {
    async fn apply(
        &self,
        request: Request<v1::ApplyRequest>,
    ) -> Result<Response<v1::ApplyResponse>, Status> {
        let req = request.into_inner();
        let (text, source) = definition_text(req.definition)?;
        // Loading models is blocking work (read, optimise).
        let pipeline = tokio::task::block_in_place(|| self.compile(&text, &source))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let control = &self.control;
        let mut state = control.lock().await;
        let now = wall_ms();
        let digest = digest(&text);
        // Deleted pipelines too: their streams stay.
        if let Some(other) = anom_pipeline::subjects::stream_collision(
            &pipeline.name,
            state.pipelines.keys().map(String::as_str),
        ) {
            return Err(Status::already_exists(format!(
                "{source}: name: {}",
                anom_pipeline::collision_message(&pipeline.name, other)
            )));
        }
        let existing = state.pipelines.get(&pipeline.name).cloned();
        if let Some(record) = &existing {
            // Deleted pipelines too: their streams, consumers and keyed state keep the old
            // partitioning under the same name.
            let key_name = |p: &Pipeline| {
                p.schema
                    .field(p.key)
                    .map(|f| f.name.clone())
                    .unwrap_or_default()
            };
            let before = match state.compiled.get(&pipeline.name) {
                Some(c) => Some((c.partitions, key_name(c))),
                None => Pipeline::from_yaml(&record.current().yaml)
                    .ok()
                    .map(|c| (c.partitions, key_name(&c))),
            };
            if let Some((before, _)) = before.as_ref().filter(|b| b.0 != pipeline.partitions) {
                return Err(Status::failed_precondition(format!(
                    "{source}: partitions: cannot change from {before} to {} for pipeline `{}` (its keyed state and streams are split by partition); apply it under a new name",
                    pipeline.partitions, pipeline.name
                )));
            }
            // Envelopes in flight, keyed state and alerts all belong to keys of the old key
            // field (see anom_pipeline::layout).
            if let Some((_, key)) = before.filter(|b| b.1 != key_name(&pipeline)) {
                return Err(Status::failed_precondition(format!(
                    "{source}: key: cannot change from `{key}` to `{}` for pipeline `{}` (its keyed state, alerts and events in flight are grouped by `{key}`); apply it under a new name",
                    key_name(&pipeline),
                    pipeline.name
                )));
            }
            if !record.deleted && record.current().digest == digest {
                return Ok(Response::new(v1::ApplyResponse {
                    version: Some(version_message(&record.name, record.current())),
                    changed: false,
                }));
            }
        }
        anom_runtime::streams::ensure(
            &control.js,
            std::slice::from_ref(&pipeline),
            &control.streams,
        )
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut record = existing.unwrap_or_else(|| PipelineRecord {
            name: pipeline.name.clone(),
            versions: Vec::new(),
            paused: false,
            deleted: false,
            updated_at_ms: now,
        });
        let version = VersionRecord {
            version: record.versions.last().map_or(1, |v| v.version + 1),
            yaml: text,
            applied_at_ms: now,
            comment: req.comment,
            author: req.author,
            digest,
        };
        record.versions.push(version.clone());
        record.deleted = false;
        record.updated_at_ms = now;
        control
            .store
            .put_pipeline(&record)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        control.metrics.applies.inc();
        let name = record.name.clone();
        state.pipelines.insert(name.clone(), record);
        state.compiled.insert(name.clone(), Arc::new(pipeline));
        control
            .rebalance(&mut state, true, "pipeline applied")
            .await;
        Ok(Response::new(v1::ApplyResponse {
            version: Some(version_message(&name, &version)),
            changed: true,
        }))
    }

    async fn validate(
        &self,
        request: Request<v1::ValidateRequest>,
    ) -> Result<Response<v1::ValidateResponse>, Status> {
        let (text, source) = definition_text(request.into_inner().definition)?;
        Ok(Response::new(
            match tokio::task::block_in_place(|| self.compile(&text, &source)) {
                Ok(p) => v1::ValidateResponse {
                    valid: true,
                    problems: vec![],
                    plan: Some(plan_summary(&p)),
                },
                Err(e) => v1::ValidateResponse {
                    valid: false,
                    problems: problems(&e),
                    plan: None,
                },
            },
        ))
    }

    async fn get(
        &self,
        request: Request<v1::GetPipelineRequest>,
    ) -> Result<Response<v1::PipelineVersion>, Status> {
        let req = request.into_inner();
        let state = self.control.lock().await;
        let record = state
            .pipelines
            .get(&req.name)
            .ok_or_else(|| not_found(&req.name))?;
        let v = if req.version == 0 {
            record.current()
        } else {
            record
                .versions
                .iter()
                .find(|v| v.version == req.version)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "pipeline `{}` has no version {} (it has 1..={})",
                        req.name,
                        req.version,
                        record.current().version
                    ))
                })?
        };
        Ok(Response::new(version_message(&record.name, v)))
    }

    async fn list(
        &self,
        request: Request<v1::ListPipelinesRequest>,
    ) -> Result<Response<v1::ListPipelinesResponse>, Status> {
        let all = request.into_inner().include_deleted;
        let state = self.control.lock().await;
        let pipelines = state
            .pipelines
            .values()
            .filter(|p| all || !p.deleted)
            .map(|p| status_message(p, state.compiled.get(&p.name).map(|c| &**c)))
            .collect();
        Ok(Response::new(v1::ListPipelinesResponse { pipelines }))
    }

    async fn history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        let name = request.into_inner().name;
        let state = self.control.lock().await;
        let record = state.pipelines.get(&name).ok_or_else(|| not_found(&name))?;
        Ok(Response::new(v1::HistoryResponse {
            versions: record
                .versions
                .iter()
                .map(|v| version_message(&name, v))
                .collect(),
        }))
    }

    async fn diff(
        &self,
        request: Request<v1::DiffRequest>,
    ) -> Result<Response<v1::DiffResponse>, Status> {
        let req = request.into_inner();
        let state = self.control.lock().await;
        let record = state
            .pipelines
            .get(&req.name)
            .ok_or_else(|| not_found(&req.name))?;
        let find = |n: u32| {
            let n = if n == 0 { record.current().version } else { n };
            record
                .versions
                .iter()
                .find(|v| v.version == n)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "pipeline `{}` has no version {n} (it has 1..={})",
                        req.name,
                        record.current().version
                    ))
                })
        };
        let b = find(req.to_version)?;
        let a = match req.from_version {
            // The version before `to`.
            0 if b.version <= 1 => {
                return Err(Status::invalid_argument(format!(
                    "from_version: pipeline `{}` has no version before {}: expected a version to compare with",
                    req.name, b.version
                )))
            }
            0 => find(b.version - 1)?,
            n => find(n)?,
        };
        let unified = similar::TextDiff::from_lines(&a.yaml, &b.yaml)
            .unified_diff()
            .context_radius(3)
            .header(
                &format!("{} v{}", req.name, a.version),
                &format!("{} v{}", req.name, b.version),
            )
            .to_string();
        Ok(Response::new(v1::DiffResponse {
            unified,
            summary: summarize(&a.yaml, &b.yaml),
        }))
    }

    async fn delete(
        &self,
        request: Request<v1::PipelineName>,
    ) -> Result<Response<v1::PipelineStatus>, Status> {
        let name = request.into_inner().name;
        let live = {
            let state = self.control.lock().await;
            state.pipelines.get(&name).is_some_and(|p| !p.deleted)
        };
        if live {
            // The ingest stream keeps its events after they were processed (for replays);
            // once the pipeline is gone nothing routes them, and the unknown-pipeline watcher
            // would dead-letter every one it still holds. Purged first, before any worker
            // learns the pipeline is gone; events sent after the delete are dead-lettered
            // (a publisher still sending to it should see that). Its history stream stays
            // for backtests.
            let subject = anom_pipeline::subjects::input_subject(&name);
            match self
                .control
                .js
                .get_stream(anom_pipeline::subjects::INGEST_STREAM)
                .await
            {
                Ok(stream) => match stream.purge().filter(&subject).await {
                    Ok(p) => tracing::info!(pipeline = %name, purged = p.purged, "input purged"),
                    Err(e) => {
                        return Err(Status::unavailable(format!(
                            "cannot purge the input of `{name}` ({subject}) from the ingest stream: {e}"
                        )))
                    }
                },
                Err(e) => {
                    return Err(Status::unavailable(format!(
                        "cannot read the ingest stream: {e}"
                    )))
                }
            }
        }
        self.set(name, |p| p.deleted = true, "pipeline deleted")
            .await
    }

    async fn pause(
        &self,
        request: Request<v1::PipelineName>,
    ) -> Result<Response<v1::PipelineStatus>, Status> {
        self.set(
            request.into_inner().name,
            |p| p.paused = true,
            "pipeline paused",
        )
        .await
    }

    async fn resume(
        &self,
        request: Request<v1::PipelineName>,
    ) -> Result<Response<v1::PipelineStatus>, Status> {
        self.set(
            request.into_inner().name,
            |p| p.paused = false,
            "pipeline resumed",
        )
        .await
    }
}

impl PipelineService {
    async fn set(
        &self,
        name: String,
        change: impl FnOnce(&mut PipelineRecord),
        why: &str,
    ) -> Result<Response<v1::PipelineStatus>, Status> {
        let control = &self.control;
        let mut state = control.lock().await;
        let mut record = state
            .pipelines
            .get(&name)
            .filter(|p| !p.deleted)
            .cloned()
            .ok_or_else(|| not_found(&name))?;
        change(&mut record);
        record.updated_at_ms = wall_ms();
        control
            .store
            .put_pipeline(&record)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if record.deleted {
            state.compiled.remove(&name);
        }
        let status = status_message(&record, state.compiled.get(&name).map(|c| &**c));
        state.pipelines.insert(name, record);
        control.rebalance(&mut state, true, why).await;
        Ok(Response::new(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_what_changed_by_name() {
        let a = "name: p\nkey: k\nschema:\n  k: string\n  n: int\nrules:\n  - name: big\n    when: n > 5\n  - name: neg\n    when: n < 0\n";
        let b = "name: p\nkey: k\npartitions: 4\nschema:\n  k: string\n  n: float\nrules:\n  - name: big\n    when: n > 50\n  - name: zero\n    when: n == 0\n";
        assert_eq!(
            summarize(a, b),
            vec![
                "partitions added",
                "rule big changed",
                "rule neg removed",
                "rule zero added",
                "field n changed",
            ]
        );
    }

    #[test]
    fn whole_numbers_in_a_struct_become_integers() {
        use prost_types::value::Kind;
        let v = |k| prost_types::Value { kind: Some(k) };
        let s = prost_types::Struct {
            fields: [
                ("partitions".to_string(), v(Kind::NumberValue(4.0))),
                ("ratio".to_string(), v(Kind::NumberValue(0.5))),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            struct_to_json(s),
            serde_json::json!({"partitions": 4, "ratio": 0.5})
        );
    }
}
