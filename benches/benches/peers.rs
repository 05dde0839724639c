//! Runnel side by side with NATS JetStream and Redis Streams: the same durable-append workload,
//! on this machine, in one run.
//!
//! - **Runnel**: `runnel-agent` + `runnel broker` (release binaries); a request of `B` events to
//!   `POST /v1/events` is answered 202 after the agent's spool fsync, while the agent ships to
//!   the broker, which fsyncs its log.
//! - **Redis Streams** (`redis-server`, `appendonly yes`, `appendfsync always`): `B` pipelined
//!   `XADD`s, one event each; Redis answers after the AOF fsync.
//! - **NATS JetStream** (`nats-server` with `sync_interval: always`, file storage): `B`
//!   publishes, one event each, then their `B` acks; the server acks after the fsync.
//!
//! The events are the same bytes in all three (`runnel-loadgen`'s workload, 300 bytes of JSON by
//! default), the same batch sizes, the same closed loop with the same connections, measured by
//! the same engine. Runs interleave the systems, and the ratio Runnel / peer is of medians.
//!
//! Run: `benches/peers/run.sh` (installs the peers, builds, runs this). Environment:
//! `RUNNEL_PEERS_SECS` (per run, default 10), `RUNNEL_PEERS_RUNS` (default 3),
//! `RUNNEL_PEERS_BATCHES` (default `100,1000`), `RUNNEL_PEERS_CONNECTIONS` (default 8),
//! `RUNNEL_PEERS_EVENT_BYTES` (default 300), `RUNNEL_NATS_SERVER` (default: `nats-server` in
//! `~/.cache/runnel-py/bin`, else on `PATH`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_benches::{broker_and_agent, env, free_port, median, spawn};
use runnel_loadgen::engine::{self, Mode, Plan, Recorder, Sent, Target};
use runnel_loadgen::workload::{Scenario, Spec, Workload};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn find(program: &str, env_name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env_name) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    extra
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path).map(|d| d.join(program)))
        .find(|p| p.is_file())
}

/// Connections a target takes turns on.
struct Pool<C> {
    free: tokio::sync::Mutex<Vec<C>>,
    ready: tokio::sync::Semaphore,
}

impl<C> Pool<C> {
    fn new(conns: Vec<C>) -> Self {
        Self {
            ready: tokio::sync::Semaphore::new(conns.len()),
            free: tokio::sync::Mutex::new(conns),
        }
    }
    async fn take(&self) -> C {
        self.ready.acquire().await.expect("open").forget();
        self.free
            .lock()
            .await
            .pop()
            .expect("a permit means a connection")
    }
    async fn give(&self, c: C) {
        self.free.lock().await.push(c);
        self.ready.add_permits(1);
    }
}

type Conn = BufReader<TcpStream>;

/// Redis Streams: `B` pipelined XADDs, then `B` answers.
struct Redis {
    pool: Pool<Conn>,
    workload: Arc<Workload>,
}

impl Target for Redis {
    async fn send(&self, request: u64) -> Result<Sent, String> {
        let body = self
            .workload
            .body(request, runnel_loadgen::targets::now_ms());
        let mut cmd = Vec::with_capacity(body.len() + self.workload.spec().batch * 64);
        let mut n = 0u64;
        for event in self.workload.events(request, &body) {
            cmd.extend_from_slice(
                b"*5\r\n$4\r\nXADD\r\n$12\r\nrunnel-bench\r\n$1\r\n*\r\n$1\r\ne\r\n",
            );
            cmd.extend_from_slice(format!("${}\r\n", event.len()).as_bytes());
            cmd.extend_from_slice(event);
            cmd.extend_from_slice(b"\r\n");
            n += 1;
        }
        let mut c = self.pool.take().await;
        let result = async {
            c.get_mut().write_all(&cmd).await.map_err(|_| "write")?;
            let mut line = String::new();
            for _ in 0..n {
                line.clear();
                c.read_line(&mut line).await.map_err(|_| "read")?;
                match line.as_bytes().first() {
                    Some(b'$') => {
                        let len: usize = line[1..].trim().parse().map_err(|_| "reply")?;
                        let mut id = vec![0; len + 2];
                        c.read_exact(&mut id).await.map_err(|_| "read")?;
                    }
                    _ => return Err("redis error"),
                }
            }
            Ok(())
        }
        .await;
        self.pool.give(c).await;
        result.map_err(str::to_string)?;
        Ok(Sent {
            events: n,
            bytes: body.len() as u64,
            accepted: n,
            ..Sent::default()
        })
    }
}

/// NATS JetStream: `B` publishes with reply subjects, then `B` acks.
struct Nats {
    pool: Pool<(Conn, u32)>,
    workload: Arc<Workload>,
}

