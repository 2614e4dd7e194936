//! POSTs each notification (JSON, the body documented in docs/alerts.md) to a URL.
//!
//! Headers: `Content-Type: application/json`, `Idempotency-Key: <notification id>` (a
//! notification re-sent after a crash repeats the same key, so receivers can drop the
//! duplicate), plus the sink's own `headers`. 2xx is delivered; 408, 429 and 5xx, timeouts
//! and connection errors are retried; other 4xx are dead-lettered at once.
//!
//! With a `secret`, each request also carries `X-Anom-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256(secret, "<t>.<body>")>`, as Stripe signs its webhooks: the receiver recomputes
//! the MAC over the exact body it got to know the request came from Anom, and refuses an old
//! `t` so a captured request cannot be replayed later.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{http_client, http_delivery, Delivery};
use crate::alerting::Notification;
use anom_pipeline::WebhookDef;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Anom-Signature";

pub struct Webhook {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
    secret: Option<Vec<u8>>,
}

impl Webhook {
    pub fn new(def: &WebhookDef) -> Result<Webhook, String> {
        let url = reqwest::Url::parse(&def.url).map_err(|e| format!("bad url: {e}"))?;
        let client = http_client(def.timeout)?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &def.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header `{k}`: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("header `{k}`: {e}"))?;
            headers.insert(name, value);
        }
        let secret = super::secret(def.secret.as_ref(), def.secret_env.as_deref(), "secret_env")?;
        Ok(Webhook {
            name: def.name.clone(),
            url,
            client,
            headers,
            secret: secret.map(String::into_bytes),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send(&self, n: &Notification) -> Delivery {
        let body = serde_json::to_vec(n).expect("notifications serialize");
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", n.id.as_str());
        if let Some(secret) = &self.secret {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request.header(SIGNATURE_HEADER, signature(secret, t, &body));
        }
        http_delivery(request.body(body).send().await).await
    }
}

/// The `X-Anom-Signature` value of `body` sent at `t` (unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

#[cfg(test)]
mod tests {
    /// The example of RFC 4231 (test case 2), so the MAC is the standard HMAC-SHA256.
    #[test]
    fn signs_with_hmac_sha256() {
        // HMAC("Jefe", "what do ya want for nothing?"): here the message is "<t>.<body>".
        let s = super::signature(b"Jefe", 0, b"what do ya want for nothing?");
        let expected_of = |msg: &[u8]| {
            use hmac::{KeyInit, Mac};
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
            m.update(msg);
            m.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(
            expected_of(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            s,
            format!("t=0,v1={}", expected_of(b"0.what do ya want for nothing?"))
        );
    }
}
