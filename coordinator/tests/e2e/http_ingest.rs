//! HTTP ingest (`POST /v1/pipelines/{pipeline}/events`) against a real `anom coordinator`
//! with its HTTP API, a real worker and a real nats-server: every format, refusals with their
//! lines (also dead-lettered), the limits, idempotent retries, and the OpenAPI document.

use std::time::Duration;

use anom_proto::v1;
use anom_proto::v1::pipelines_client::PipelinesClient;
use serde_json::{json, Value};

use crate::support::{
    coordinator_channel, free_addr, read_stream, spawn_cluster_worker, spawn_coordinator,
    stream_len, wait_for, Env,
};

const ORDERS: &str = r#"name: orders
key: user
partitions: 2
max_event_bytes: 512
schema:
  user:   { type: string, required: true }
  amount: float
  n:      int
rules:
  - name: big
    when: amount > 100
"#;

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn post(
        &self,
        pipeline: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, String, Value) {
        self.post_with(pipeline, content_type, body, None).await
    }

    async fn post_with(
        &self,
        pipeline: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> (u16, String, Value) {
        let mut r = self
            .client
            .post(format!("{}/v1/pipelines/{pipeline}/events", self.base))
            .body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        if let Some(k) = idempotency_key {
            r = r.header("idempotency-key", k);
        }
        let resp = r.send().await.expect("the HTTP API answers");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status, ct, body)
    }
}

