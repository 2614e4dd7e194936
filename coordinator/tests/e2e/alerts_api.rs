//! The coordinator's `Alerts` service against a real nats-server and a coordinator process:
//! queries (every filter, paging), silences (add, list, expire, validation), the `anom alerts`
//! commands, and acknowledging and resolving an alert a running pipeline raised.
//!
//! The query tests seed `ANOM_ALERTS` by putting alert records into the bucket, as the alert
//! stage stores them: the query side is what they test, not how alerts arise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{coordinator_channel, free_addr, spawn_coordinator, wait_for, Env};
use anom_operators::alerting::record::{Alert, AlertStatus, Source, Transition};
use anom_operators::alerting::store::{alert_key, ALERTS_BUCKET, SILENCES_BUCKET};
use anom_pipeline::Severity;
use anom_proto::v1;
use anom_proto::v1::alerts_client::AlertsClient;
use async_nats::jetstream::kv;
use tonic::transport::Channel;

const PAY: &str = r#"name: pay
key: account
schema:
  account: string
  amount: float
rules:
  - name: big
    when: amount > 100
"#;

const HOSTS: &str = r#"name: hosts
key: host
schema:
  host: string
  cpu: float
rules:
  - name: cpu_high
    when: cpu > 90
"#;

/// A coordinator process with the pipelines `pay` and `hosts` applied (no worker).
struct Setup {
    env: Env,
    addr: SocketAddr,
    channel: Channel,
    _coordinator: tokio::process::Child,
}

