//! The web console in a real headless Chromium (Debian's `chromium`, driven over WebDriver by
//! Debian's `chromedriver`; scripts/install-chromium.sh installs both) against a real
//! `anom up`: the overview lists the example pipelines, an alert raised by a published event
//! appears live without a reload, acknowledging it in the browser changes it in the API, its
//! plotted series renders, a definition with an error shows the located message, and a
//! backtest of a draft runs and plots.
//!
//! With `ANOM_SCREENSHOTS=<dir>` the tests save screenshots there (docs/console.md shows
//! them); they print the times to first render they saw, and assert none.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::support::{free_addr, repo_root, wait_for};

/// A chromedriver on a free loopback port, and a headless Chromium session through it.
struct Browser {
    client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_addr().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts (run scripts/install-chromium.sh)");
        let url = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--no-first-run", "--disable-quic",
                    // Without these Chromium tries hosts on the internet, which this
                    // machine refuses: the tests reach only 127.0.0.1.
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-default-apps",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let mut client = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Browser {
            client: client.expect("a Chromium session through chromedriver"),
            _driver: driver,
            _profile: profile,
        }
    }

    /// Waits for an element matching `css` (and, when given, containing `text`).
    async fn find(
        &self,
        css: &str,
        text: Option<&str>,
        timeout: Duration,
    ) -> fantoccini::elements::Element {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(found) = self.client.find_all(Locator::Css(css)).await {
                for e in found {
                    match text {
                        None => return e,
                        Some(t) => {
                            if e.text().await.is_ok_and(|s| s.contains(t)) {
                                return e;
                            }
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let html = self.client.source().await.unwrap_or_default();
                panic!(
                    "no `{css}`{} within {timeout:?}; the page:\n{}",
                    text.map(|t| format!(" containing {t:?}"))
                        .unwrap_or_default(),
                    &html[..html.len().min(4000)]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    async fn script(&self, js: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(js, args)
            .await
            .expect("the script runs")
    }

    /// Opens `url` as a new document (not a hash change), so its timings start at zero.
    async fn open(&self, url: &str) {
        self.client.goto("about:blank").await.unwrap();
        self.client.goto(url).await.unwrap();
    }

    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("ANOM_SCREENSHOTS") else {
            return;
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// A number the console wrote into `document.body.dataset`.
    async fn timing(&self, name: &str) -> Option<u64> {
        self.script(
            &format!("return document.body.dataset.{name} || null"),
            vec![],
        )
        .await
        .as_str()
        .and_then(|s| s.parse().ok())
    }
}

/// `anom up` on the example pipelines, with its HTTP API (and console) on `http`.
async fn anom_up(data: &std::path::Path, http: SocketAddr) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_anom"))
        .current_dir(repo_root())
        .args(["up", "--nats-port", "0", "--metrics-addr", "127.0.0.1:0"])
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            &http.to_string(),
        ])
        .arg("--data-dir")
        .arg(data)
        .env("ANOM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("anom up starts");
    let base = format!("http://{http}");
    let up = wait_for(Duration::from_secs(120), || async {
        // Up when every example pipeline's units run.
        let Ok(r) = reqwest::get(format!("{base}/v1/overview")).await else {
            return false;
        };
        let o: Value = r.json().await.unwrap_or(Value::Null);
        o["workers_alive"] == 1
            && o["pipelines"].as_array().is_some_and(|p| {
                p.len() == 5 && p.iter().all(|p| p["unassigned"] == 0 && p["units"] != 0)
            })
    })
    .await;
    assert!(up, "anom up serves its HTTP API on {http}");
    child
}

async fn get(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_appears_live_is_acknowledged_in_the_browser_and_plots_its_series() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let mut up = anom_up(data.path(), http).await;
    let base = format!("http://{http}");
    let b = Browser::start().await;

    // The overview lists the example pipelines.
    b.open(&format!("{base}/")).await;
    for p in ["expenses", "hosts", "iot", "payments", "routes"] {
        b.find(
            &format!("#pipelines tr[data-pipeline={p}]"),
            None,
            Duration::from_secs(30),
        )
        .await;
    }
    let overview_ms = b.timing("overviewMs").await;
    b.screenshot("overview").await;

    // An alert raised by an event sent now appears on the alerts page without a reload.
    b.open(&format!("{base}/#/alerts")).await;
    b.find("#alerts thead", None, Duration::from_secs(30)).await;
    // Her usual expenses, then a large one.
    let mut ndjson = String::new();
    for (i, amount) in [84.0, 120.5, 64.2, 230.0, 97.9, 150.0, 310.4, 88.0]
        .iter()
        .enumerate()
    {
        ndjson.push_str(&format!(
            "{{\"user\":\"zoe\",\"amount\":{amount},\"category\":\"food\",\"merchant\":\"m{i}\",\"spentAt\":\"2026-12-07T0{i}:00:00Z\"}}\n"
        ));
    }
    ndjson.push_str(r#"{"user":"zoe","amount":4200,"currency":"EUR","category":"travel","merchant":"AirCo","spentAt":"2026-12-07T09:00:00Z"}"#);
    let sent = reqwest::Client::new()
        .post(format!("{base}/v1/pipelines/expenses/events"))
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let row = b
        .find(
            "#alerts tr[data-status=firing]",
            Some("zoe"),
            Duration::from_secs(60),
        )
        .await;
    let id = row
        .attr("data-alert")
        .await
        .unwrap()
        .expect("the row names its alert");
    b.screenshot("alerts").await;

    // Acknowledged in the browser: the API says so, and the row follows without a reload.
    b.script("localStorage.setItem('anom.user', 'ana')", vec![])
        .await;
    row.find(Locator::Css("button[data-action=acknowledge]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let api_url = format!("{base}/v1/pipelines/expenses/alerts/{id}");
    let acknowledged = wait_for(Duration::from_secs(30), || async {
        get(api_url.clone()).await["status"] == "acknowledged"
    })
    .await;
    assert!(acknowledged, "{}", get(api_url.clone()).await);
    assert_eq!(get(api_url.clone()).await["acknowledged_by"], "ana");
    b.find(
        &format!("#alerts tr[data-alert=\"{id}\"][data-status=acknowledged]"),
        None,
        Duration::from_secs(30),
    )
    .await;

    // Its detail: the explanation, and the key's series replayed through the backtest engine.
    b.open(&format!("{base}/#/alerts/expenses/{id}")).await;
    b.find("#explanation", Some("amount"), Duration::from_secs(30))
        .await;
    let plot = b
        .find("#alert-series svg.plot", None, Duration::from_secs(60))
        .await;
    assert_eq!(
        plot.attr("data-points").await.unwrap().as_deref(),
        Some("9")
    );
    assert!(b.count("#alert-series svg.plot path.series").await == 1);
    assert!(b.count("#alert-series svg.plot line.alert").await >= 1);
    let plot_ms = b.timing("plotMs").await;
    b.script(
        "document.querySelector('#alert-series').scrollIntoView()",
        vec![],
    )
    .await;
    b.screenshot("alert").await;
    println!(
        "console timings: overview first render {overview_ms:?} ms, alert with its plot {plot_ms:?} ms (since navigation start)"
    );

    let _ = b.client.close().await;
    let _ = up.start_kill();
    let _ = up.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_shows_located_errors_as_you_type_and_a_draft_is_backtested_with_its_plot() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let mut up = anom_up(data.path(), http).await;
    let base = format!("http://{http}");
    // History to backtest: a few expenses, one of them large.
    let mut ndjson = String::new();
    for (i, amount) in [120.0, 80.5, 950.0, 1500.0, 60.0, 2400.0]
        .iter()
        .enumerate()
    {
        ndjson.push_str(&format!(
            "{{\"user\":\"kim\",\"amount\":{amount},\"merchant\":\"m{i}\",\"spentAt\":\"2026-12-07T0{i}:00:00Z\"}}\n"
        ));
    }
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/pipelines/expenses/events"))
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b = Browser::start().await;
    b.open(&format!("{base}/#/pipelines/expenses/definition"))
        .await;
    b.find("#verdict", Some("Valid"), Duration::from_secs(30))
        .await;
    let original: String = b
        .script("return document.querySelector('#definition').value", vec![])
        .await
        .as_str()
        .unwrap()
        .to_string();

    // Typing an error: the located message appears, the same as `anom check` (the API) gives.
    let broken = original.replace("when: amount >= 1000", "when: amount >=");
    let area = b.find("#definition", None, Duration::from_secs(5)).await;
    area.clear().await.unwrap();
    area.send_keys(&broken).await.unwrap();
    let shown = b.find("#problems li", None, Duration::from_secs(30)).await;
    let text = shown.text().await.unwrap();
    let checked: Value = reqwest::Client::new()
        .post(format!("{base}/v1/check?source=expenses.yaml"))
        .header("content-type", "application/yaml")
        .body(broken.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(text, checked["problems"][0]["text"].as_str().unwrap());
    assert!(text.starts_with("expenses.yaml:16:"), "{text}");
    b.find(".gutter .bad", Some("16"), Duration::from_secs(5))
        .await;
    b.screenshot("editor").await;

    // A draft with a lower threshold, backtested against the current version: a comparison
    // and the draft's plotted series.
    let draft = original.replace("when: amount >= 1000", "when: amount >= 900");
    b.script(
        "const a = document.querySelector('#definition'); a.value = arguments[0]; a.dispatchEvent(new Event('input'));",
        vec![json!(draft)],
    )
    .await;
    b.find("#verdict", Some("Valid"), Duration::from_secs(30))
        .await;
    b.find("#backtest", None, Duration::from_secs(5))
        .await
        .click()
        .await
        .unwrap();
    b.find(
        "#backtest-table",
        Some("this draft"),
        Duration::from_secs(90),
    )
    .await;
    b.find(
        "#backtest-result svg.plot path.series",
        None,
        Duration::from_secs(5),
    )
    .await;
    let summary = b
        .find(
            "#backtest-result p",
            Some("only the draft raises"),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        summary
            .text()
            .await
            .unwrap()
            .contains("1 only the draft raises"),
        "{}",
        summary.text().await.unwrap()
    );
    b.script(
        "document.querySelector('#backtest-result').scrollIntoView()",
        vec![],
    )
    .await;
    b.screenshot("backtest").await;

    let _ = b.client.close().await;
    let _ = up.start_kill();
    let _ = up.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_events_history_workers_and_pausing_work_from_the_browser() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let mut up = anom_up(data.path(), http).await;
    let base = format!("http://{http}");
    let send = |body: &'static str| {
        let url = format!("{base}/v1/pipelines/expenses/events");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let r = send("{\"user\":\"lee\",\"amount\":12.5,\"spentAt\":\"2026-12-07T08:00:00Z\"}\n{\"user\":\"lee\",\"amount\":\"lots\",\"spentAt\":\"2026-12-07T08:01:00Z\"}\n").await;
    assert_eq!(
        (r["accepted"].as_u64(), r["refused"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    let b = Browser::start().await;

    // The dead letter, with its reason; replayed unchanged, it is still refused and kept.
    b.open(&format!("{base}/#/pipelines/expenses/dead-letters"))
        .await;
    let row = b
        .find(
            "#dead-letters tbody tr",
            Some("expected float"),
            Duration::from_secs(30),
        )
        .await;
    row.find(Locator::Css("input[type=checkbox]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.find("#replay", None, Duration::from_secs(5))
        .await
        .click()
        .await
        .unwrap();
    b.find("#toast", Some("still refused"), Duration::from_secs(30))
        .await;
    b.screenshot("dead-letters").await;

    // The events browser shows the stored event, by key.
    b.open(&format!("{base}/#/pipelines/expenses/events")).await;
    b.find("#events tbody tr", Some("lee"), Duration::from_secs(30))
        .await;

    // Workers and assignments.
    b.open(&format!("{base}/#/workers")).await;
    b.find("#workers tbody tr", Some("local"), Duration::from_secs(30))
        .await;
    assert!(b.count("#assignments tbody tr").await > 5);

    // A change applied from the editor with a comment; its diff in the history.
    b.open(&format!("{base}/#/pipelines/expenses/definition"))
        .await;
    b.find("#verdict", Some("Valid"), Duration::from_secs(30))
        .await;
    b.script(
        "const a = document.querySelector('#definition'); a.value = a.value.replace('amount >= 1000', 'amount >= 900'); a.dispatchEvent(new Event('input'));",
        vec![],
    )
    .await;
    b.find("#comment", None, Duration::from_secs(5))
        .await
        .send_keys("lower the limit")
        .await
        .unwrap();
    b.find("#apply", None, Duration::from_secs(5))
        .await
        .click()
        .await
        .unwrap();
    b.find("h1", Some("v2"), Duration::from_secs(30)).await;
    let versions = get(format!("{base}/v1/pipelines/expenses/versions")).await;
    assert_eq!(versions[1]["comment"], "lower the limit", "{versions}");
    b.open(&format!("{base}/#/pipelines/expenses/history"))
        .await;
    b.find("#versions button", Some("Diff"), Duration::from_secs(30))
        .await
        .click()
        .await
        .unwrap();
    b.find(
        "#diff pre.diff .add",
        Some("amount >= 900"),
        Duration::from_secs(30),
    )
    .await;
    b.screenshot("history").await;

    // A new pipeline created from the template in the browser.
    b.open(&format!("{base}/#/new")).await;
    b.find("#verdict", Some("Valid"), Duration::from_secs(30))
        .await;
    b.find("#apply", None, Duration::from_secs(5))
        .await
        .click()
        .await
        .unwrap();
    b.find("h1", Some("my_pipeline"), Duration::from_secs(30))
        .await;
    assert_eq!(
        get(format!("{base}/v1/pipelines/my_pipeline")).await["status"]["current_version"],
        1
    );

    // Paused from the browser, as the API says.
    b.open(&format!("{base}/#/pipelines/expenses/definition"))
        .await;
    let pause = b.find("#pause", None, Duration::from_secs(30)).await;
    pause.click().await.unwrap();
    b.find("#resume", None, Duration::from_secs(30)).await;
    assert_eq!(
        get(format!("{base}/v1/pipelines/expenses")).await["status"]["paused"],
        true
    );

    let _ = b.client.close().await;
    let _ = up.start_kill();
    let _ = up.wait().await;
}
