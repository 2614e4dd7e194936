//! POSTs each notification (JSON, the body documented in docs/alerts.md) to a URL.
//!
//! Headers: `Content-Type: application/json`, `Idempotency-Key: <notification id>` (a
//! notification re-sent after a crash repeats the same key, so receivers can drop the
//! duplicate), plus the sink's own `headers`. 2xx is delivered; 408, 429 and 5xx, timeouts
//! and connection errors are retried; other 4xx are dead-lettered at once.

use std::time::Duration;

use super::{http_outcome, Delivery};
use crate::alerting::Notification;
use crate::pipeline::WebhookDef;

pub struct Webhook {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
}

impl Webhook {
    pub fn new(def: &WebhookDef) -> Result<Webhook, String> {
        let url = reqwest::Url::parse(&def.url).map_err(|e| format!("bad url: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(def.timeout)
            .connect_timeout(def.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| e.to_string())?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &def.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header `{k}`: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("header `{k}`: {e}"))?;
            headers.insert(name, value);
        }
        Ok(Webhook {
            name: def.name.clone(),
            url,
            client,
            headers,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send(&self, n: &Notification) -> Delivery {
        let body = serde_json::to_vec(n).expect("notifications serialize");
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", n.id.as_str())
            .body(body);
        http_outcome(request.send().await)
    }
}
