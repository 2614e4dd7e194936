//! POSTs each alert record (JSON, see docs/alerts.md) to a URL.
//!
//! Headers: `Content-Type: application/json`, `Idempotency-Key: <alert id>` (a redelivery
//! after a crash repeats the same key, so receivers can drop the duplicate), plus the
//! sink's own `headers`. 2xx is delivered; 408, 429 and 5xx, timeouts and connection errors
//! are retried; other 4xx are dead-lettered at once.

use std::time::Duration;

use crate::pipeline::WebhookDef;
use crate::runtime::{Delivery, Sink, SinkOptions};

pub struct Webhook {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
}

impl Webhook {
    pub fn new(def: &WebhookDef) -> Result<Webhook, String> {
        let url = reqwest::Url::parse(&def.url)
            .map_err(|e| format!("webhook `{}`: bad url: {e}", def.name))?;
        let client = reqwest::Client::builder()
            .timeout(def.timeout)
            .connect_timeout(def.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("webhook `{}`: {e}", def.name))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &def.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("webhook `{}`: header `{k}`: {e}", def.name))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("webhook `{}`: header `{k}`: {e}", def.name))?;
            headers.insert(name, value);
        }
        Ok(Webhook {
            name: def.name.clone(),
            url,
            client,
            headers,
        })
    }

    pub fn options(def: &WebhookDef) -> SinkOptions {
        SinkOptions {
            max_attempts: def.max_attempts,
            backoff: def.backoff,
            max_backoff: def.max_backoff,
            concurrency: 4,
        }
    }
}

/// The alert id, read without decoding the whole record.
fn alert_id(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(payload).ok().map(|i| i.id)
}

impl Sink for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, payload: &[u8]) -> Delivery {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload.to_vec());
        if let Some(id) = alert_id(payload) {
            request = request.header("Idempotency-Key", id);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => Delivery::Delivered,
            Ok(r) => {
                let status = r.status();
                if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                    Delivery::Retry(format!("HTTP {status}"))
                } else {
                    Delivery::Fail(format!("HTTP {status}"))
                }
            }
            Err(e) if e.is_timeout() => Delivery::Retry(format!("timed out: {e}")),
            Err(e) => Delivery::Retry(format!("{e}")),
        }
    }
}
