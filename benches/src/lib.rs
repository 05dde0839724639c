//! Shared pieces of the benchmarks: the machine they ran on, a 300-byte event, process CPU time,
//! and starting the release binaries (and peers) on free ports.

use std::path::{Path, PathBuf};

/// The benchmarks run the broker and the agent in process with the allocator their binaries use.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A valid event whose JSON is close to `bytes` long (at least ~200).
pub fn event_json(id: u64, bytes: usize) -> String {
    let base = format!(
        r#"{{"event_id":"ev-{id:012}","event_type":"checkout.completed","timestamp":1763726400000,"user_id":"user-{u:06}","platform":"ios","app_version":"4.2.0","properties":{{"amount":129.5,"currency":"EUR","pad":""}}}}"#,
        u = id % 100_000
    );
    let pad = bytes.saturating_sub(base.len());
    base.replacen(r#""pad":"""#, &format!(r#""pad":"{}""#, "x".repeat(pad)), 1)
}

/// A JSON array body of `n` events starting at id `first`.
pub fn body(first: u64, n: usize, event_bytes: usize) -> String {
    let mut s = String::with_capacity(n * (event_bytes + 1) + 2);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&event_json(first + i as u64, event_bytes));
    }
    s.push(']');
    s
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command: state is 0, utime is 11, stime is 12.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// One line describing the machine: cores, memory, CPU model, kernel, fsync latency of a 4 KiB
/// append in `dir`.
pub fn machine(dir: &Path) -> String {
    runnel_loadgen::machine::Machine::probe(dir).to_string()
}

/// Where an example or test plugin's component is: the plugins' build
/// (`cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml`) in the
/// target dir of this benchmark executable (`target/release/deps/…`).
pub fn component_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .expect("target dir")
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// The component of an example or test plugin (see [`component_path`]).
pub fn component(name: &str) -> Vec<u8> {
    let path = component_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first: cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml",
            path.display()
        )
    })
}

/// A release binary of the workspace, next to the benchmark executable.
pub fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --bins` first",
        path.display()
    );
    path
}

/// Median of a list of figures.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A setting from the environment, or `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its output discarded.
pub fn spawn(cmd: &mut std::process::Command) -> Guard {
    use std::process::Stdio;
    Guard(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
    )
}

/// Waits up to 30 s for `url` to answer 2xx.
pub async fn wait_ready(url: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{url} not ready");
}

/// The broker's admin token (it writes it to `DATA_DIR/admin-token` on its first start).
pub fn admin_token(broker_dir: &Path) -> String {
    std::fs::read_to_string(broker_dir.join("admin-token"))
        .expect("the broker writes DATA_DIR/admin-token on its first start")
        .trim()
        .to_string()
}

/// An agent certificate and key (`runnel agent enroll` against the broker at `admin` whose data
/// dir is `broker_dir`), written to `dir/agent-tls/`.
pub fn enroll(broker_dir: &Path, admin: u16, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = dir.join("agent-tls");
    let status = std::process::Command::new(release_bin("runnel"))
        .args(["agent", "enroll", "--name", name, "--out"])
        .arg(&out)
        .arg(format!("--admin-addr=127.0.0.1:{admin}"))
        .arg("--token-file")
        .arg(broker_dir.join("admin-token"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("runnel agent enroll");
    assert!(status.success(), "runnel agent enroll failed");
    (out.join("agent.pem"), out.join("agent.key"))
}

/// The release `runnel-agent` with the benchmarks' settings (a spool and dedup set large enough
/// for long runs), on `dir/agent`, shipping to the broker at `broker_quic` with the certificate
/// and key `tls`; pinned to core `pin` with `taskset` when given.
pub fn agent_cmd(
    dir: &Path,
    http: u16,
    broker_quic: u16,
    ca: &Path,
    tls: &(PathBuf, PathBuf),
    pin: Option<usize>,
) -> std::process::Command {
    use std::process::Command;
    let agent = release_bin("runnel-agent");
    let mut cmd = match pin {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(agent);
            c
        }
        None => Command::new(agent),
    };
    cmd.arg(format!("--data-dir={}", dir.join("agent").display()))
        .arg(format!("--http-addr=127.0.0.1:{http}"))
        .arg(format!("--broker-addr=127.0.0.1:{broker_quic}"))
        .arg(format!("--broker-ca={}", ca.display()))
        .arg(format!("--tls-cert={}", tls.0.display()))
        .arg(format!("--tls-key={}", tls.1.display()))
        .arg("--spool-bytes-max=17179869184")
        .arg("--spool-segment-bytes-max=268435456")
        .arg("--dedup-ids-max=50000000");
    cmd
}

/// A release broker (`dir/broker`) and agent on free ports, both ready: (broker, agent, the
/// agent's HTTP port, the broker's admin port).
pub async fn broker_and_agent(dir: &Path) -> (Guard, Guard, u16, u16) {
    let (quic, admin, http) = (free_port(), free_port(), free_port());
    let broker = spawn(
        std::process::Command::new(release_bin("runnel"))
            .args(["broker", "--data-dir"])
            .arg(dir.join("broker"))
            .arg(format!("--quic-addr=127.0.0.1:{quic}"))
            .arg(format!("--admin-addr=127.0.0.1:{admin}"))
            .arg("--segment-bytes-max=536870912"),
    );
    wait_ready(&format!("http://127.0.0.1:{admin}/readyz")).await;
    let ca = dir.join("broker/tls/ca.pem");
    let tls = enroll(&dir.join("broker"), admin, dir, "bench-agent");
    let agent = spawn(&mut agent_cmd(dir, http, quic, &ca, &tls, None));
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await;
    (broker, agent, http, admin)
}

/// The event types of [`varied_event`], in the order it picks them.
pub const VARIED_TYPES: [&str; 3] = ["page.view", "checkout.completed", "app.open"];

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Event `n` at `timestamp_ms`, received `received_after_ms` later: about 300 bytes of JSON
/// whose ids and values vary as real ones do (random ids compress as badly as UUIDs), so a log
/// of them holds what an agent's compressed batches would.
pub fn varied_event(n: u64, timestamp_ms: i64, received_after_ms: i64) -> runnel_event::Event {
    let (a, b) = (mix(n), mix(n ^ 0xABCD));
    runnel_event::Event {
        event_id: format!("{a:016x}{b:016x}"),
        event_type: VARIED_TYPES[(a % 3) as usize].into(),
        timestamp_ms,
        received_at_ms: timestamp_ms + received_after_ms,
        schema_version: 1,
        user_id: Some(format!("user-{:06}", b % 50_000)),
        session_id: Some(format!("s-{:08x}", a >> 32)),
        device_id: None,
        platform: Some(["ios", "android", "web"][(b % 3) as usize].into()),
        app_version: Some("4.2.0".into()),
        properties: Some(format!(
            r#"{{"amount":{}.{:02},"currency":"KES","ip":"198.51.{}.{}","merchant":"m-{:05}"}}"#,
            a % 10_000,
            b % 100,
            (a >> 8) % 256,
            (b >> 8) % 256,
            (a >> 16) % 20_000
        )),
    }
}

/// Runs `sql` over Flight SQL (`GetFlightInfo`, then `DoGet` of every endpoint, decoded);
/// returns the rows.
pub async fn flight_sql_rows(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> u64 {
    use futures::StreamExt;
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let mut rows = 0;
    for e in info.endpoint {
        let mut s = client.do_get(e.ticket.unwrap()).await.unwrap();
        while let Some(b) = s.next().await {
            rows += b.unwrap().num_rows() as u64;
        }
    }
    rows
}
