//! alert: turns each rule hit into an alert record with its message and explanation, and
//! publishes it to `anom.<p>.alerts`, the stream every sink reads from.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::alert::{rfc3339_ms, rfc3339_us, Alert, Source};
use crate::envelope::Envelope;
use crate::metrics::{AlertLabels, Metrics, PipelineLabels};
use crate::pipeline::template::Context;
use crate::pipeline::{Pipeline, Rule};
use crate::rejection::Rejection;
use crate::runtime::{Emitter, Input, Stage};
use crate::subjects::INGEST_STREAM;

pub const NAME: &str = "alert";

pub struct AlertStage {
    pipeline: Arc<Pipeline>,
    /// Alert counters per rule (by the rule's severity), resolved once.
    alerts: Vec<Counter>,
    latency: Histogram,
}

impl AlertStage {
    pub fn new(pipeline: Arc<Pipeline>, metrics: &Metrics) -> AlertStage {
        let alerts = pipeline
            .rules
            .iter()
            .map(|r| {
                metrics.alerts.get_or_create_owned(&AlertLabels {
                    pipeline: pipeline.name.clone(),
                    severity: r.severity.to_string(),
                })
            })
            .collect();
        let latency = metrics
            .ingest_to_alert_seconds
            .get_or_create_owned(&PipelineLabels {
                pipeline: pipeline.name.clone(),
            });
        AlertStage {
            pipeline,
            alerts,
            latency,
        }
    }

    fn record(&self, env: &Envelope, rule: &Rule, now_us: i64) -> Alert {
        let p = &*self.pipeline;
        let severity = rule.severity.to_string();
        let message = rule.message.render(
            &env.data,
            &Context {
                key: &env.meta.key,
                rule: &rule.name,
                severity: &severity,
            },
        );
        Alert {
            id: format!(
                "{}:{}:{}:{}",
                p.name, rule.name, env.meta.origin_seq, env.meta.origin_index
            ),
            pipeline: p.name.clone(),
            pipeline_version: p.version.clone(),
            rule: rule.name.clone(),
            severity: rule.severity,
            key: env.meta.key.clone(),
            message,
            explanation: explain(p, rule, env),
            event_time: rfc3339_ms(env.meta.event_time),
            ingest_time: rfc3339_us(env.meta.ingest_time_us),
            raised_at: rfc3339_us(now_us),
            labels: rule.labels.clone(),
            event: p
                .schema
                .fields()
                .iter()
                .zip(&env.data)
                .map(|(f, v)| (f.name.clone(), v.to_json()))
                .collect(),
            source: Source {
                stream: INGEST_STREAM.to_string(),
                sequence: env.meta.origin_seq,
                index: env.meta.origin_index,
            },
        }
    }
}

/// "`durationMs > 5000` held for key SFTP-A: durationMs = 7200".
fn explain(p: &Pipeline, rule: &Rule, env: &Envelope) -> String {
    let values: Vec<String> = rule
        .condition
        .fields()
        .into_iter()
        .filter_map(|i| {
            let name = &p.schema.field(i)?.name;
            let value = env.data.get(i)?;
            Some(if value.is_null() {
                format!("{name} is missing")
            } else {
                format!("{name} = {value}")
            })
        })
        .collect();
    if values.is_empty() {
        format!(
            "`{}` held for key {}",
            rule.condition.source(),
            env.meta.key
        )
    } else {
        format!(
            "`{}` held for key {}: {}",
            rule.condition.source(),
            env.meta.key,
            values.join(", ")
        )
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Stage for AlertStage {
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection> {
        let p = &*self.pipeline;
        let env = super::rules::open(p, input.payload)?;
        let now = now_us();
        for hit in &env.analysis.hits {
            let Some(rule) = p.rules.get(hit.rule as usize) else {
                continue;
            };
            let alert = self.record(&env, rule, now);
            if let Some(c) = self.alerts.get(hit.rule as usize) {
                c.inc();
            }
            self.latency
                .observe((now - env.meta.ingest_time_us).max(0) as f64 / 1e6);
            let json = serde_json::to_vec(&alert).unwrap_or_default();
            out.emit(p.subjects.alerts.clone(), alert.id, json);
        }
        Ok(())
    }
}
