//! Security (docs/SECURITY.md): agents authenticate with certificates of the broker's client CA
//! and may append only as themselves; hostile inputs are refused, counted and harm no other
//! agent; every admin route checks its token and role.
//!
//! The QUIC clients here are real quinn clients speaking `runnel/2`, as an attacker with the
//! protocol crate would.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use runnel_e2e::{Pipeline, bin};
use runnel_event::{AckStatus, Batch, BatchAck, BodyFormat, Chunk, EnvelopeLimits, parse_body};
use runnel_protocol::ClientIdentity;

fn quic_addr(p: &Pipeline) -> SocketAddr {
    p.broker_arg("--quic-addr=").unwrap().parse().unwrap()
}

fn broker_ca(p: &Pipeline) -> Vec<u8> {
    std::fs::read(p.dir.path().join("broker/tls/ca.pem")).unwrap()
}

/// The certificate and key `Pipeline::enroll` wrote for `name`.
fn identity(p: &Pipeline, name: &str) -> ClientIdentity {
    let dir = p.dir.path().join("certs").join(name);
    ClientIdentity::from_pem(
        &std::fs::read(dir.join("agent.pem")).unwrap(),
        &std::fs::read(dir.join("agent.key")).unwrap(),
    )
    .unwrap()
}

/// A QUIC client trusting the broker's CA and presenting `identity`.
fn endpoint(ca: &[u8], identity: Option<ClientIdentity>) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(runnel_protocol::client_config(ca, identity).unwrap());
    ep
}

async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    ep.connect(addr, "localhost").unwrap().await
}

/// One `runnel/2` frame: a batch of `agent_id` holding one event.
fn frame(agent_id: &str, seq: u64) -> Vec<u8> {
    let now = runnel_event::now_ms();
    let body = format!(
        r#"[{{"event_id":"sec-{agent_id}-{seq}","event_type":"page.view","timestamp":"2026-12-01T12:00:00Z","properties":{{}}}}]"#
    );
    let events = parse_body(
        body.as_bytes(),
        BodyFormat::Json,
        &EnvelopeLimits::default(),
        now,
    )
    .events
    .into_iter()
    .map(|(_, e)| e)
    .collect();
    let frame = Batch {
        agent_id: agent_id.into(),
        host: "security-test".into(),
        epoch: 1,
        first_seq: seq,
        chunks: vec![Chunk { events }.encode()],
    }
    .encode_frame();
    let mut wire = 0u64.to_le_bytes().to_vec();
    wire.extend_from_slice(&frame);
    wire
}

/// Sends `bytes` on a new stream, finishes it unless `finish` is false, and reads the
/// broker's answer.
async fn exchange(
    conn: &quinn::Connection,
    bytes: &[u8],
    finish: bool,
) -> Result<BatchAck, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    if finish {
        send.finish().map_err(|e| e.to_string())?;
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        recv.read_to_end(runnel_protocol::ACK_BYTES_MAX),
    )
    .await
    .map_err(|_| "no answer in 20 s".to_string())?
    .map_err(|e| e.to_string())?;
    BatchAck::decode(&answer).map_err(|e| format!("{e:?}"))
}

