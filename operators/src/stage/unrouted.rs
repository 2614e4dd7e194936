//! Events sent to `anom.<name>.in` for a pipeline that is not loaded. They land in the ingest
//! stream like any other; a watcher notices their subjects and dead-letters them with a
//! reason (and a suggestion), so a typo in a publisher's subject is visible, not silent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use anom_pipeline::rejection::{RejectKind, Rejection};
use anom_pipeline::subjects::{input_subject, pipeline_of, INGEST_STREAM, INGEST_SUBJECTS};
use anom_runtime::metrics::Metrics;
use anom_runtime::{run_stage, Binding, Emitter, Input, Runtime, Stage};

pub const NAME: &str = "ingest";

/// Refuses every input: its pipeline does not exist.
pub struct Unrouted {
    name: String,
    known: Vec<String>,
}

impl Stage for Unrouted {
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection> {
        let known: Vec<&str> = self.known.iter().map(String::as_str).collect();
        let rejection = Rejection::new(
            RejectKind::UnknownPipeline,
            format!(
                "no pipeline named `{}` is loaded (loaded: {}){}",
                self.name,
                known.join(", "),
                anom_lang::suggest::did_you_mean(&self.name, known.iter().copied())
            ),
        );
        out.reject(input, &self.name, input.payload, 0, None, &rejection);
        Ok(())
    }
}

/// Most distinct unknown pipelines watched at once; a flood of random subjects must not
/// create unbounded consumers.
const MAX_WATCHED: usize = 100;

/// Polls the ingest stream's subjects and starts a dead-lettering stage for each unknown one.
pub async fn watch(
    rt: Runtime,
    known: Vec<String>,
    metrics: Arc<Metrics>,
    every: Duration,
    fence: anom_runtime::fence::Fence,
) {
    let mut watched: HashSet<String> = HashSet::new();
    let mut tasks = Vec::new();
    loop {
        match rt.js.get_stream(INGEST_STREAM).await {
            Ok(stream) => match stream.info_with_subjects(INGEST_SUBJECTS).await {
                Ok(subjects) => {
                    use futures::StreamExt;
                    let subjects: Vec<_> = subjects.collect().await;
                    for item in subjects.into_iter().flatten() {
                        let subject = item.0;
                        let Some(name) = pipeline_of(&subject) else {
                            continue;
                        };
                        if known.iter().any(|k| k == name) || watched.contains(name) {
                            continue;
                        }
                        if watched.len() >= MAX_WATCHED {
                            warn!(
                                subject,
                                "too many unknown pipelines; not dead-lettering this one"
                            );
                            continue;
                        }
                        info!(
                            pipeline = name,
                            "events for an unknown pipeline; dead-lettering them"
                        );
                        watched.insert(name.to_string());
                        let binding = Binding {
                            pipeline: name.to_string(),
                            stage: NAME,
                            stream: INGEST_STREAM.to_string(),
                            durable: format!(
                                "unrouted-{:016x}",
                                xxhash_rust::xxh3::xxh3_64(name.as_bytes())
                            ),
                            filter_subject: input_subject(name),
                            fence: fence.clone(),
                            predecessors: Vec::new(),
                            ordered: None,
                        };
                        let stage = Box::new(Unrouted {
                            name: name.to_string(),
                            known: known.clone(),
                        });
                        let m = metrics.stage(name, NAME);
                        tasks.push(tokio::spawn(run_stage(
                            rt.clone(),
                            binding,
                            stage,
                            m,
                            None,
                            None,
                        )));
                    }
                }
                Err(e) => warn!(error = %e, "cannot list ingest subjects"),
            },
            Err(e) => warn!(error = %e, "cannot read the ingest stream"),
        }
        tokio::select! {
            _ = rt.shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}