/// Reads one `MSG subject sid len` with its payload, answering PINGs and skipping `+OK`.
async fn nats_msg(c: &mut Conn) -> Result<Vec<u8>, String> {
    let mut line = String::new();
    loop {
        line.clear();
        c.read_line(&mut line).await.map_err(|_| "read")?;
        if line.starts_with("MSG ") {
            let len: usize = line
                .split_whitespace()
                .last()
                .and_then(|l| l.parse().ok())
                .ok_or("reply")?;
            let mut payload = vec![0; len + 2];
            c.read_exact(&mut payload).await.map_err(|_| "read")?;
            payload.truncate(len);
            return Ok(payload);
        } else if line.starts_with("PING") {
            c.get_mut()
                .write_all(b"PONG\r\n")
                .await
                .map_err(|_| "write")?;
        } else if line.starts_with("-ERR") {
            return Err(format!("nats {}", line.trim()));
        } else if line.is_empty() {
            return Err("closed".into());
        }
    }
}

async fn nats_connect(port: u16, inbox: u32) -> Conn {
    let mut c = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    let mut info = String::new();
    c.read_line(&mut info).await.unwrap();
    assert!(info.starts_with("INFO"), "{info}");
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false}}\r\nSUB _INBOX.{inbox}.* 1\r\nPING\r\n"
    );
    c.get_mut().write_all(hello.as_bytes()).await.unwrap();
    let mut line = String::new();
    while !line.starts_with("PONG") {
        line.clear();
        c.read_line(&mut line).await.unwrap();
    }
    c
}

impl Target for Nats {
    async fn send(&self, request: u64) -> Result<Sent, String> {
        let body = self
            .workload
            .body(request, runnel_loadgen::targets::now_ms());
        let (mut c, inbox) = self.pool.take().await;
        let mut cmd = Vec::with_capacity(body.len() + self.workload.spec().batch * 64);
        let mut n = 0u64;
        for event in self.workload.events(request, &body) {
            cmd.extend_from_slice(
                format!("PUB bench.events _INBOX.{inbox}.{n} {}\r\n", event.len()).as_bytes(),
            );
            cmd.extend_from_slice(event);
            cmd.extend_from_slice(b"\r\n");
            n += 1;
        }
        let result = async {
            c.get_mut()
                .write_all(&cmd)
                .await
                .map_err(|_| "write".to_string())?;
            for _ in 0..n {
                let ack = nats_msg(&mut c).await?;
                if ack.windows(7).any(|w| w == b"\"error\"") {
                    return Err("jetstream error".to_string());
                }
            }
            Ok(())
        }
        .await;
        self.pool.give((c, inbox)).await;
        result?;
        Ok(Sent {
            events: n,
            bytes: body.len() as u64,
            accepted: n,
            ..Sent::default()
        })
    }
}

struct Settings {
    secs: u64,
    connections: usize,
    event_bytes: usize,
}

fn workload(batch: usize, s: &Settings) -> Arc<Workload> {
    Arc::new(Workload::new(Spec {
        scenario: Scenario::Fintech,
        batch,
        event_bytes: s.event_bytes,
        dup_ratio: 0.0,
        invalid_ratio: 0.0,
        run_id: rand_id(),
    }))
}

fn rand_id() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// Runs the closed loop; (events/s, p50 ms, p99 ms).
async fn measure<T: Target>(target: Arc<T>, s: &Settings) -> (f64, f64, f64) {
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let plan = Plan {
        mode: Mode::Closed,
        connections: s.connections,
        duration: Duration::from_secs(s.secs),
    };
    engine::run(target, plan, tokio::time::Instant::now(), rec.clone()).await;
    let r = rec.lock().unwrap();
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    let secs = r.last_answer.as_secs_f64();
    (
        r.totals.events as f64 / secs,
        r.latency.value_at_quantile(0.5) as f64 / 1e3,
        r.latency.value_at_quantile(0.99) as f64 / 1e3,
    )
}

async fn wait_tcp(port: u16) {
    for _ in 0..1500 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("port {port} not ready");
}

async fn runnel(batch: usize, s: &Settings) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _agent, http, _admin) = broker_and_agent(dir.path()).await;
    let target = runnel_loadgen::targets::AgentHttp::new(
        format!("http://127.0.0.1:{http}/v1/events"),
        workload(batch, s),
        s.connections,
        Duration::from_secs(30),
    )
    .unwrap();
    measure(Arc::new(target), s).await
}

async fn redis(bin: &Path, batch: usize, s: &Settings) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = spawn(
        Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--protected-mode", "no", "--daemonize", "no"]),
    );
    wait_tcp(port).await;
    let mut conns = Vec::new();
    for _ in 0..s.connections {
        conns.push(BufReader::new(
            TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        ));
    }
    let target = Redis {
        pool: Pool::new(conns),
        workload: workload(batch, s),
    };
    measure(Arc::new(target), s).await
}