/// `runnel_broker_agents_refused_total{reason=REASON}` now.
async fn refused(p: &Pipeline, reason: &str) -> u64 {
    let metrics = p.metrics().await;
    let prefix = format!("runnel_broker_agents_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn records(p: &Pipeline) -> u64 {
    p.log_stats()["records"].as_u64().unwrap()
}

async fn broker(args: &[&str]) -> Pipeline {
    let mut p = Pipeline::with_args(&[], args);
    p.start_broker().await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_appends_nothing() {
    let p = broker(&[]).await;
    let ep = endpoint(&broker_ca(&p), None);
    let sent = match connect(&ep, quic_addr(&p)).await {
        Ok(conn) => {
            let answer = exchange(&conn, &frame("nobody", 0), true).await;
            let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .expect("the broker closes the connection");
            assert!(
                reason
                    .to_string()
                    .contains("client certificate is required"),
                "{reason}"
            );
            answer
        }
        Err(e) => Err(e.to_string()),
    };
    assert!(sent.is_err(), "{sent:?}");
    assert_eq!(records(&p), 0);
    assert!(refused(&p, "no_certificate").await >= 1);
}

/// An agent certificate signed by a CA of the test's own (`CN=name`).
fn foreign_identity(name: &str) -> ClientIdentity {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let mut agent = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    agent
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    agent.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = agent.signed_by(&key, &ca).unwrap();
    ClientIdentity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_appends_nothing() {
    let p = broker(&[]).await;
    // The broker knows this name: only the CA is wrong.
    p.enroll("web-1", "shop");
    let ep = endpoint(&broker_ca(&p), Some(foreign_identity("web-1")));
    let sent = match connect(&ep, quic_addr(&p)).await {
        Ok(conn) => exchange(&conn, &frame("web-1", 0), true).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(sent.is_err(), "{sent:?}");
    assert_eq!(records(&p), 0);
    assert!(refused(&p, "untrusted_certificate").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_and_its_open_connections_closed() {
    let p = broker(&[]).await;
    p.enroll("web-1", "shop");
    let ep = endpoint(&broker_ca(&p), Some(identity(&p, "web-1")));
    let conn = connect(&ep, quic_addr(&p)).await.unwrap();
    // Enrolled, it appends: the refusals below are not a broken client.
    let ack = exchange(&conn, &frame("web-1", 0), true).await.unwrap();
    assert_eq!(ack.status, AckStatus::Appended, "{}", ack.message);
    assert_eq!(records(&p), 1);
    let agents: serde_json::Value =
        serde_json::from_str(&p.cli(&["agent", "revoke", "web-1"])).unwrap();
    assert!(
        agents["certificates"][0]["revoked_at"].is_string(),
        "{agents}"
    );
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("revocation closes the open connection");
    assert!(reason.to_string().contains("revoked"), "{reason}");
    let ep = endpoint(&broker_ca(&p), Some(identity(&p, "web-1")));
    let again = match connect(&ep, quic_addr(&p)).await {
        Ok(conn) => exchange(&conn, &frame("web-1", 1), true).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(again.is_err(), "{again:?}");
    assert_eq!(records(&p), 1);
    assert!(refused(&p, "revoked").await >= 1);
    // A new certificate for the same agent works again.
    p.enroll("web-1", "shop");
    let ep = endpoint(&broker_ca(&p), Some(identity(&p, "web-1")));
    let conn = connect(&ep, quic_addr(&p)).await.unwrap();
    let ack = exchange(&conn, &frame("web-1", 1), true).await.unwrap();
    assert_eq!(ack.status, AckStatus::Appended, "{}", ack.message);
    assert_eq!(records(&p), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_another_agent_is_refused() {
    let p = broker(&[]).await;
    p.enroll("web-1", "shop");
    p.enroll("web-2", "bank");
    let ep = endpoint(&broker_ca(&p), Some(identity(&p, "web-1")));
    let conn = connect(&ep, quic_addr(&p)).await.unwrap();
    // A forged agent_id, and a batch of web-2's replayed by web-1: the same frame.
    let ack = exchange(&conn, &frame("web-2", 0), true).await.unwrap();
    assert_eq!(ack.status, AckStatus::Rejected);
    assert!(
        ack.message.contains("is not this connection's"),
        "{}",
        ack.message
    );
    assert_eq!(records(&p), 0);
    assert!(refused(&p, "agent_id_mismatch").await >= 1);
    // The connection itself is fine: its own batch is appended.
    let ack = exchange(&conn, &frame("web-1", 0), true).await.unwrap();
    assert_eq!(ack.status, AckStatus::Appended, "{}", ack.message);
    assert_eq!(records(&p), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_stalled_frames_are_refused_and_harm_no_other_agent() {
    let p = broker(&["--ingest-frame-timeout-ms=1500", "--batch-bytes-max=65536"]).await;
    p.enroll("bad", "shop");
    p.enroll("good", "shop");
    let ca = broker_ca(&p);
    let bad = connect(&endpoint(&ca, Some(identity(&p, "bad"))), quic_addr(&p))
        .await
        .unwrap();
    let good = connect(&endpoint(&ca, Some(identity(&p, "good"))), quic_addr(&p))
        .await
        .unwrap();
    let garbage = exchange(&bad, &[0xAB; 200], true).await.unwrap();
    assert_eq!(garbage.status, AckStatus::Rejected);
    let mut huge = frame("bad", 0);
    huge[8 + 8..8 + 16].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f]);
    let oversized = exchange(&bad, &huge, true).await.unwrap();
    assert_eq!(oversized.status, AckStatus::Rejected);
    assert!(
        oversized.message.contains("batch_bytes_max"),
        "{}",
        oversized.message
    );
    // Half a frame, the stream left open: refused once the frame timeout passes.
    let half = frame("bad", 0);
    let stalled = tokio::spawn({
        let bad = bad.clone();
        async move { exchange(&bad, &half[..half.len() / 2], false).await }
    });
    // Meanwhile the other agent ships as usual.
    for seq in 0..5 {
        let ack = exchange(&good, &frame("good", seq), true).await.unwrap();
        assert_eq!(ack.status, AckStatus::Appended, "{}", ack.message);
    }
    let stalled = stalled.await.unwrap().unwrap();
    assert_eq!(stalled.status, AckStatus::Rejected);
    assert!(
        stalled.message.contains("ingest_frame_timeout_ms"),
        "{}",
        stalled.message
    );
    assert_eq!(records(&p), 5);
    for reason in ["bad_frame", "frame_too_large", "frame_timeout"] {
        assert!(refused(&p, reason).await >= 1, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_limited() {
    let p = broker(&["--connections-per-address-max=3"]).await;
    p.enroll("web-1", "shop");
    let ca = broker_ca(&p);
    let mut open = Vec::new();
    let mut refusals = 0;
    for _ in 0..6 {
        match connect(&endpoint(&ca, Some(identity(&p, "web-1"))), quic_addr(&p)).await {
            Ok(c) => open.push(c),
            Err(_) => refusals += 1,
        }
    }
    assert_eq!(open.len(), 3);
    assert_eq!(refusals, 3);
    assert!(refused(&p, "connections_per_address").await >= 3);
    // The admitted ones work.
    let ack = exchange(&open[0], &frame("web-1", 0), true).await.unwrap();
    assert_eq!(ack.status, AckStatus::Appended, "{}", ack.message);
}

/// A token of `role` made with `runnel token create`.
fn token(p: &Pipeline, role: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&p.cli(&["token", "create", "--role", role, "--description", "test"]))
            .unwrap();
    assert_eq!(v["role"], role);
    v["token"].as_str().unwrap().to_string()
}

const ROLES: [&str; 3] = ["reader", "deployer", "admin"];

/// Walks every route the broker lists (`GET /v1/routes`, made from the table the router is
/// built from): each refuses a missing and a wrong token, and a token of a role below its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_refuses_a_missing_wrong_or_too_low_token() {
    let p = broker(&[]).await;
    let tokens: Vec<(usize, String)> = ROLES
        .iter()
        .enumerate()
        .map(|(i, r)| (i, token(&p, r)))
        .collect();
    let http = reqwest::Client::new();
    let base = format!("http://{}", p.admin_addr);
    let routes: Vec<serde_json::Value> = http
        .get(format!("{base}/v1/routes"))
        .bearer_auth(&tokens[0].1)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(routes.len() >= 25, "{routes:?}");
    let call = |method: &str, path: &str, token: Option<&str>| {
        let url = format!("{base}{}", path.replace("{name}", "x").replace("{id}", "x"));
        let req = http.request(method.parse().unwrap(), url);
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // A tenant's admin token: refused on every route about the whole broker.
    let v: serde_json::Value =
        serde_json::from_str(&p.cli(&["token", "create", "--role", "admin", "--tenant", "shop"]))
            .unwrap();
    let tenant_admin = v["token"].as_str().unwrap().to_string();
    let mut checked = 0;
    let mut platform = 0;
    for r in &routes {
        let (method, path, access) = (
            r["method"].as_str().unwrap(),
            r["path"].as_str().unwrap(),
            r["access"].as_str().unwrap(),
        );
        match access {
            "open" | "metrics" => {
                let s = call(method, path, None).await;
                assert_eq!(s, 200, "{method} {path} is open");
            }
            _ => {
                let need = if access == "report_link" {
                    0
                } else {
                    ROLES.iter().position(|x| *x == access).unwrap()
                };
                assert_eq!(
                    call(method, path, None).await,
                    401,
                    "{method} {path} without a token"
                );
                assert_eq!(
                    call(
                        method,
                        path,
                        Some(
                            "rnl_0000000000000000000000000000000000000000000000000000000000000000"
                        )
                    )
                    .await,
                    401,
                    "{method} {path} with a wrong token"
                );
                let s = call(method, path, Some(&tenant_admin)).await;
                if r["tenant_tokens"] == false {
                    assert_eq!(s, 403, "{method} {path} with a tenant's admin token");
                    platform += 1;
                } else {
                    assert!(
                        s != 401 && s != 403,
                        "{method} {path} with a tenant's admin token: {s}"
                    );
                }
                for (i, t) in &tokens {
                    let s = call(method, path, Some(t)).await;
                    if *i < need {
                        assert_eq!(s, 403, "{method} {path} with a {} token", ROLES[*i]);
                    } else {
                        assert!(
                            s != 401 && s != 403,
                            "{method} {path} with a {} token: {s}",
                            ROLES[*i]
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked} routes checked");
    // The log's two and the archive's.
    assert!(platform >= 3, "{platform} broker-wide routes checked");
    // A revoked token is refused from the next request on.
    let list: Vec<serde_json::Value> = serde_json::from_str(&p.cli(&["token", "list"])).unwrap();
    let reader = list
        .iter()
        .find(|t| t["role"] == "reader" && t["description"] == "test")
        .unwrap();
    p.cli(&["token", "revoke", reader["id"].as_str().unwrap()]);
    assert_eq!(call("GET", "/v1/log/stats", Some(&tokens[0].1)).await, 401);
    // Only hashes are stored.
    let state = std::fs::read(p.dir.path().join("broker/state.redb")).unwrap();
    for (_, t) in &tokens {
        assert!(!state.windows(t.len()).any(|w| w == t.as_bytes()));
    }
}

fn start_fails(args: &[&str], dir: &Path) -> String {
    let out = std::process::Command::new(bin("runnel"))
        .arg("broker")
        .arg(format!("--data-dir={}", dir.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_non_loopback_admin_or_flight_without_tls_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let err = start_fails(
        &["--admin-addr=0.0.0.0:0", "--quic-addr=127.0.0.1:0"],
        dir.path(),
    );
    assert!(
        err.contains("admin_addr") && err.contains("loopback"),
        "{err}"
    );
    let err = start_fails(
        &[
            "--admin-addr=127.0.0.1:0",
            "--quic-addr=127.0.0.1:0",
            "--flight-addr=0.0.0.0:0",
            "--flight-token=0123456789abcdef0123",
        ],
        dir.path(),
    );
    assert!(err.contains("flight_addr") && err.contains("TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_data_dir_of_another_agent() {
    let mut p = Pipeline::new(&[]);
    p.start().await;
    p.agent.kill9();
    let flags = p.enroll("other-agent", "default");
    p.agent.args.retain(|a| !a.starts_with("--tls-"));
    p.agent.args.extend(flags);
    p.agent.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while p.agent.running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent should refuse to start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = p.agent.log_text();
    assert!(log.contains("belongs to agent \"test-agent\""), "{log}");
}
