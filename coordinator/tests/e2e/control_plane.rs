//! The coordinator's gRPC API against a real nats-server, a coordinator process and a worker
//! process: pipeline versions, validation errors, rollout without restart (state kept),
//! pause/resume/delete, reflection and health, and the CLI as a client.

use std::time::Duration;

use crate::support::{
    alerts, coordinator_channel, free_addr, spawn_cluster_worker, spawn_coordinator, wait_for, Env,
};
use anom_proto::v1;
use anom_proto::v1::pipelines_client::PipelinesClient;

const V1: &str = r#"name: counts
key: user
partitions: 2
schema:
  user: string
  amount: int
aggregates:
  n: count()
rules:
  - name: second
    when: n == 2
"#;

/// v2 keeps `n`, adds an aggregate and a rule that needs `n`'s history.
const V2: &str = r#"name: counts
key: user
partitions: 2
schema:
  user: string
  amount: int
aggregates:
  n: count()
  total: sum(amount)
rules:
  - name: second
    when: n == 2
  - name: third
    when: n == 3 and total > 0
"#;

fn yaml(text: &str, source: &str) -> Option<v1::Definition> {
    Some(v1::Definition {
        source: Some(v1::definition::Source::Yaml(text.to_string())),
        source_name: source.to_string(),
    })
}

