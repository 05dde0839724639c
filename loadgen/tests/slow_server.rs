//! Coordinated omission, against a real HTTP server slowed on purpose: it answers one request at
//! a time, each after 20 ms, so it serves 50 requests a second. An open loop offered twice that
//! must report latency that grows for as long as the overload lasts; a closed loop against the
//! same server sees only the 20 ms service time, which is the error the open loop exists to
//! avoid. (The margins are wide: this checks behaviour, not speed.)

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use runnel_loadgen::IngestArgs;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: IngestArgs,
}

async fn slow_agent() -> String {
    let turn = Arc::new(tokio::sync::Mutex::new(()));
    let app = axum::Router::new().route(
        "/v1/events",
        axum::routing::post(move || {
            let turn = turn.clone();
            async move {
                let _one_at_a_time = turn.lock().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                (
                    axum::http::StatusCode::ACCEPTED,
                    r#"{"accepted":10,"duplicates":0,"rejected":[]}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1/events")
}

fn args(url: &str, extra: &[&str]) -> IngestArgs {
    let mut all = vec!["bench", "--url", url, "--batch", "10", "--quiet"];
    all.extend_from_slice(extra);
    Cli::parse_from(all).args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_above_capacity_reports_growing_latency_where_a_closed_loop_does_not() {
    let url = slow_agent().await;
    // 1,000 events/s in requests of 10: 100 requests a second, twice what the server serves.
    let open = runnel_loadgen::ingest(&args(
        &url,
        &[
            "--rate",
            "1000",
            "--duration",
            "2s",
            "--connections",
            "1000",
        ],
    ))
    .await
    .unwrap();
    let p50 = |s: &runnel_loadgen::engine::Second| s.latency.value_at_quantile(0.5);
    let seconds = &open.rec.seconds;
    assert!(
        seconds.len() >= 4,
        "the backlog drains after the 2 s: {}",
        seconds.len()
    );
    let (first, last) = (p50(&seconds[0]), p50(&seconds[seconds.len() - 1]));
    assert!(
        last > 3 * first && last > 1_000_000,
        "latency grows with the backlog: p50 {first} µs in the first second, {last} µs in the last"
    );
    assert!(
        open.rec.latency.max() > 1_500_000,
        "{}",
        open.rec.latency.max()
    );
    assert_eq!(
        open.rec.requests, 200,
        "every scheduled request was sent and answered"
    );
    assert!(open.rec.errors.is_empty(), "{:?}", open.rec.errors);

    // The same server in a closed loop: one request at a time, never a queue to see.
    let closed = runnel_loadgen::ingest(&args(
        &url,
        &["--rate", "max", "--duration", "2s", "--connections", "1"],
    ))
    .await
    .unwrap();
    assert!(
        closed.rec.latency.value_at_quantile(0.99) < 500_000,
        "{}",
        closed.rec.latency.value_at_quantile(0.99)
    );
    assert!(
        open.rec.latency.value_at_quantile(0.99) > 3 * closed.rec.latency.value_at_quantile(0.99)
    );
}