/// POSTs `line` repeated `times` as NDJSON with `Transfer-Encoding: chunked` (one chunk per
/// 100 lines), over a plain TCP connection: status and JSON body.
async fn chunked_post(
    addr: std::net::SocketAddr,
    path: &str,
    line: &str,
    times: usize,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = line.repeat(100);
    for _ in 0..times / 100 {
        // The server may answer and close once past the limit: later writes can fail.
        let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
        if tcp.write_all(framed.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // The body: after the blank line; chunked or not, the JSON object is in it whole.
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json = body
        .find('{')
        .and_then(|start| body.rfind('}').map(|end| &body[start..=end]))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

async fn apply_orders(ch: &tonic::transport::Channel) {
    PipelinesClient::new(ch.clone())
        .apply(v1::ApplyRequest {
            definition: Some(v1::Definition {
                source: Some(v1::definition::Source::Yaml(ORDERS.into())),
                source_name: "orders.yaml".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn lines(body: &Value) -> Vec<(u64, String)> {
    body["refusals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["line"].as_u64().unwrap_or(0),
                        r["kind"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_over_http_in_every_format_are_stored_refused_by_line_and_alert() {
    let env = Env::start().await;
    let js = env.js().await;
    let (grpc, http) = (free_addr(), free_addr());
    let _coordinator = spawn_coordinator(
        &env.url(),
        grpc,
        &env.dir.path().join("coordinator"),
        &[
            "--http-addr",
            &http.to_string(),
            "--http-max-body",
            "200000",
        ],
    );
    let ch = coordinator_channel(grpc).await;
    apply_orders(&ch).await;
    let mut worker = spawn_cluster_worker(&env.url(), grpc, "w1", &env.dir.path().join("w1"), &[]);
    let api = Api {
        base: format!("http://{http}"),
        client: reqwest::Client::new(),
    };

    // NDJSON: good lines, a blank one, one off the schema, one over max_event_bytes.
    let long = format!(r#"{{"user":"x","note":"{}"}}"#, "y".repeat(600));
    let ndjson = format!(
        "{}\n{}\n\n{}\n{}\n{long}\n{}\n",
        r#"{"user":"ann","amount":5}"#,
        r#"{"user":"bob","amount":7,"n":1}"#,
        r#"{"user":"cid","amount":"lots"}"#,
        r#"{"user":"dee","amount":1}"#,
        r#"{"user":"eve","amount":2}"#
    );
    let (status, _, body) = api
        .post("orders", Some("application/x-ndjson"), ndjson.into_bytes())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 4, "{body}");
    assert_eq!(body["refused"], 2, "{body}");
    assert_eq!(
        lines(&body),
        [(4, "schema".to_string()), (6, "too_large".to_string())]
    );
    assert_eq!(
        body["refusals"][0]["reason"],
        r#"field `amount`: expected float, found string "lots" at line 4 column 29"#
    );

    // CSV with a header row: a row of the wrong width is refused with its line.
    let csv = "user,amount,n\nfay,12.5,3\ngus,1\nhal,500,\n";
    let (status, _, body) = api.post("orders", Some("text/csv"), csv.into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["refused"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(lines(&body), [(3, "decode".to_string())]);

    // MessagePack: two maps in one body, the second off the schema.
    let mut mp = rmp_serde::to_vec_named(&json!({"user": "ida", "amount": 3.0})).unwrap();
    mp.extend(rmp_serde::to_vec_named(&json!({"user": "jon", "n": "three"})).unwrap());
    let (status, _, body) = api.post("orders", Some("application/msgpack"), mp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["refused"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(lines(&body), [(2, "schema".to_string())]);

    // One JSON event that breaks the rule: it alerts like one sent over NATS.
    let (status, _, body) = api
        .post(
            "orders",
            Some("application/json; charset=utf-8"),
            br#"{"user":"kim","amount":1000}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);

    // What was accepted is in the input, what was refused in the dead-letter subject with the
    // same reason and its line.
    assert_eq!(
        read_stream(&js, "ANOM_INGEST", Some("anom.orders.in"))
            .await
            .len(),
        4 + 2 + 1 + 1
    );
    let dead = read_stream(&js, "ANOM_DLQ", Some("anom.orders.dlq")).await;
    let located: Vec<(String, String, String)> = dead
        .iter()
        .map(|m| {
            let h = |k: &str| m.headers.get(k).cloned().unwrap_or_default();
            (
                h("Anom-Source-Line"),
                h("Anom-Reason-Kind"),
                h("Anom-Stage"),
            )
        })
        .collect();
    assert_eq!(
        located,
        [
            ("4".into(), "schema".into(), "http".into()),
            ("6".into(), "too_large".into(), "http".into()),
            ("3".into(), "decode".into(), "http".into()),
            ("2".into(), "schema".into(), "http".into()),
        ]
    );
    assert_eq!(&dead[0].payload[..], br#"{"user":"cid","amount":"lots"}"#);
    // The refused CSV row is kept as the row it was, to be fixed and resent.
    assert_eq!(&dead[2].payload[..], b"gus,1\n");
    let alerted = wait_for(Duration::from_secs(60), || async {
        crate::support::alerts(&js, "ANOM_ORDERS_ALERTS")
            .await
            .iter()
            .any(|a| a["key"] == "kim" && a["rule"] == "big")
    })
    .await;
    assert!(alerted, "the event sent over HTTP alerts");
    let _ = worker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_refuses_what_it_cannot_take_with_a_problem_that_says_why() {
    let env = Env::start().await;
    let js = env.js().await;
    let (grpc, http) = (free_addr(), free_addr());
    let _coordinator = spawn_coordinator(
        &env.url(),
        grpc,
        &env.dir.path().join("coordinator"),
        &["--http-addr", &http.to_string(), "--http-max-body", "20000"],
    );
    let ch = coordinator_channel(grpc).await;
    apply_orders(&ch).await;
    let api = Api {
        base: format!("http://{http}"),
        client: reqwest::Client::new(),
    };
    let problem = "application/problem+json";

    let (status, ct, body) = api
        .post("order", Some("application/json"), b"{}".to_vec())
        .await;
    assert_eq!((status, ct.as_str()), (404, problem));
    assert_eq!(
        body["detail"],
        "no pipeline named `order` (pipelines: orders), did you mean `orders`?"
    );
    assert_eq!(body["status"], 404);

    let (status, ct, body) = api.post("orders", Some("text/plain"), b"hi".to_vec()).await;
    assert_eq!((status, ct.as_str()), (415, problem));
    assert_eq!(
        body["detail"],
        "Content-Type `text/plain` is not accepted: expected one of application/json, application/x-ndjson, text/csv, application/msgpack"
    );
    let (status, _, body) = api.post("orders", None, b"{}".to_vec()).await;
    assert_eq!(status, 415);
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .starts_with("the request has no Content-Type"));

    let big = "{\"user\":\"a\"}\n".repeat(2_000);
    let (status, ct, body) = api
        .post("orders", Some("application/x-ndjson"), big.into_bytes())
        .await;
    assert_eq!((status, ct.as_str()), (413, problem));
    assert_eq!(body["limit_bytes"], 20000);
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .starts_with("the body is larger than the limit of 20000 bytes"));

    let (status, ct, body) = api
        .post(
            "orders",
            Some("application/x-ndjson"),
            b"{\"amount\":1}\nnot json\n".to_vec(),
        )
        .await;
    assert_eq!((status, ct.as_str()), (422, problem));
    assert_eq!(body["accepted"], 0);
    assert_eq!(
        lines(&body),
        [(1, "schema".to_string()), (2, "decode".to_string())]
    );

    let (status, _, body) = api
        .post("orders", Some("text/csv"), b"user,,n\n".to_vec())
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        body["detail"],
        "CSV header, column 2: expected a field name, found an empty cell"
    );
    let (status, _, body) = api
        .post("orders", Some("application/json"), b"  \n".to_vec())
        .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (422, Some("the body holds no event"))
    );

    // The same body sent again with the same Idempotency-Key is stored once.
    let before = stream_len(&js, "ANOM_INGEST").await;
    for _ in 0..2 {
        let (status, _, body) = api
            .post_with(
                "orders",
                Some("application/x-ndjson"),
                b"{\"user\":\"a\"}\n{\"user\":\"b\"}\n".to_vec(),
                Some("retry-1"),
            )
            .await;
        assert_eq!((status, body["accepted"].as_u64()), (200, Some(2)));
    }
    assert_eq!(stream_len(&js, "ANOM_INGEST").await, before + 2);

    // A chunked body (no Content-Length) over the limit: counted as it arrives, refused with
    // 413 once past it, and the whole events before the limit are stored, not lost.
    let before = stream_len(&js, "ANOM_INGEST").await;
    let (status, body) = chunked_post(
        http,
        "/v1/pipelines/orders/events",
        "{\"user\":\"a\"}\n",
        2_000,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let accepted = body["accepted"].as_u64().unwrap();
    assert!(accepted > 1_000 && accepted <= 20_000 / 13, "{body}");
    assert_eq!(stream_len(&js, "ANOM_INGEST").await, before + accepted);

    // The OpenAPI document describes the route, generated from the code.
    let doc: Value = api
        .client
        .get(format!("{}/v1/openapi.json", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let route = &doc["paths"]["/v1/pipelines/{pipeline}/events"]["post"];
    let types: Vec<&str> = route["requestBody"]["content"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        types,
        [
            "application/json",
            "application/msgpack",
            "application/x-ndjson",
            "text/csv"
        ]
    );
    assert!(route["responses"]["413"].is_object());
    assert!(doc["components"]["schemas"]["IngestReport"].is_object());

    let resp = api
        .client
        .get(format!("{}/v1/nothing", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(resp.headers()["content-type"], problem);
}