async fn nats(bin: &Path, batch: usize, s: &Settings) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            dir.path().join("js").display()
        ),
    )
    .unwrap();
    let _server = spawn(Command::new(bin).arg("-c").arg(&conf));
    wait_tcp(port).await;
    let mut setup = nats_connect(port, 0).await;
    let stream =
        br#"{"name":"RUNNELBENCH","subjects":["bench.events"],"storage":"file","num_replicas":1}"#;
    let create = format!(
        "PUB $JS.API.STREAM.CREATE.RUNNELBENCH _INBOX.0.create {}\r\n",
        stream.len()
    );
    setup.get_mut().write_all(create.as_bytes()).await.unwrap();
    setup.get_mut().write_all(stream).await.unwrap();
    setup.get_mut().write_all(b"\r\n").await.unwrap();
    let answer = nats_msg(&mut setup).await.unwrap();
    assert!(
        !answer.windows(7).any(|w| w == b"\"error\""),
        "creating the stream: {}",
        String::from_utf8_lossy(&answer)
    );
    let mut conns = Vec::new();
    for i in 0..s.connections {
        let inbox = i as u32 + 1;
        conns.push((nats_connect(port, inbox).await, inbox));
    }
    let target = Nats {
        pool: Pool::new(conns),
        workload: workload(batch, s),
    };
    measure(Arc::new(target), s).await
}

fn main() {
    let s = Settings {
        secs: env("RUNNEL_PEERS_SECS", 10),
        connections: env("RUNNEL_PEERS_CONNECTIONS", 8) as usize,
        event_bytes: env("RUNNEL_PEERS_EVENT_BYTES", 300) as usize,
    };
    let runs = env("RUNNEL_PEERS_RUNS", 3);
    let batches: Vec<usize> = std::env::var("RUNNEL_PEERS_BATCHES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    let redis_bin = find("redis-server", "RUNNEL_REDIS_SERVER", &[]);
    let nats_bin = find(
        "nats-server",
        "RUNNEL_NATS_SERVER",
        &[home.join(".cache/runnel-py/bin/nats-server")],
    );
    println!(
        "machine: {}",
        runnel_loadgen::machine::Machine::probe(&std::env::temp_dir())
    );
    println!(
        "durable appends of {}-byte events, closed loop, {} connections, {} s per run, {runs} runs (interleaved)",
        s.event_bytes, s.connections, s.secs
    );
    let version = |bin: &Option<PathBuf>| {
        bin.as_ref().map_or(
            "not installed (benches/peers/run.sh installs it)".to_string(),
            |b| {
                let out = Command::new(b).arg("--version").output();
                out.map_or("?".into(), |o| {
                    String::from_utf8_lossy(&o.stdout).trim().to_string()
                })
            },
        )
    };
    println!("redis-server: {}", version(&redis_bin));
    println!("nats-server:  {}", version(&nats_bin));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for &batch in &batches {
            let (mut r, mut re, mut n) = (Vec::new(), Vec::new(), Vec::new());
            for run in 0..runs {
                let a = runnel(batch, &s).await;
                println!("  batch {batch} run {run}: runnel {:>9.0} events/s  p50 {:.2} ms  p99 {:.2} ms", a.0, a.1, a.2);
                r.push(a);
                if let Some(b) = &redis_bin {
                    let a = redis(b, batch, &s).await;
                    println!("  batch {batch} run {run}: redis  {:>9.0} events/s  p50 {:.2} ms  p99 {:.2} ms", a.0, a.1, a.2);
                    re.push(a);
                }
                if let Some(b) = &nats_bin {
                    let a = nats(b, batch, &s).await;
                    println!("  batch {batch} run {run}: nats   {:>9.0} events/s  p50 {:.2} ms  p99 {:.2} ms", a.0, a.1, a.2);
                    n.push(a);
                }
            }
            let med = |v: &[(f64, f64, f64)]| {
                (
                    median(v.iter().map(|x| x.0).collect()),
                    median(v.iter().map(|x| x.1).collect()),
                    median(v.iter().map(|x| x.2).collect()),
                )
            };
            let rm = med(&r);
            println!("batch {batch}, medians:");
            println!(
                "  Runnel (agent spool fsync; broker log fsync behind it) {:>9.0} events/s  p50 {:.2} ms  p99 {:.2} ms",
                rm.0, rm.1, rm.2
            );
            for (name, v) in [("Redis Streams (appendfsync always)", &re), ("NATS JetStream (sync_interval always)", &n)] {
                if v.is_empty() {
                    continue;
                }
                let m = med(v);
                println!(
                    "  {name:<54} {:>9.0} events/s  p50 {:.2} ms  p99 {:.2} ms   Runnel / peer = {:.2}",
                    m.0,
                    m.1,
                    m.2,
                    rm.0 / m.0
                );
            }
        }
    });
}