async fn publish(js: &async_nats::jetstream::Context, subject: &str, body: &str) {
    js.publish(subject.to_string(), body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A JSON document as a protobuf `Struct`, as a gRPC client in any language would send it.
fn to_struct(v: &serde_json::Value) -> prost_types::Struct {
    fn value(v: &serde_json::Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.iter().map(value).collect(),
            }),
            serde_json::Value::Object(_) => Kind::StructValue(to_struct(v)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    prost_types::Struct {
        fields: v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    }
}

fn cli(args: &[&str], coordinator: std::net::SocketAddr) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(args)
        .args(["--coordinator", &format!("http://{coordinator}")])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_versioned_over_grpc_and_a_new_version_rolls_out_keeping_unchanged_state() {
    let env = Env::start().await;
    let js = env.js().await;
    let addr = free_addr();
    let _coordinator = spawn_coordinator(
        &env.url(),
        addr,
        &env.dir.path().join("coordinator"),
        &["--lease-ttl", "3s"],
    );
    let ch = coordinator_channel(addr).await;
    let mut api = PipelinesClient::new(ch.clone());

    // Reflection lists every service, as grpcurl would see them.
    {
        let names = crate::support::grpc_services(&ch).await;
        for s in [
            "anom.v1.Pipelines",
            "anom.v1.Cluster",
            "grpc.health.v1.Health",
        ] {
            assert!(names.contains(&s.to_string()), "{s} in {names:?}");
        }
    }

    // A dry run reports the file loader's message, located.
    let bad = V1.replace("n == 2", "n == 2 and amont > 0");
    let v = api
        .validate(v1::ValidateRequest {
            definition: yaml(&bad, "counts.yaml"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    assert_eq!(v.problems.len(), 1);
    let p = &v.problems[0];
    assert!(
        p.text.starts_with("counts.yaml:11:22: rules[0].when: column 12: unknown field `amont`, did you mean `amount`?"),
        "{}",
        p.text
    );
    assert_eq!((p.line, p.column), (11, 22));
    let ok = api
        .validate(v1::ValidateRequest {
            definition: yaml(V1, "counts.yaml"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.valid);
    let plan = ok.plan.unwrap();
    assert_eq!(
        (plan.key.as_str(), plan.partitions, plan.units),
        ("user", 2, 3)
    );
    // Apply refuses what validate refuses, with the same words.
    let err = api
        .apply(v1::ApplyRequest {
            definition: yaml(&bad, "counts.yaml"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("did you mean `amount`?"),
        "{}",
        err.message()
    );

    let applied = api
        .apply(v1::ApplyRequest {
            definition: yaml(V1, "counts.yaml"),
            comment: "first".into(),
            author: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.changed);
    assert_eq!(applied.version.unwrap().version, 1);

    let mut worker = spawn_cluster_worker(
        &env.url(),
        addr,
        "w1",
        &env.dir.path().join("w1"),
        &["--snapshot-every", "1s"],
    );
    // validate, 2 fused units (window, rules, alert), and the unrouted watcher.
    let settled = wait_for(Duration::from_secs(60), || async {
        crate::support::cluster_view(&ch).await.is_some_and(
            |(assigned, unassigned, running, live)| {
                assigned == 4 && unassigned == 0 && running == 4 && live == ["w1"]
            },
        )
    })
    .await;
    assert!(settled, "{:?}", crate::support::cluster_view(&ch).await);

    publish(&js, "anom.counts.in", r#"{"user":"a","amount":5}"#).await;
    publish(&js, "anom.counts.in", r#"{"user":"a","amount":7}"#).await;
    assert!(
        wait_for(Duration::from_secs(30), || async {
            alerts(&js, "ANOM_COUNTS_ALERTS").await.len() == 1
        })
        .await
    );

    // Version 2, rolled out to the running worker; `n` keeps its two events.
    let v2 = api
        .apply(v1::ApplyRequest {
            definition: yaml(V2, "counts.yaml"),
            comment: "add total and third".into(),
            author: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v2.changed);
    assert_eq!(v2.version.unwrap().version, 2);
    let again = api
        .apply(v1::ApplyRequest {
            definition: yaml(V2, "counts.yaml"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed, "the same text makes no new version");
    // The worker restarts the units at version 2.
    let rolled = wait_for(Duration::from_secs(30), || async {
        let mut c = v1::cluster_client::ClusterClient::new(ch.clone());
        let a = c
            .list_assignments(v1::ListAssignmentsRequest {
                pipeline: "counts".into(),
            })
            .await
            .unwrap()
            .into_inner();
        a.units.iter().all(|u| u.version == 2)
    })
    .await;
    assert!(rolled);
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&js, "anom.counts.in", r#"{"user":"a","amount":1}"#).await;
    // Version 2 took over version 1's alert: the third event ends `second` (resolved) and
    // raises `third`.
    assert!(
        wait_for(Duration::from_secs(30), || async {
            alerts(&js, "ANOM_COUNTS_ALERTS").await.len() == 3
        })
        .await,
        "{:?}",
        alerts(&js, "ANOM_COUNTS_ALERTS").await
    );
    let all = alerts(&js, "ANOM_COUNTS_ALERTS").await;
    assert_eq!(
        (&all[1]["rule"], &all[1]["status"]),
        (&"second".into(), &"resolved".into())
    );
    assert_eq!(all[1]["id"], all[0]["id"], "{}", all[1]);
    assert_eq!(all[2]["rule"], "third", "{}", all[2]);

    // History, get, diff.
    let h = api
        .history(v1::HistoryRequest {
            name: "counts".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.versions.len(), 2);
    assert_eq!(h.versions[1].comment, "add total and third");
    let got = api
        .get(v1::GetPipelineRequest {
            name: "counts".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.yaml, V1);
    let d = api
        .diff(v1::DiffRequest {
            name: "counts".into(),
            from_version: 1,
            to_version: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.summary, vec!["aggregate total added", "rule third added"]);
    assert!(d.unified.contains("+  total: sum(amount)"), "{}", d.unified);
    let missing = api
        .get(v1::GetPipelineRequest {
            name: "counts".into(),
            version: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // Partitions cannot change under running state.
    let err = api
        .apply(v1::ApplyRequest {
            definition: yaml(&V2.replace("partitions: 2", "partitions: 3"), "counts.yaml"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("cannot change from 2 to 3"),
        "{}",
        err.message()
    );
    // Nor can the key: everything keyed and in flight is grouped by the old one.
    let err = api
        .apply(v1::ApplyRequest {
            definition: yaml(
                &V2.replace("key: user", "key: other")
                    .replace("  amount: int\n", "  amount: int\n  other: string\n"),
                "counts.yaml",
            ),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message()
            .starts_with("counts.yaml: key: cannot change from `user` to `other`"),
        "{}",
        err.message()
    );

    // Pause: events wait; resume: they are processed.
    api.pause(v1::PipelineName {
        name: "counts".into(),
    })
    .await
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || async {
            crate::support::cluster_view(&ch)
                .await
                .is_some_and(|v| v.0 == 1)
        })
        .await,
        "only the unrouted watcher stays assigned"
    );
    publish(&js, "anom.counts.in", r#"{"user":"b","amount":1}"#).await;
    publish(&js, "anom.counts.in", r#"{"user":"b","amount":1}"#).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alerts(&js, "ANOM_COUNTS_ALERTS").await.len(), 3, "paused");
    api.resume(v1::PipelineName {
        name: "counts".into(),
    })
    .await
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || async {
            alerts(&js, "ANOM_COUNTS_ALERTS").await.len() == 4
        })
        .await,
        "resumed: b's second event alerts"
    );

    // A structured definition, with the JSON-style conditions other rule engines use.
    let structured: serde_json::Value = serde_json::json!({
        "name": "jobs",
        "key": "job",
        "schema": {"job": "string", "durationMs": "int", "status": "string"},
        "rules": [{
            "name": "slow_ok",
            "when": {"type": "all", "conditions": [
                {"type": "field_compare", "field": "durationMs", "op": ">", "value": 5000},
                {"type": "field_compare", "field": "status", "op": "==", "value": "OK"}
            ]}
        }]
    });
    let definition = v1::Definition {
        source: Some(v1::definition::Source::Structured(to_struct(&structured))),
        source_name: "jobs.json".into(),
    };
    let typo = {
        let mut t = structured.clone();
        t["rules"][0]["when"]["conditions"][0]["field"] = "durationMS".into();
        v1::Definition {
            source: Some(v1::definition::Source::Structured(to_struct(&t))),
            source_name: "jobs.json".into(),
        }
    };
    let v = api
        .validate(v1::ValidateRequest {
            definition: Some(typo),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    assert!(
        v.problems[0].text.contains("rules[0].when.conditions[0].field: unknown field `durationMS`, did you mean `durationMs`?"),
        "{:?}",
        v.problems
    );
    let jobs = api
        .apply(v1::ApplyRequest {
            definition: Some(definition),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.changed);
    let stored = jobs.version.unwrap().yaml;
    assert!(stored.contains("field_compare"), "stored as YAML: {stored}");
    publish(
        &js,
        "anom.jobs.in",
        r#"{"job":"j1","durationMs":9000,"status":"OK"}"#,
    )
    .await;
    publish(
        &js,
        "anom.jobs.in",
        r#"{"job":"j2","durationMs":9000,"status":"FAILED"}"#,
    )
    .await;
    publish(
        &js,
        "anom.jobs.in",
        r#"{"job":"j3","durationMs":10,"status":"OK"}"#,
    )
    .await;
    assert!(
        wait_for(Duration::from_secs(30), || async {
            alerts(&js, "ANOM_JOBS_ALERTS").await.len() == 1
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fired = alerts(&js, "ANOM_JOBS_ALERTS").await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["key"], "j1");
    api.delete(v1::PipelineName {
        name: "jobs".into(),
    })
    .await
    .unwrap();

    // The CLI is a client of the same API.
    let (ok, out, err) = cli(&["pipeline", "list"], addr);
    assert!(ok, "{err}");
    assert!(out.contains("counts") && out.contains("running"), "{out}");
    let (ok, out, _) = cli(&["pipeline", "diff", "counts"], addr);
    assert!(ok && out.contains("# rule third added"), "{out}");
    let (ok, out, _) = cli(&["workers"], addr);
    assert!(ok && out.contains("w1") && out.contains("live"), "{out}");
    let (ok, out, _) = cli(&["assignments", "--pipeline", "counts"], addr);
    assert!(
        ok && out.contains("counts/keyed/1") && out.contains("w1"),
        "{out}"
    );
    let file = env.dir.path().join("bad.yaml");
    std::fs::write(&file, &bad).unwrap();
    let (ok, _, err) = cli(&["pipeline", "apply", "-f", file.to_str().unwrap()], addr);
    assert!(!ok);
    assert!(err.contains("bad.yaml:11:22: rules[0].when"), "{err}");

    // Delete: gone from the list and from the assignment.
    api.delete(v1::PipelineName {
        name: "counts".into(),
    })
    .await
    .unwrap();
    let listed = api
        .list(v1::ListPipelinesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.pipelines.is_empty());
    assert!(
        wait_for(Duration::from_secs(20), || async {
            crate::support::cluster_view(&ch)
                .await
                .is_some_and(|v| v.0 == 1 && v.2 == 1)
        })
        .await
    );
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
}

/// Regressions from a black-box run with clients no one on the project wrote (issue 18): names
/// that share streams, a diff without a starting version, assignments of an unknown pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_names_are_refused_and_unknowns_are_not_found() {
    let env = Env::start().await;
    let addr = free_addr();
    let _coordinator =
        spawn_coordinator(&env.url(), addr, &env.dir.path().join("coordinator"), &[]);
    let ch = coordinator_channel(addr).await;
    let mut api = PipelinesClient::new(ch.clone());
    let apply = |name: &str, rule: &str| v1::ApplyRequest {
        definition: yaml(
            &V1.replace("name: counts", &format!("name: {name}"))
                .replace("n == 2", rule),
            &format!("{name}.yaml"),
        ),
        ..Default::default()
    };
    api.apply(apply("a-b", "n == 2")).await.unwrap();
    // `a_b` would write to ANOM_A_B_* too: refused, naming the other pipeline.
    let e = api.apply(apply("a_b", "n == 2")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert!(
        e.message().contains("`a-b`") && e.message().contains("ANOM_A_B_"),
        "{}",
        e.message()
    );
    // A definition bloated by a 300 KiB comment is refused before anything stores it.
    let big = v1::ApplyRequest {
        definition: yaml(
            &format!("{V1}# {}\n", "x".repeat(300 * 1024)).replace("name: counts", "name: big"),
            "big.yaml",
        ),
        ..Default::default()
    };
    let e = api.apply(big).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("expected at most 262144"),
        "{}",
        e.message()
    );
    // The first version has nothing before it; from 0 then means "the previous version".
    let diff = |from: u32| v1::DiffRequest {
        name: "a-b".into(),
        from_version: from,
        to_version: 0,
    };
    let e = api.diff(diff(0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("from_version"), "{}", e.message());
    api.apply(apply("a-b", "n == 3")).await.unwrap();
    let d = api.diff(diff(0)).await.unwrap().into_inner();
    assert!(
        d.unified.contains("a-b v1") && d.unified.contains("+    when: n == 3"),
        "{}",
        d.unified
    );
    // Like every other call, an unknown pipeline is NOT_FOUND.
    let mut cluster = v1::cluster_client::ClusterClient::new(ch.clone());
    let e = cluster
        .list_assignments(v1::ListAssignmentsRequest {
            pipeline: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let known = cluster
        .list_assignments(v1::ListAssignmentsRequest {
            pipeline: "a-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!known.units.is_empty() || !known.unassigned.is_empty());

    // Reflection as Python's grpcio-reflection client asks for it (grpc.reflection.v1alpha).
    let out = tokio::process::Command::new(crate::support::venv_python("grpc"))
        .arg(crate::support::repo_root().join("scripts/grpc/reflect.py"))
        .arg(addr.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for s in [
        "anom.v1.Pipelines",
        "anom.v1.Backtests",
        "grpc.health.v1.Health",
    ] {
        assert!(
            seen["services"].as_array().unwrap().iter().any(|x| x == s),
            "{s}: {seen}"
        );
    }
    let methods = &seen["methods"]["anom.v1.Pipelines"];
    assert!(
        methods.as_array().unwrap().iter().any(|m| m == "Diff"),
        "{seen}"
    );
}

/// Deleting a pipeline stops its input: the events the ingest stream still holds for it are
/// not dead-lettered as `unknown_pipeline` (they were, every one); an event sent after the
/// delete is (its publisher should know).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pipeline_does_not_dead_letter_what_it_already_processed() {
    let env = Env::start().await;
    let js = env.js().await;
    let addr = free_addr();
    let _coordinator =
        spawn_coordinator(&env.url(), addr, &env.dir.path().join("coordinator"), &[]);
    let ch = coordinator_channel(addr).await;
    let mut api = PipelinesClient::new(ch.clone());
    api.apply(v1::ApplyRequest {
        definition: yaml(V1, "counts.yaml"),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut worker = spawn_cluster_worker(&env.url(), addr, "w1", &env.dir.path().join("w1"), &[]);
    let events: Vec<serde_json::Value> = (0..300)
        .map(|i| serde_json::json!({"user": format!("u{}", i % 7), "amount": i}))
        .collect();
    crate::support::publish_events(&js, "anom.counts.in", &events).await;
    assert!(
        wait_for(Duration::from_secs(60), || async {
            crate::support::stream_len(&js, "ANOM_COUNTS_VALID").await >= 300
        })
        .await
    );
    api.delete(v1::PipelineName {
        name: "counts".into(),
    })
    .await
    .unwrap();
    publish(&js, "anom.counts.in", r#"{"user":"late","amount":1}"#).await;
    let dead = || async {
        crate::support::read_stream(&js, "ANOM_DLQ", Some("anom.counts.dlq"))
            .await
            .into_iter()
            .filter(|m| {
                m.headers.get("Anom-Reason-Kind").map(String::as_str) == Some("unknown_pipeline")
            })
            .count()
    };
    assert!(wait_for(Duration::from_secs(30), || async { dead().await >= 1 }).await);
    // Two more polls of the watcher: nothing else arrives.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(dead().await, 1);
    let _ = worker.kill().await;
}

/// Assignments name versions by reference (issue 18): seventeen definitions near the size
/// limit, 4.25 MiB in all, are more than one gRPC message may carry (4 MiB), yet the worker
/// runs every unit and each pipeline alerts. When the definitions travelled inside the
/// assignment, the worker could not read it and reconnected forever, running nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_definitions_together_outgrowing_a_grpc_message_are_all_assigned() {
    const PIPELINES: usize = 17;
    const SMALL: &str = "key: user\npartitions: 1\nschema:\n  user: string\n  amount: int\nrules:\n  - name: big_amount\n    when: amount > 10\n";
    let env = Env::start().await;
    let js = env.js().await;
    let addr = free_addr();
    let _coordinator =
        spawn_coordinator(&env.url(), addr, &env.dir.path().join("coordinator"), &[]);
    let ch = coordinator_channel(addr).await;
    let mut api = PipelinesClient::new(ch.clone());
    let comment = format!("# {}\n", "x".repeat(250 * 1024));
    for i in 0..PIPELINES {
        api.apply(v1::ApplyRequest {
            definition: yaml(
                &format!("name: big{i}\n{SMALL}{comment}"),
                &format!("big{i}.yaml"),
            ),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut worker = spawn_cluster_worker(&env.url(), addr, "w1", &env.dir.path().join("w1"), &[]);
    // validate and one fused unit (rules, alert) of each, and the unrouted watcher.
    let units = PIPELINES * 2 + 1;
    let settled = wait_for(Duration::from_secs(120), || async {
        crate::support::cluster_view(&ch).await.is_some_and(
            |(assigned, unassigned, running, live)| {
                assigned == units && unassigned == 0 && running == units && live == ["w1"]
            },
        )
    })
    .await;
    assert!(settled, "{:?}", crate::support::cluster_view(&ch).await);
    for i in [0, PIPELINES - 1] {
        publish(
            &js,
            &format!("anom.big{i}.in"),
            r#"{"user":"a","amount":50}"#,
        )
        .await;
        let stream = format!("ANOM_BIG{i}_ALERTS");
        assert!(
            wait_for(Duration::from_secs(30), || async {
                alerts(&js, &stream).await.len() == 1
            })
            .await,
            "big{i} alerts"
        );
    }
    let _ = worker.kill().await;
}
