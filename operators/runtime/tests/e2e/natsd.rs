//! The local nats-server of `anom up`: one server per store, and none left behind.

use std::time::{Duration, Instant};

use anom_runtime::natsd::{find_binary, Natsd};

fn alive(pid: u32) -> bool {
    // A zombie (dead, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

async fn gone(pid: u32) -> bool {
    let started = Instant::now();
    while alive(pid) {
        if started.elapsed() > Duration::from_secs(15) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_left_on_the_store_is_stopped_before_another_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    // What a SIGKILLed owner leaves: a server on the store, and its pid file.
    let first = Natsd::start_in(dir.path()).await.unwrap();
    let orphan = first.pid().unwrap();
    std::mem::forget(first); // not killed on drop, as after SIGKILL of its owner
    assert!(alive(orphan));
    let second = Natsd::start_in(dir.path()).await.unwrap();
    assert!(
        gone(orphan).await,
        "the earlier server still runs on the store"
    );
    let client = async_nats::connect(second.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "S".into(),
        subjects: vec!["s".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_file_naming_another_process_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // A reused pid: our own process, which is not a nats-server on this store.
    std::fs::write(
        dir.path().join("nats-server.pid"),
        std::process::id().to_string(),
    )
    .unwrap();
    assert!(find_binary().is_ok());
    let server = Natsd::start_in(dir.path()).await.unwrap();
    assert!(alive(std::process::id()));
    server.stop().await.unwrap();
}