impl Setup {
    async fn start() -> Setup {
        let env = Env::start().await;
        let addr = free_addr();
        let coordinator =
            spawn_coordinator(&env.url(), addr, &env.dir.path().join("coordinator"), &[]);
        let channel = coordinator_channel(addr).await;
        let mut pipelines = v1::pipelines_client::PipelinesClient::new(channel.clone());
        for (text, name) in [(PAY, "pay.yaml"), (HOSTS, "hosts.yaml")] {
            pipelines
                .apply(v1::ApplyRequest {
                    definition: Some(v1::Definition {
                        source: Some(v1::definition::Source::Yaml(text.to_string())),
                        source_name: name.to_string(),
                    }),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        Setup {
            env,
            addr,
            channel,
            _coordinator: coordinator,
        }
    }

    fn api(&self) -> AlertsClient<Channel> {
        AlertsClient::new(self.channel.clone())
    }

    /// A bucket the coordinator created at start.
    async fn bucket(&self, name: &str) -> kv::Store {
        self.env.js().await.get_key_value(name).await.unwrap()
    }

    /// Runs `anom <args> --coordinator …`: (success, stdout, stderr).
    async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_anom"))
            .args(args)
            .args(["--coordinator", &format!("http://{}", self.addr)])
            .env("ANOM_LOG", "warn")
            .env("USER", "cli-user")
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// An alert record as the alert stage stores it.
#[allow(clippy::too_many_arguments)]
fn alert(
    pipeline: &str,
    id: &str,
    rule: &str,
    key: &str,
    severity: Severity,
    status: AlertStatus,
    starts_at: &str,
    updated_at: &str,
    team: &str,
) -> Alert {
    let labels: BTreeMap<String, String> = [
        ("pipeline", pipeline),
        ("rule", rule),
        ("key", key),
        ("severity", &severity.to_string()),
        ("team", team),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut history = vec![Transition {
        at: starts_at.to_string(),
        status: AlertStatus::Firing,
        by: "anom".into(),
        note: String::new(),
    }];
    if status != AlertStatus::Firing {
        history.push(Transition {
            at: updated_at.to_string(),
            status,
            by: "ana".into(),
            note: "on it".into(),
        });
    }
    Alert {
        id: id.to_string(),
        pipeline: pipeline.to_string(),
        pipeline_version: "v1hash".into(),
        rule: rule.to_string(),
        severity,
        status,
        key: key.to_string(),
        message: format!("{rule} on {key}"),
        explanation: format!("{rule} held for {key}"),
        event_time: starts_at.to_string(),
        ingest_time: starts_at.to_string(),
        raised_at: starts_at.to_string(),
        labels,
        event: serde_json::json!({ "key": key })
            .as_object()
            .unwrap()
            .clone(),
        source: Source {
            stream: "ANOM_TEST_IN".into(),
            sequence: 1,
            index: 0,
        },
        detection: None,
        verdict: None,
        starts_at: starts_at.to_string(),
        updated_at: updated_at.to_string(),
        ends_at: (status == AlertStatus::Resolved).then(|| updated_at.to_string()),
        count: 2,
        acknowledged_by: (status == AlertStatus::Acknowledged).then(|| "ana".to_string()),
        acknowledged_at: (status == AlertStatus::Acknowledged).then(|| updated_at.to_string()),
        resolved_by: (status == AlertStatus::Resolved).then(|| "ana".to_string()),
        history,
        version: 3,
        tracking: Default::default(),
    }
}

/// The seeded alerts: two pipelines, every status and severity, three alerts changed at the
/// same instant (ordered by pipeline, then id) and one with a fractional second.
#[rustfmt::skip]
fn seed() -> Vec<Alert> {
    use AlertStatus::*;
    use Severity::*;
    let t = |m: u32| format!("2026-11-21T10:{m:02}:00Z");
    vec![
        //    pipeline id     rule        key      severity  status        starts  updated  team
        alert("pay",   "p01", "big",      "acc-1", Critical, Firing,       &t(0),  &t(10),  "payments"),
        alert("pay",   "p02", "big",      "acc-2", Critical, Acknowledged, &t(1),  &t(20),  "payments"),
        alert("pay",   "p03", "big",      "acc-3", Warning,  Resolved,     &t(2),  &t(5),   "payments"),
        alert("pay",   "p04", "velocity", "acc-1", Warning,  Firing,       &t(3),  &t(30),  "risk"),
        alert("pay",   "p05", "velocity", "acc-4", Info,     Firing,       &t(4),  &t(30),  "risk"),
        alert("pay",   "p06", "big",      "acc-5", Critical, Resolved,     &t(5),  "2026-11-21T10:30:00.500Z", "payments"),
        alert("hosts", "h01", "cpu_high", "web-1", Critical, Firing,       &t(0),  &t(40),  "ops"),
        alert("hosts", "h02", "cpu_high", "web-2", Warning,  Acknowledged, &t(6),  &t(15),  "ops"),
        alert("hosts", "h03", "cpu_high", "db-1",  Critical, Firing,       &t(7),  &t(30),  "dba"),
        alert("hosts", "h04", "disk",     "db-1",  Info,     Resolved,     &t(8),  &t(9),   "dba"),
    ]
}

async fn put_all(bucket: &kv::Store, alerts: &[Alert]) {
    for a in alerts {
        bucket
            .put(
                alert_key(&a.pipeline, &a.id),
                serde_json::to_vec(a).unwrap().into(),
            )
            .await
            .unwrap();
    }
}

fn ts(text: &str) -> prost_types::Timestamp {
    let t: jiff::Timestamp = text.parse().unwrap();
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// The ids `List` returns for `req` (one page of up to 1000).
async fn ids(api: &mut AlertsClient<Channel>, req: v1::ListAlertsRequest) -> Vec<String> {
    api.list(v1::ListAlertsRequest {
        page_size: 1000,
        ..req
    })
    .await
    .unwrap()
    .into_inner()
    .alerts
    .into_iter()
    .map(|a| a.id)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_listed_by_every_filter_and_paged_exactly_once_in_order() {
    let s = Setup::start().await;
    let mut api = s.api();
    let bucket = s.bucket(ALERTS_BUCKET).await;
    put_all(&bucket, &seed()).await;
    // Deleted and purged keys leave markers in the bucket's stream: not alerts.
    let mut gone = seed()[0].clone();
    for (id, purge) in [("d01", false), ("d02", true)] {
        gone.id = id.into();
        put_all(&bucket, std::slice::from_ref(&gone)).await;
        if purge {
            bucket.purge(alert_key("pay", id)).await.unwrap();
        } else {
            bucket.delete(alert_key("pay", id)).await.unwrap();
        }
    }

    // Everything, newest change first; ties (p04, p05, h03 at 10:30) by pipeline, then id;
    // 10:30:00.5 is after 10:30.
    let all = ids(&mut api, Default::default()).await;
    assert_eq!(
        all,
        ["h01", "p06", "h03", "p04", "p05", "p02", "h02", "p01", "h04", "p03"]
    );

    // Each filter on its own, and together.
    let by = |f: fn(&mut v1::ListAlertsRequest)| {
        let mut r = v1::ListAlertsRequest::default();
        f(&mut r);
        r
    };
    let cases: Vec<(v1::ListAlertsRequest, Vec<&str>)> = vec![
        (
            by(|r| r.pipeline = "pay".into()),
            vec!["p06", "p04", "p05", "p02", "p01", "p03"],
        ),
        (
            by(|r| r.status = vec!["firing".into()]),
            vec!["h01", "h03", "p04", "p05", "p01"],
        ),
        (
            by(|r| r.status = vec!["acknowledged".into(), "resolved".into()]),
            vec!["p06", "p02", "h02", "h04", "p03"],
        ),
        (by(|r| r.severity = vec!["info".into()]), vec!["p05", "h04"]),
        (
            by(|r| r.severity = vec!["critical".into(), "warning".into()]),
            vec!["h01", "p06", "h03", "p04", "p02", "h02", "p01", "p03"],
        ),
        (by(|r| r.key = "acc-1".into()), vec!["p04", "p01"]),
        (
            by(|r| r.rule = "cpu_high".into()),
            vec!["h01", "h03", "h02"],
        ),
        (
            by(|r| r.matchers = vec!["team=risk".into()]),
            vec!["p04", "p05"],
        ),
        (
            by(|r| r.matchers = vec!["team!=payments".into(), "key=~db-.*".into()]),
            vec!["h03", "h04"],
        ),
        (
            by(|r| r.matchers = vec!["rule!~big|cpu_high".into()]),
            vec!["p04", "p05", "h04"],
        ),
        // updated_at in [10:15, 10:30): from inclusive, to exclusive.
        (
            by(|r| {
                r.from = Some(ts("2026-11-21T10:15:00Z"));
                r.to = Some(ts("2026-11-21T10:30:00Z"));
            }),
            vec!["p02", "h02"],
        ),
        // starts_at from 10:05.
        (
            by(|r| {
                r.from = Some(ts("2026-11-21T10:05:00Z"));
                r.time_field = v1::TimeField::StartsAt as i32;
            }),
            vec!["p06", "h03", "h02", "h04"],
        ),
        (
            by(|r| {
                r.pipeline = "hosts".into();
                r.status = vec!["firing".into()];
                r.severity = vec!["critical".into()];
                r.matchers = vec!["team=ops".into()];
            }),
            vec!["h01"],
        ),
        (by(|r| r.key = "nobody".into()), vec![]),
    ];
    for (req, want) in cases {
        let shown = format!("{req:?}");
        assert_eq!(ids(&mut api, req).await, want, "{shown}");
    }

    // Pages of 3: every alert once, in the same order, and the total on every page.
    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = api
            .list(v1::ListAlertsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert_eq!(page.total, 10);
        assert!(page.alerts.len() <= 3);
        paged.extend(page.alerts.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((paged, pages), (all.clone(), 4));
    // A filter and paging together.
    let first = api
        .list(v1::ListAlertsRequest {
            status: vec!["firing".into()],
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.total, 5);
    let second = api
        .list(v1::ListAlertsRequest {
            status: vec!["firing".into()],
            page_size: 2,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let two: Vec<String> = first
        .alerts
        .iter()
        .chain(&second.alerts)
        .map(|a| a.id.clone())
        .collect();
    assert_eq!(two, ["h01", "h03", "p04", "p05"]);

    // The typed fields and the record as JSON.
    let p02 = api
        .get(v1::GetAlertRequest {
            pipeline: "pay".into(),
            id: "p02".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            p02.status.as_str(),
            p02.severity.as_str(),
            p02.acknowledged_by.as_str(),
            p02.count,
            p02.version
        ),
        ("acknowledged", "critical", "ana", 2, 3)
    );
    assert_eq!(p02.starts_at, Some(ts("2026-11-21T10:01:00Z")));
    assert_eq!(p02.acknowledged_at, Some(ts("2026-11-21T10:20:00Z")));
    assert_eq!(p02.ends_at, None);
    assert_eq!(p02.labels["team"], "payments");
    let history: Vec<(&str, &str, &str)> = p02
        .history
        .iter()
        .map(|t| (t.status.as_str(), t.by.as_str(), t.note.as_str()))
        .collect();
    assert_eq!(
        history,
        [("firing", "anom", ""), ("acknowledged", "ana", "on it")]
    );
    let record: Alert = serde_json::from_str(&p02.json).unwrap();
    assert_eq!(record, seed()[1]);

    // What is refused, and how.
    let refused = |r: v1::ListAlertsRequest| {
        let mut api = api.clone();
        async move { api.list(r).await.unwrap_err() }
    };
    let e = refused(by(|r| r.pipeline = "nope".into())).await;
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::NotFound, "no pipeline named `nope`")
    );
    let e = refused(by(|r| r.status = vec!["open".into()])).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "status[0]: expected firing, acknowledged or resolved, found `open`"
    );
    let e = refused(by(|r| r.severity = vec!["high".into()])).await;
    assert_eq!(
        e.message(),
        "severity[0]: expected info, warning or critical, found `high`"
    );
    let e = refused(by(|r| r.matchers = vec!["team=ops".into(), "team".into()])).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "matchers[1]: expected `label=value`, `label!=value`, `label=~regex` or `label!~regex`, found `team`"
    );
    let e = refused(by(|r| r.page_token = "not-a-token".into())).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = refused(by(|r| r.page_size = 5000)).await;
    assert_eq!(e.message(), "page_size: expected at most 1000, found 5000");
    let e = refused(by(|r| {
        r.from = Some(ts("2026-11-21T11:00:00Z"));
        r.to = Some(ts("2026-11-21T10:00:00Z"));
    }))
    .await;
    assert_eq!(
        e.message(),
        "to: expected a time after from (2026-11-21T11:00:00Z), found 2026-11-21T10:00:00Z"
    );
    let e = api
        .get(v1::GetAlertRequest {
            pipeline: "pay".into(),
            id: "p99".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::NotFound, "pipeline `pay` has no alert `p99`")
    );
    let e = api
        .get(v1::GetAlertRequest {
            pipeline: "nope".into(),
            id: "p01".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Acknowledge and resolve check the alert before sending anything.
    let action = |id: &str| v1::AlertActionRequest {
        pipeline: "pay".into(),
        id: id.into(),
        by: "ana".into(),
        comment: String::new(),
    };
    let e = api.resolve(action("p03")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "cannot resolve alert `p03`: expected a firing or acknowledged alert, found it resolved at 2026-11-21T10:05:00Z"
    );
    let e = api.acknowledge(action("p02")).await.unwrap_err();
    assert_eq!(
        e.message(),
        "cannot acknowledge alert `p02`: expected a firing alert, found it acknowledged by ana at 2026-11-21T10:20:00Z"
    );
    let e = api
        .acknowledge(v1::AlertActionRequest {
            by: String::new(),
            ..action("p01")
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "by: expected who acknowledges or resolves the alert, found nothing"
    );
    let e = api.acknowledge(action("p99")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // No worker runs `pay`: the command is stored, and the answer says at once that it is
    // not applied, and why.
    let started = std::time::Instant::now();
    let r = api.acknowledge(action("p01")).await.unwrap().into_inner();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!r.applied);
    assert!(
        r.note.starts_with(
            "accepted; the pipeline's alert stage has not applied it yet: no worker runs its alert stage for partition "
        ) && r.note.ends_with(". It takes effect when the stage reads it."),
        "{}",
        r.note
    );
    assert_eq!(r.alert.unwrap().status, "firing");
    let js = s.env.js().await;
    let waiting = crate::support::read_stream(&js, "ANOM_PAY_VALID", None)
        .await
        .into_iter()
        .filter(|m| m.headers.contains_key("Anom-Command"))
        .count();
    assert_eq!(waiting, 1, "the command waits in the alert stage's input");

    // Reflection lists the service.
    let services = crate::support::grpc_services(&s.channel).await;
    assert!(
        services.iter().any(|s| s == "anom.v1.Alerts"),
        "{services:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_are_added_listed_and_expired_and_bad_ones_refused() {
    let s = Setup::start().await;
    let mut api = s.api();
    let add = |matchers: &[&str]| v1::AddSilenceRequest {
        pipeline: "pay".into(),
        matchers: matchers.iter().map(|m| m.to_string()).collect(),
        duration: Some(prost_types::Duration {
            seconds: 7200,
            nanos: 0,
        }),
        created_by: "ana".into(),
        comment: "maintenance".into(),
        ..Default::default()
    };

    // Refused, each saying what it expected.
    let refusals: Vec<(v1::AddSilenceRequest, tonic::Code, &str)> = vec![
        (
            add(&[]),
            tonic::Code::InvalidArgument,
            "matchers: expected at least one label matcher such as `rule=cpu_high`, found none",
        ),
        (
            add(&["rule=big", "severity"]),
            tonic::Code::InvalidArgument,
            "matchers[1]: expected `label=value`, `label!=value`, `label=~regex` or `label!~regex`, found `severity`",
        ),
        (
            v1::AddSilenceRequest {
                duration: None,
                starts_at: Some(ts("2030-01-01T12:00:00Z")),
                ends_at: Some(ts("2030-01-01T11:00:00Z")),
                ..add(&["rule=big"])
            },
            tonic::Code::InvalidArgument,
            "ends_at: expected a time after starts_at (2030-01-01T12:00:00Z), found 2030-01-01T11:00:00Z",
        ),
        (
            v1::AddSilenceRequest {
                duration: None,
                starts_at: Some(ts("2020-01-01T10:00:00Z")),
                ends_at: Some(ts("2020-01-01T11:00:00Z")),
                ..add(&["rule=big"])
            },
            tonic::Code::InvalidArgument,
            "ends_at: expected a time in the future (now is ",
        ),
        (
            v1::AddSilenceRequest {
                ends_at: Some(ts("2030-01-01T11:00:00Z")),
                ..add(&["rule=big"])
            },
            tonic::Code::InvalidArgument,
            "expected one of ends_at and duration, found both",
        ),
        (
            v1::AddSilenceRequest {
                duration: None,
                ..add(&["rule=big"])
            },
            tonic::Code::InvalidArgument,
            "expected ends_at or duration, found neither",
        ),
        (
            v1::AddSilenceRequest {
                created_by: " ".into(),
                ..add(&["rule=big"])
            },
            tonic::Code::InvalidArgument,
            "created_by: expected who creates the silence, found nothing",
        ),
        (
            v1::AddSilenceRequest {
                pipeline: "nope".into(),
                ..add(&["rule=big"])
            },
            tonic::Code::NotFound,
            "no pipeline named `nope`",
        ),
    ];
    for (req, code, message) in refusals {
        let e = api.add_silence(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().starts_with(message), "{}", e.message());
    }

    // One in force for two hours, one that starts tomorrow.
    let active = api
        .add_silence(add(&["rule=big", "team=~pay.*"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.state, "active");
    assert_eq!(active.matchers, ["rule=big", "team=~pay.*"]);
    assert_eq!(
        active.ends_at.unwrap().seconds - active.starts_at.unwrap().seconds,
        7200
    );
    let tomorrow = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let pending = api
        .add_silence(v1::AddSilenceRequest {
            starts_at: Some(ts(&tomorrow.to_string())),
            ..add(&["key=acc-1"])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.state, "pending");
    let other = api
        .add_silence(v1::AddSilenceRequest {
            pipeline: "hosts".into(),
            ..add(&["team=ops"])
        })
        .await
        .unwrap()
        .into_inner();
    // Stored where the notifiers look: `<pipeline>.<id>` in ANOM_SILENCES, as a Silence.
    let bucket = s.bucket(SILENCES_BUCKET).await;
    let stored: anom_operators::alerting::Silence = serde_json::from_slice(
        &bucket
            .get(format!("pay.{}", active.id))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored.created_by, "ana");
    assert_eq!(stored.comment, "maintenance");

    let lister = api.clone();
    let listed = move |pipeline: &str, include_expired: bool| {
        let mut api = lister.clone();
        let pipeline = pipeline.to_string();
        async move {
            let mut ids: Vec<(String, String)> = api
                .list_silences(v1::ListSilencesRequest {
                    pipeline,
                    include_expired,
                })
                .await
                .unwrap()
                .into_inner()
                .silences
                .into_iter()
                .map(|s| (s.id, s.state))
                .collect();
            ids.sort();
            ids
        }
    };
    let mut want = vec![
        (active.id.clone(), "active".to_string()),
        (pending.id.clone(), "pending".to_string()),
    ];
    want.sort();
    assert_eq!(listed("pay", false).await, want);
    assert_eq!(listed("", false).await.len(), 3, "every pipeline");

    // Expired: ends now, kept, listed only with include_expired.
    let expired = api
        .expire_silence(v1::ExpireSilenceRequest {
            pipeline: "pay".into(),
            id: active.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.state, "expired");
    let ended = expired.ends_at.unwrap().seconds;
    assert!((jiff::Timestamp::now().as_second() - ended).abs() <= 5);
    assert_eq!(
        listed("pay", false).await,
        vec![(pending.id.clone(), "pending".to_string())]
    );
    assert_eq!(listed("pay", true).await.len(), 2);
    // A pending silence expired never was in force: it starts when it ends.
    let never = api
        .expire_silence(v1::ExpireSilenceRequest {
            pipeline: "pay".into(),
            id: pending.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(never.starts_at, never.ends_at);
    let e = api
        .expire_silence(v1::ExpireSilenceRequest {
            pipeline: "pay".into(),
            id: active.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message()
            .starts_with(&format!("silence `{}` already expired at ", active.id)),
        "{}",
        e.message()
    );
    let e = api
        .expire_silence(v1::ExpireSilenceRequest {
            pipeline: "pay".into(),
            id: other.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message().to_string()),
        (
            tonic::Code::NotFound,
            format!("pipeline `pay` has no silence `{}`", other.id)
        ),
        "silences belong to their pipeline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_commands_list_and_silence_through_the_coordinator() {
    let s = Setup::start().await;
    put_all(&s.bucket(ALERTS_BUCKET).await, &seed()).await;

    let (ok, out, err) = s
        .cli(&["alerts", "list", "--status", "firing,acknowledged"])
        .await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SEVERITY") && lines[0].contains("MESSAGE"),
        "{out}"
    );
    // h01, h03, p04, p05, p02, h02, p01: newest change first.
    let first: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(first, ["h01", "h03", "p04", "p05", "p02", "h02", "p01"]);
    assert!(
        lines[1].contains("hosts")
            && lines[1].contains("cpu_high")
            && lines[1].contains("web-1")
            && lines[1].contains("critical")
            && lines[1].contains("firing")
            && lines[1].ends_with("cpu_high on web-1"),
        "{}",
        lines[1]
    );

    let (ok, out, err) = s
        .cli(&[
            "alerts",
            "list",
            "-p",
            "pay",
            "--match",
            "team=risk",
            "--severity",
            "info",
            "--json",
        ])
        .await;
    assert!(ok, "{err}");
    let records: Vec<Alert> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records, vec![seed()[4].clone()]);
    // --limit, with a word about the rest.
    let (ok, out, err) = s.cli(&["alerts", "list", "--limit", "3"]).await;
    assert!(ok);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(err.contains("showing 3 of 10 alerts"), "{err}");
    // The seeded alerts changed hours ago (or more): --since 1h finds none.
    let (ok, out, _) = s.cli(&["alerts", "list", "--since", "1h"]).await;
    assert!(ok && out.lines().count() == 1, "{out}");
    let (ok, _, err) = s.cli(&["alerts", "list", "--status", "open"]).await;
    assert!(!ok);
    assert!(
        err.contains("status[0]: expected firing, acknowledged or resolved, found `open`"),
        "{err}"
    );
    let (ok, out, _) = s
        .cli(&["alerts", "list", "--since", "2026-11-21T10:25:00Z"])
        .await;
    assert!(ok && out.lines().count() == 6, "{out}");
    let (ok, _, err) = s.cli(&["alerts", "list", "--since", "1x"]).await;
    assert!(
        !ok && err.contains(
            "--since: expected a time as RFC 3339 (2026-11-01T00:00:00Z) or an age (7d, 12h), found `1x`"
        ),
        "{err}"
    );

    let (ok, out, err) = s.cli(&["alerts", "get", "pay", "p02"]).await;
    assert!(ok, "{err}");
    for want in [
        "status:         acknowledged",
        "acknowledged:   by ana at 2026-11-21 10:20:00",
        "labels:         key=acc-2, pipeline=pay, rule=big, severity=critical, team=payments",
        "history:",
        "acknowledged  ana   on it",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    let (ok, _, err) = s.cli(&["alerts", "get", "pay", "zz"]).await;
    assert!(
        !ok && err.contains("pipeline `pay` has no alert `zz`"),
        "{err}"
    );
    let (ok, out, err) = s.cli(&["alerts", "get", "hosts", "h04", "--json"]).await;
    assert!(ok, "{err}");
    let record: Alert = serde_json::from_str(&out).unwrap();
    assert_eq!(record, seed()[9]);
    // The table shortens long ids; a unique prefix names an alert.
    let long = "f3a9c2b1d4e5f60718293a4b";
    let mut extra = seed()[6].clone();
    extra.id = long.to_string();
    extra.key = "web-9".into();
    put_all(&s.bucket(ALERTS_BUCKET).await, &[extra]).await;
    let (_, out, _) = s.cli(&["alerts", "list", "--key", "web-9"]).await;
    assert!(
        out.lines().nth(1).unwrap().starts_with("f3a9c2b1d4e5 "),
        "{out}"
    );
    let (ok, out, err) = s.cli(&["alerts", "get", "hosts", "f3a9c2b1d4e5"]).await;
    assert!(
        ok && out.contains(&format!("id:             {long}")),
        "{out}{err}"
    );
    let (ok, _, err) = s.cli(&["alerts", "get", "nope", "p01"]).await;
    assert!(!ok && err.contains("no pipeline named `nope`"), "{err}");
    let (ok, _, err) = s.cli(&["alerts", "get", "pay", "p0"]).await;
    assert!(!ok);
    assert!(
        err.contains("`p0` is ambiguous: expected a prefix of one alert of `pay`, found 6"),
        "{err}"
    );

    // Silences: add (with $USER as the author), list, expire.
    let (ok, out, err) = s
        .cli(&[
            "alerts",
            "silence",
            "add",
            "-p",
            "pay",
            "--match",
            "rule=big",
            "--match",
            "key=~acc-.*",
            "--for",
            "2h",
            "--comment",
            "deploy",
        ])
        .await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("silence ") && out.contains("added to pay: rule=big, key=~acc-.*"),
        "{out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let (ok, out, err) = s.cli(&["alerts", "silence", "list", "-p", "pay"]).await;
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.starts_with(&id)).expect(&out);
    for want in [
        "pay",
        "active",
        "rule=big,key=~acc-.*",
        "cli-user",
        "deploy",
    ] {
        assert!(row.contains(want), "{want}: {row}");
    }
    let (ok, _, err) = s
        .cli(&[
            "alerts", "silence", "add", "-p", "pay", "--match", "rule", "--for", "1h",
        ])
        .await;
    assert!(!ok);
    assert!(err.contains("matchers[0]: expected `label=value`"), "{err}");
    let (ok, _, err) = s
        .cli(&[
            "alerts", "silence", "add", "-p", "pay", "--match", "rule=big", "--until", "tomorrow",
        ])
        .await;
    assert!(!ok);
    assert!(
        err.contains(
            "--until: expected an RFC 3339 time such as 2026-11-21T18:00:00Z, found `tomorrow`"
        ),
        "{err}"
    );
    let (ok, out, err) = s.cli(&["alerts", "silence", "expire", "pay", &id]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("silence {id} expired at ")),
        "{out}"
    );
    let (_, out, _) = s.cli(&["alerts", "silence", "list", "-p", "pay"]).await;
    assert!(!out.contains(&id), "{out}");
    let (_, out, _) = s.cli(&["alerts", "silence", "list", "--all"]).await;
    let row = out.lines().find(|l| l.starts_with(&id)).expect(&out);
    assert!(row.contains("expired"), "{row}");
}

/// A pipeline whose every event over 100 raises an alert, run by a coordinator and a worker
/// process, acknowledged and then resolved with `anom alerts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_a_running_pipeline_raised_is_acknowledged_and_resolved() {
    let s = Setup::start().await;
    let js = s.env.js().await;
    let mut worker = crate::support::spawn_cluster_worker(
        &s.env.url(),
        s.addr,
        "w1",
        &s.env.dir.path().join("w1"),
        &[],
    );
    let ch = s.channel.clone();
    let running = wait_for(Duration::from_secs(60), || async {
        crate::support::cluster_view(&ch)
            .await
            .is_some_and(|(assigned, unassigned, running, _)| {
                assigned > 1 && unassigned == 0 && running == assigned
            })
    })
    .await;
    assert!(running, "{:?}", crate::support::cluster_view(&ch).await);
    crate::support::publish_events(
        &js,
        "anom.pay.in",
        &[serde_json::json!({"account": "acc-9", "amount": 500.0})],
    )
    .await;

    // The alert stage records the alert.
    let mut api = s.api();
    let mut raised = None;
    let started = std::time::Instant::now();
    while raised.is_none() && started.elapsed() < Duration::from_secs(30) {
        raised = api
            .list(v1::ListAlertsRequest {
                pipeline: "pay".into(),
                key: "acc-9".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .alerts
            .into_iter()
            .next();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raised = raised.expect("the alert stage stores an alert for acc-9");
    assert_eq!(
        (raised.status.as_str(), raised.rule.as_str()),
        ("firing", "big")
    );

    let (ok, out, err) = s
        .cli(&[
            "alerts",
            "ack",
            "pay",
            &raised.id,
            "--by",
            "ana",
            "--comment",
            "looking",
        ])
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("acknowledged"), "{out}");
    let a = api
        .get(v1::GetAlertRequest {
            pipeline: "pay".into(),
            id: raised.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.status, "acknowledged");
    assert_eq!(a.acknowledged_by, "ana");
    assert!(a.version > raised.version);
    let last = a.history.last().unwrap();
    assert_eq!(
        (last.status.as_str(), last.by.as_str()),
        ("acknowledged", "ana")
    );

    // Resolved through the API: the answer is the alert as the stage left it.
    let r = api
        .resolve(v1::AlertActionRequest {
            pipeline: "pay".into(),
            id: raised.id.clone(),
            by: "ana".into(),
            comment: "fixed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied, "{}", r.note);
    let a = r.alert.unwrap();
    assert_eq!(a.status, "resolved");
    assert!(a.ends_at.is_some());
    assert!(a.resolved_by.contains("ana"), "{}", a.resolved_by);
    let (ok, out, _) = s
        .cli(&["alerts", "list", "-p", "pay", "--status", "resolved"])
        .await;
    assert!(ok && out.contains(short(&raised.id)), "{out}");

    worker.start_kill().unwrap();
    let _ = worker.wait().await;
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
