//! A real HTTP receiver on loopback that records what sinks send it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::wait::wait_for;

/// Requests a receiver got: headers (lowercase names) and JSON body.
pub type Recorded = Arc<Mutex<Vec<(HashMap<String, String>, serde_json::Value)>>>;

/// A real HTTP server that records the JSON bodies POSTed to it.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub bodies: Recorded,
    /// The HTTP status it answers with (200 unless changed).
    pub status: Arc<std::sync::atomic::AtomicU16>,
    /// How long it takes to answer, in ms (0 unless changed); a request is recorded when it
    /// arrives.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
}

impl Receiver {
    /// Listens on `addr` (port 0 for a free one).
    pub async fn start(addr: SocketAddr) -> Receiver {
        Self::start_recording(
            addr,
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(200.into()),
            Arc::new(0.into()),
        )
        .await
    }

    async fn start_recording(
        addr: SocketAddr,
        bodies: Recorded,
        status: Arc<std::sync::atomic::AtomicU16>,
        delay_ms: Arc<std::sync::atomic::AtomicU64>,
    ) -> Receiver {
        use axum::{routing::post, Router};
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let recorded = bodies.clone();
        let answer = status.clone();
        let delay = delay_ms.clone();
        let app = Router::new().route(
            "/hook",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let recorded = recorded.clone();
                    let answer = answer.clone();
                    let delay = delay.clone();
                    async move {
                        let h = headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.to_str().unwrap_or_default().to_string())
                            })
                            .collect();
                        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        recorded.lock().unwrap().push((h, json));
                        let wait = delay.load(std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        let code = answer.load(std::sync::atomic::Ordering::SeqCst);
                        axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::OK)
                    }
                },
            ),
        );
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Receiver {
            addr,
            bodies,
            status,
            delay_ms,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Stops listening; the port is closed, so deliveries fail with connection refused.
    pub async fn stop(&self) {
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Listens again on the same port, keeping what was recorded.
    pub async fn restart(&self) -> Receiver {
        Self::start_recording(
            self.addr,
            self.bodies.clone(),
            self.status.clone(),
            self.delay_ms.clone(),
        )
        .await
    }

    /// Waits until at least `n` requests arrived (or `limit` passes); returns whether they did.
    pub async fn wait_for_ids(&self, n: usize, limit: Duration) -> bool {
        wait_for(limit, || {
            let receiver = self.clone();
            async move { receiver.ids().len() >= n }
        })
        .await
    }

    /// The JSON bodies received, by their `id`: every copy of each, in arrival order.
    pub fn bodies_by_id(&self) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
        let mut by_id: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
            Default::default();
        for (_, b) in self.bodies.lock().unwrap().iter() {
            let id = b["id"].as_str().unwrap_or_default().to_string();
            by_id.entry(id).or_default().push(b.clone());
        }
        by_id
    }

    pub fn ids(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, b)| b.get("id").and_then(|v| v.as_str()).map(str::to_string))
            .collect()
    }
}

/// The notifications a receiver got, in arrival order: each one's group `rule` label and the
/// (key, status) of its alerts.
pub fn notifications(
    receiver: &Receiver,
) -> Vec<(String, std::collections::BTreeSet<(String, String)>)> {
    receiver
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|(_, n)| {
            let alerts = n["alerts"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    (
                        a["key"].as_str().unwrap_or_default().to_string(),
                        a["status"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let rule = n["group_labels"]["rule"].as_str().unwrap_or_default();
            (rule.to_string(), alerts)
        })
        .collect()
}
