//! The coordinator's HTTP API beyond ingest, against a real `anom coordinator`, a real worker
//! and a real nats-server: every route of pipelines, alerts, silences, backtests, workers and
//! assignments, with their refusals in the gRPC services' own words, and an alert's changes
//! followed live over server-sent events.

use std::time::Duration;

use anom_proto::v1;
use anom_proto::v1::pipelines_client::PipelinesClient;
use serde_json::{json, Value};

use crate::support::{
    coordinator_channel, free_addr, spawn_cluster_worker, spawn_coordinator, wait_for, Env,
};

const ORDERS: &str = r#"name: orders
key: user
partitions: 2
schema:
  user:   { type: string, required: true }
  amount: float
rules:
  - name: big
    when: amount > 100
"#;

/// An answer: status, Content-Type, body (JSON when it is).
struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// A refusal: problem+json with this status; its detail.
    fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.text
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        p["detail"].as_str().unwrap_or_default().to_string()
    }
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn send(&self, r: reqwest::RequestBuilder) -> Answer {
        let resp = r.send().await.expect("the HTTP API answers");
        Answer {
            status: resp.status().as_u16(),
            content_type: resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            text: resp.text().await.unwrap_or_default(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post_json(&self, path: &str, body: Value) -> Answer {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn post_yaml(&self, path: &str, yaml: &str) -> Answer {
        self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/yaml")
                .body(yaml.to_string()),
        )
        .await
    }

    /// Server-sent events of `path`, as (event, data) pairs, read as they come.
    async fn events(&self, path: &str) -> Events {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the HTTP API answers");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            resp,
            buffer: String::new(),
        }
    }
}

struct Events {
    resp: reqwest::Response,
    buffer: String,
}

impl Events {
    /// The next event whose data satisfies `want`, within `timeout`.
    async fn until(&mut self, timeout: Duration, want: impl Fn(&str, &Value) -> bool) -> Value {
        let found = tokio::time::timeout(timeout, async {
            loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut event = "message";
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(e) = line.strip_prefix("event:") {
                            event = e.trim();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    if want(event, &data) {
                        return data;
                    }
                }
                let chunk = self.resp.chunk().await.expect("the event stream reads");
                let chunk = chunk.expect("the event stream stays open");
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await;
        found.expect("the awaited event arrives")
    }
}

async fn start(
    env: &Env,
    worker: bool,
) -> (Api, tonic::transport::Channel, Vec<tokio::process::Child>) {
    let (grpc, http) = (free_addr(), free_addr());
    let mut children = vec![spawn_coordinator(
        &env.url(),
        grpc,
        &env.dir.path().join("coordinator"),
        &["--http-addr", &http.to_string()],
    )];
    let ch = coordinator_channel(grpc).await;
    if worker {
        children.push(spawn_cluster_worker(
            &env.url(),
            grpc,
            "w1",
            &env.dir.path().join("w1"),
            &[],
        ));
    }
    (
        Api {
            base: format!("http://{http}"),
            client: reqwest::Client::new(),
        },
        ch,
        children,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_checked_applied_read_compared_paused_and_deleted_over_http_with_the_services_refusals(
) {
    let env = Env::start().await;
    let (api, ch, _children) = start(&env, false).await;
    let mut grpc = PipelinesClient::new(ch.clone());

    // Check: a located problem, the same text as the gRPC service (and `anom check`) gives.
    let broken = ORDERS.replace("amount > 100", "amount >");
    let a = api.post_yaml("/v1/check?source=orders.yaml", &broken).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let report = a.json();
    assert_eq!(report["valid"], false);
    let expected = grpc
        .validate(v1::ValidateRequest {
            definition: Some(v1::Definition {
                source: Some(v1::definition::Source::Yaml(broken.clone())),
                source_name: "orders.yaml".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report["problems"][0]["text"], expected.problems[0].text);
    assert_eq!(report["problems"][0]["line"], 9);
    assert!(
        report["problems"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("orders.yaml:9:"),
        "{report}"
    );
    let a = api.post_yaml("/v1/check", ORDERS).await;
    assert_eq!(a.json()["valid"], true, "{}", a.text);
    assert_eq!(a.json()["plan"]["key"], "user");

    // Apply: YAML text; the same again stores nothing; JSON with a comment is version 2.
    let a = api
        .post_yaml("/v1/pipelines?comment=first&author=ana", ORDERS)
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json()["version"]["version"], 1);
    assert_eq!(a.json()["changed"], true);
    let a = api.post_yaml("/v1/pipelines", ORDERS).await;
    assert_eq!((a.status, a.json()["changed"].clone()), (200, json!(false)));
    let mut doc: Value = serde_norway::from_str(ORDERS).unwrap();
    doc["rules"][0]["when"] = json!("amount > 200");
    let a = api
        .post_json(
            "/v1/pipelines",
            json!({"definition": doc, "comment": "raise the limit", "author": "bo"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json()["version"]["version"], 2);
    assert_eq!(a.json()["version"]["author"], "bo");

    // A definition that does not compile is refused as gRPC refuses it, each problem located.
    let a = api
        .post_yaml("/v1/pipelines?source=orders.yaml", &broken)
        .await;
    let detail = a.problem(400);
    let refused = grpc
        .apply(v1::ApplyRequest {
            definition: Some(v1::Definition {
                source: Some(v1::definition::Source::Yaml(broken.clone())),
                source_name: "orders.yaml".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(detail, refused.message());
    assert_eq!(a.json()["problems"][0]["line"], 9, "{}", a.text);

    // Bodies and queries that are not what a route takes.
    let a = api
        .send(
            api.client
                .post(format!("{}/v1/pipelines", api.base))
                .header("content-type", "text/plain")
                .body(ORDERS),
        )
        .await;
    assert!(a
        .problem(415)
        .contains("Content-Type `text/plain` is not accepted"));
    let a = api
        .post_json("/v1/pipelines", json!({"yaml": ORDERS, "definition": doc}))
        .await;
    assert!(a.problem(400).contains("expected exactly one of `yaml`"));
    let a = api.post_json("/v1/pipelines", json!({"yml": ORDERS})).await;
    assert!(a.problem(400).contains("unknown field `yml`"), "{}", a.text);
    let a = api.get("/v1/pipelines?include_deletd=true").await;
    assert!(
        a.problem(400).contains("unknown field `include_deletd`"),
        "{}",
        a.text
    );

    // Reading: the list, one pipeline, its versions, one version, a diff.
    let a = api.get("/v1/pipelines").await;
    let list = a.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{}", a.text);
    assert_eq!(list[0]["name"], "orders");
    assert_eq!(list[0]["current_version"], 2);
    assert_eq!(list[0]["partitions"], 2);
    let detail = api.get("/v1/pipelines/orders").await.json();
    assert_eq!(detail["status"]["versions"], 2);
    assert!(detail["definition"]["yaml"]
        .as_str()
        .unwrap()
        .contains("amount > 200"));
    let versions = api.get("/v1/pipelines/orders/versions").await.json();
    assert_eq!(versions[0]["comment"], "first");
    assert_eq!(versions[1]["comment"], "raise the limit");
    assert!(versions[0]["applied_at"].as_str().unwrap().ends_with('Z'));
    let v1 = api.get("/v1/pipelines/orders/versions/1").await.json();
    assert_eq!(v1["yaml"], ORDERS);
    assert!(api
        .get("/v1/pipelines/orders/versions/9")
        .await
        .problem(404)
        .contains("pipeline `orders` has no version 9 (it has 1..=2)"));
    assert!(api
        .get("/v1/pipelines/orders/versions/0")
        .await
        .problem(400)
        .contains("found 0"));
    let diff = api.get("/v1/pipelines/orders/diff").await.json();
    assert!(
        diff["unified"]
            .as_str()
            .unwrap()
            .contains("+  when: amount > 200"),
        "{diff}"
    );
    assert_eq!(diff["summary"], json!(["rule big changed"]));
    assert!(api
        .get("/v1/pipelines/orders/diff?from=1&to=1&x=2")
        .await
        .problem(400)
        .contains("unknown field `x`"));
    let a = api.get("/v1/pipelines/order").await;
    assert!(a.problem(404).contains("`order`"), "{}", a.text);

    // Pause, resume, delete.
    let a = api
        .send(
            api.client
                .post(format!("{}/v1/pipelines/orders/pause", api.base)),
        )
        .await;
    assert_eq!(a.json()["paused"], true, "{}", a.text);
    let a = api
        .send(
            api.client
                .post(format!("{}/v1/pipelines/orders/resume", api.base)),
        )
        .await;
    assert_eq!(a.json()["paused"], false, "{}", a.text);
    let a = api
        .send(
            api.client
                .delete(format!("{}/v1/pipelines/orders", api.base)),
        )
        .await;
    assert_eq!(a.json()["deleted"], true, "{}", a.text);
    assert_eq!(api.get("/v1/pipelines").await.json(), json!([]));
    assert_eq!(
        api.get("/v1/pipelines?include_deleted=true").await.json()[0]["deleted"],
        true
    );
    assert_eq!(
        api.send(
            api.client
                .post(format!("{}/v1/pipelines/nope/pause", api.base))
        )
        .await
        .status,
        404
    );

    // Workers and assignments (none here), and their refusals.
    assert_eq!(api.get("/v1/workers").await.json(), json!([]));
    let a = api.get("/v1/assignments").await;
    assert!(a.json()["generation"].is_u64(), "{}", a.text);
    assert!(api
        .get("/v1/assignments?pipeline=nope")
        .await
        .problem(404)
        .contains("nope"));

    // Every route is in the OpenAPI document; unknown routes say where the routes are.
    let doc = api.get("/v1/openapi.json").await.json();
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/v1/pipelines",
        "/v1/check",
        "/v1/pipelines/{pipeline}",
        "/v1/pipelines/{pipeline}/versions/{version}",
        "/v1/pipelines/{pipeline}/diff",
        "/v1/pipelines/{pipeline}/pause",
        "/v1/pipelines/{pipeline}/events",
        "/v1/alerts",
        "/v1/alerts/live",
        "/v1/pipelines/{pipeline}/alerts/{id}/acknowledge",
        "/v1/silences",
        "/v1/pipelines/{pipeline}/silences/{id}/expire",
        "/v1/pipelines/{pipeline}/backtests",
        "/v1/backtests/{id}/report",
        "/v1/workers",
        "/v1/assignments",
    ] {
        assert!(paths.contains(&p), "{p} is not in {paths:?}");
    }
    assert!(api
        .get("/v2/nothing")
        .await
        .problem(404)
        .contains("/v1/openapi.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_seen_live_acknowledged_resolved_silenced_and_backtested_over_http() {
    let env = Env::start().await;
    let (api, _ch, mut children) = start(&env, true).await;
    let a = api.post_yaml("/v1/pipelines", ORDERS).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let running = wait_for(Duration::from_secs(60), || async {
        let a = api.get("/v1/assignments?pipeline=orders").await.json();
        let workers = api.get("/v1/workers").await.json();
        a["units"].as_array().is_some_and(|u| !u.is_empty())
            && a["unassigned"].as_array().is_some_and(Vec::is_empty)
            && workers[0]["running_units"] == workers[0]["assigned_units"]
            && workers[0]["alive"] == true
    })
    .await;
    assert!(running, "{}", api.get("/v1/assignments").await.text);
    assert!(api
        .get("/v1/alerts/live?pipeline=nope")
        .await
        .problem(404)
        .contains("nope"));
    let mut live = api.events("/v1/alerts/live?pipeline=orders").await;

    // An event sent over HTTP raises an alert; it arrives on the live stream.
    let sent = api
        .send(
            api.client
                .post(format!("{}/v1/pipelines/orders/events", api.base))
                .header("content-type", "application/x-ndjson")
                .body("{\"user\":\"ann\",\"amount\":5}\n{\"user\":\"kim\",\"amount\":1000}\n"),
        )
        .await;
    assert_eq!(sent.json()["accepted"], 2, "{}", sent.text);
    let raised = live
        .until(Duration::from_secs(60), |event, a| {
            event == "alert" && a["key"] == "kim" && a["status"] == "firing"
        })
        .await;
    assert_eq!(raised["rule"], "big");
    let id = raised["id"].as_str().unwrap().to_string();

    // Listed by its filters; refused filters say what was expected.
    let page = api
        .get("/v1/alerts?pipeline=orders&status=firing,acknowledged")
        .await
        .json();
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["alerts"][0]["id"], id.as_str());
    assert_eq!(
        api.get("/v1/alerts?pipeline=orders&status=resolved")
            .await
            .json()["total"],
        0
    );
    assert!(api
        .get("/v1/alerts?status=open")
        .await
        .problem(400)
        .contains("status[0]: expected firing, acknowledged or resolved, found `open`"));
    assert!(api
        .get("/v1/alerts?from=yesterday")
        .await
        .problem(400)
        .contains("from: expected a time as RFC 3339"));
    assert!(api
        .get("/v1/alerts?stauts=firing")
        .await
        .problem(400)
        .contains("did you mean `status`"));
    assert_eq!(
        api.get("/v1/alerts?matcher=rule%3Dbig&from=1h")
            .await
            .json()["total"],
        1
    );
    let one = api
        .get(&format!("/v1/pipelines/orders/alerts/{id}"))
        .await
        .json();
    assert_eq!(one["event"]["amount"], 1000.0, "{one}");
    assert!(api
        .get("/v1/pipelines/orders/alerts/nope")
        .await
        .problem(404)
        .contains("nope"));

    // Acknowledged in the browser's way: the change comes back on the live stream.
    let ack = format!("/v1/pipelines/orders/alerts/{id}/acknowledge");
    assert!(api
        .post_json(&ack, json!({"comment": "who?"}))
        .await
        .problem(400)
        .contains("missing field `by`"));
    assert!(api
        .post_json(&ack, json!({"by": ""}))
        .await
        .problem(400)
        .contains("by: expected who acknowledges or resolves the alert, found nothing"));
    let a = api
        .post_json(&ack, json!({"by": "ana", "comment": "on it"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["applied"], true, "{}", a.text);
    assert_eq!(a.json()["alert"]["status"], "acknowledged");
    let seen = live
        .until(Duration::from_secs(30), |_, a| {
            a["id"] == id.as_str() && a["status"] == "acknowledged"
        })
        .await;
    assert_eq!(seen["acknowledged_by"], "ana");
    assert!(api
        .post_json(&ack, json!({"by": "ana"}))
        .await
        .problem(412)
        .contains("expected a firing alert, found it acknowledged by ana"));
    let a = api
        .post_json(
            &format!("/v1/pipelines/orders/alerts/{id}/resolve"),
            json!({"by": "ana", "comment": "refunded"}),
        )
        .await;
    assert_eq!(a.json()["alert"]["status"], "resolved", "{}", a.text);

    // Silences: refused without matchers or author; added, listed, expired.
    let silences = "/v1/pipelines/orders/silences";
    assert!(api
        .post_json(
            silences,
            json!({"matchers": [], "duration": "1h", "created_by": "ana"})
        )
        .await
        .problem(400)
        .contains("matchers: expected at least one label matcher"));
    assert!(api
        .post_json(
            silences,
            json!({"matchers": ["key=kim"], "duration": "soon", "created_by": "ana"})
        )
        .await
        .problem(400)
        .contains("duration: expected a duration such as `2h`"));
    let a = api
        .post_json(
            silences,
            json!({"matchers": ["key=kim"], "duration": "1h", "created_by": "ana", "comment": "maintenance"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json()["state"], "active");
    let sid = a.json()["id"].as_str().unwrap().to_string();
    let listed = api.get("/v1/silences?pipeline=orders").await.json();
    assert_eq!(listed[0]["id"], sid.as_str(), "{listed}");
    let a = api
        .send(
            api.client
                .post(format!("{}{silences}/{sid}/expire", api.base)),
        )
        .await;
    assert_eq!(a.json()["state"], "expired", "{}", a.text);
    assert_eq!(
        api.get("/v1/silences?pipeline=orders").await.json(),
        json!([])
    );
    assert_eq!(
        api.get("/v1/silences?pipeline=orders&include_expired=true")
            .await
            .json()[0]["id"],
        sid.as_str()
    );

    // A backtest of the current version over what was sent, followed to its end; its report.
    assert!(api
        .post_json(
            "/v1/pipelines/orders/backtests",
            json!({"target": {"draft": ORDERS.replace("amount > 100", "amount >")}})
        )
        .await
        .problem(400)
        .contains("<draft>:9:"));
    let a = api
        .post_json(
            "/v1/pipelines/orders/backtests",
            json!({"compare": {"draft": ORDERS.replace("amount > 100", "amount > 1")}}),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.text);
    let bid = a.json()["id"].as_str().unwrap().to_string();
    let mut progress = api.events(&format!("/v1/backtests/{bid}/progress")).await;
    let done = progress
        .until(Duration::from_secs(60), |e, s| {
            e == "status" && s["state"] != "running"
        })
        .await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["alerts"], json!([1, 2]), "{done}");
    assert_eq!(
        api.get(&format!("/v1/backtests/{bid}")).await.json()["state"],
        "done"
    );
    assert_eq!(
        api.get("/v1/backtests?pipeline=orders").await.json()[0]["id"],
        bid.as_str()
    );
    let report = api.get(&format!("/v1/backtests/{bid}/report")).await;
    assert_eq!(report.content_type, "application/json");
    assert!(report.json().is_object(), "{}", report.text);
    let md = api
        .get(&format!("/v1/backtests/{bid}/report?format=markdown"))
        .await;
    assert!(
        md.content_type.starts_with("text/markdown"),
        "{}",
        md.content_type
    );
    assert!(md.text.contains("orders"), "{}", md.text);
    assert!(api
        .get(&format!("/v1/backtests/{bid}/report?format=pdf"))
        .await
        .problem(400)
        .contains("expected json, markdown or html, found `pdf`"));
    assert_eq!(api.get("/v1/backtests/nope").await.status, 404);
    let a = api
        .send(
            api.client
                .post(format!("{}/v1/backtests/{bid}/cancel", api.base)),
        )
        .await;
    assert_eq!(a.json()["state"], "done", "{}", a.text);

    // A key's series, as the console plots it around an alert: every numeric value of kim.
    let a = api
        .post_json(
            "/v1/pipelines/orders/backtests",
            json!({"plot_key": "kim", "from": "1h"}),
        )
        .await;
    let pid = a.json()["id"].as_str().unwrap().to_string();
    let mut progress = api.events(&format!("/v1/backtests/{pid}/progress")).await;
    progress
        .until(Duration::from_secs(60), |e, s| {
            e == "status" && s["state"] == "done"
        })
        .await;
    let plot = &api.get(&format!("/v1/backtests/{pid}/report")).await.json()["report"]["plot"];
    assert_eq!(plot["key"], "kim", "{plot}");
    assert_eq!(plot["field"], "amount");
    assert_eq!(plot["points"].as_array().map(Vec::len), Some(1), "{plot}");
    assert_eq!(plot["lines"]["amount"][0][1], 1000.0, "{plot}");
    assert!(plot["lines"].get("user").is_none(), "{plot}");

    for mut c in children.drain(..) {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
}

const WITH_N: &str = r#"name: orders
key: user
partitions: 2
schema:
  user:   { type: string, required: true }
  amount: float
  n:      int
rules:
  - name: big
    when: amount > 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_dead_letters_are_read_back_and_replayed_once_the_definition_is_fixed() {
    let env = Env::start().await;
    let js = env.js().await;
    let (api, _ch, mut children) = start(&env, true).await;
    assert_eq!(api.post_yaml("/v1/pipelines", WITH_N).await.status, 201);

    // Refused at the HTTP edge (bob) and by validate after NATS (cy): `n` is not an int.
    let sent = api
        .send(
            api.client
                .post(format!("{}/v1/pipelines/orders/events", api.base))
                .header("content-type", "application/x-ndjson")
                .body("{\"user\":\"ann\",\"amount\":5,\"n\":1}\n{\"user\":\"bob\",\"amount\":500,\"n\":\"three\"}\n"),
        )
        .await;
    assert_eq!(sent.json()["refused"], 1, "{}", sent.text);
    crate::support::publish_events(
        &js,
        "anom.orders.in",
        &[json!({"user": "cy", "amount": 700.0, "n": "four"})],
    )
    .await;
    let both = wait_for(Duration::from_secs(60), || async {
        api.get("/v1/pipelines/orders/dead-letters").await.json()["dead_letters"]
            .as_array()
            .is_some_and(|d| d.len() == 2)
    })
    .await;
    let letters = api.get("/v1/pipelines/orders/dead-letters").await.json();
    assert!(both, "{letters}");
    let d = &letters["dead_letters"];
    assert_eq!(
        (
            d[0]["stage"].as_str(),
            d[0]["kind"].as_str(),
            d[0]["line"].as_u64()
        ),
        (Some("http"), Some("schema"), Some(2))
    );
    assert_eq!(
        d[0]["payload"],
        r#"{"user":"bob","amount":500,"n":"three"}"#
    );
    assert_eq!(
        (d[1]["stage"].as_str(), d[1]["kind"].as_str()),
        (Some("validate"), Some("schema"))
    );
    assert!(
        d[1]["reason"]
            .as_str()
            .unwrap()
            .contains("field `n`: expected int"),
        "{d}"
    );
    assert_eq!(letters["complete"], true);
    let seqs: Vec<u64> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        api.get("/v1/pipelines/orders/dead-letters?stage=validate")
            .await
            .json()["dead_letters"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // The overview counts them: two events stored, two dead letters, nothing waiting.
    let o = api.get("/v1/overview").await.json();
    let orders = &o["pipelines"][0];
    assert_eq!(
        (
            orders["name"].as_str(),
            orders["events"].as_u64(),
            orders["dead_letters"].as_u64()
        ),
        (Some("orders"), Some(2), Some(2)),
        "{o}"
    );
    assert_eq!(
        (o["workers"].as_u64(), o["workers_alive"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(orders["units"], 3, "{o}");

    // The events as stored: ann decoded, cy with why the current schema refuses it.
    let page = api.get("/v1/pipelines/orders/events").await.json();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{page}");
    assert_eq!(events[0]["key"], "ann");
    assert_eq!(
        events[0]["event"],
        json!({"user": "ann", "amount": 5.0, "n": 1})
    );
    assert_eq!(events[1]["refused"]["kind"], "schema", "{page}");
    let ann = api
        .get("/v1/pipelines/orders/events?key=ann&limit=5")
        .await
        .json();
    assert_eq!(ann["events"].as_array().map(Vec::len), Some(1), "{ann}");
    assert!(api
        .get("/v1/pipelines/orders/events?limit=0")
        .await
        .problem(400)
        .contains("limit"));
    assert!(api
        .get("/v1/pipelines/orders/events?from=yesterday")
        .await
        .problem(400)
        .contains("from: expected a time as RFC 3339"));
    assert_eq!(api.get("/v1/pipelines/nope/events").await.status, 404);

    // Replayed before the fix: still refused, nothing sent, both kept.
    let replay = "/v1/pipelines/orders/dead-letters/replay";
    assert!(api
        .post_json(replay, json!({"sequences": []}))
        .await
        .problem(400)
        .contains("found none"));
    let r = api
        .post_json(replay, json!({"sequences": seqs}))
        .await
        .json();
    assert_eq!(r["replayed"], json!([]), "{r}");
    assert_eq!(r["still_refused"][0]["kind"], "schema", "{r}");
    assert_eq!(r["still_refused"].as_array().map(Vec::len), Some(2));

    // Fixed (`n` may be text), replayed: sent through the pipeline, which now alerts on them.
    let fixed = WITH_N.replace("n:      int", "n:      string");
    assert_eq!(api.post_yaml("/v1/pipelines", &fixed).await.status, 201);
    let r = api
        .post_json(replay, json!({"sequences": [seqs[0], seqs[1], 999_999]}))
        .await
        .json();
    assert_eq!(r["replayed"], json!(seqs), "{r}");
    assert_eq!(r["not_found"], json!([999_999]));
    assert_eq!(
        api.get("/v1/pipelines/orders/dead-letters").await.json()["dead_letters"],
        json!([])
    );
    // The workers report the version they run: the rollout is visible.
    let rolled_out = wait_for(Duration::from_secs(30), || async {
        let a = api.get("/v1/assignments?pipeline=orders").await.json();
        a["units"].as_array().is_some_and(|u| {
            !u.is_empty()
                && u.iter()
                    .all(|u| u["version"] == 2 && u["running_version"] == 2)
        })
    })
    .await;
    assert!(
        rolled_out,
        "{}",
        api.get("/v1/assignments?pipeline=orders").await.text
    );
    let alerted = wait_for(Duration::from_secs(60), || async {
        api.get("/v1/alerts?pipeline=orders&rule=big").await.json()["total"] == 2
    })
    .await;
    assert!(
        alerted,
        "{}",
        api.get("/v1/alerts?pipeline=orders").await.text
    );
    let r = api
        .post_json(replay, json!({"sequences": [seqs[0]]}))
        .await
        .json();
    assert_eq!(r["not_found"], json!([seqs[0]]), "replayed once only: {r}");

    for mut c in children.drain(..) {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
}
