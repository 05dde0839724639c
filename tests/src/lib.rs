//! Harness for the end-to-end tests: starts `runnel broker` and `runnel-agent` as real child
//! processes on 127.0.0.1 with their own temporary data dirs, and kills them with SIGKILL.
//!
//! The binaries are taken from the cargo target dir this test binary was built into; build
//! them first (`cargo build --workspace --bins`, which `./test.sh` does).

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to this test's target dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// The admin token of each broker this process started, by its admin address.
static ADMIN_TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Records the admin token of a broker this process started some other way (`runnel dev`).
pub fn register_admin_token(admin_addr: &str, token: &str) {
    let mut tokens = ADMIN_TOKENS.lock().unwrap();
    tokens.retain(|(a, _)| a != admin_addr);
    tokens.push((admin_addr.to_string(), token.trim().to_string()));
}

/// The admin token of the broker whose admin API is at `admin_addr`, once it has started.
pub fn admin_token(admin_addr: &str) -> Option<String> {
    ADMIN_TOKENS
        .lock()
        .unwrap()
        .iter()
        .find(|(a, _)| a == admin_addr)
        .map(|(_, t)| t.clone())
}

/// An HTTP client that sends `token` (`Authorization: Bearer`) with every request, each
/// timing out after `timeout` when given.
pub fn authed_http(token: &str, timeout: Option<Duration>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let builder = reqwest::Client::builder().default_headers(headers);
    match timeout {
        Some(t) => builder.timeout(t),
        None => builder,
    }
    .build()
    .unwrap()
}

/// `runnel ARGS…` as a command, with `RUNNEL_TOKEN` set to the admin token of the broker the
/// arguments name (`--admin-addr ADDR`) when this process started it.
pub fn runnel<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let mut cmd = Command::new(bin("runnel"));
    let addr = args
        .iter()
        .position(|a| a == "--admin-addr")
        .and_then(|i| args.get(i + 1))
        .and_then(|a| a.to_str().map(str::to_string))
        .or_else(|| {
            args.iter().find_map(|a| {
                a.to_str()?
                    .strip_prefix("--admin-addr=")
                    .map(str::to_string)
            })
        });
    if let Some(token) = addr.as_deref().and_then(admin_token) {
        cmd.env("RUNNEL_TOKEN", token);
    }
    cmd.args(args);
    cmd
}

/// Runs `runnel ARGS…` to its end and parses its stdout as JSON lines (one value a line);
/// a failure is the command's stderr.
pub fn runnel_json<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> Result<Vec<serde_json::Value>, String> {
    let out = runnel(args).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    String::from_utf8(out.stdout)
        .map_err(|e| format!("runnel printed non-UTF-8: {e}"))?
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("not a JSON line ({e}): {l}")))
        .collect()
}

/// `runnel agg read NAME` (every row, at most 100,000) against the admin API at `admin`, parsed;
/// a failure is what it printed (while the broker is down, say).
pub fn agg_read(admin: &str, name: &str) -> Result<Vec<serde_json::Value>, String> {
    runnel_json([
        "agg",
        "read",
        name,
        "--limit",
        "100000",
        "--admin-addr",
        admin,
    ])
}

/// Ports this test process has handed out: the kernel may give the same free port to two
/// binds in a row, and two servers of one test must not be told the same port.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

fn distinct(mut pick: impl FnMut() -> u16) -> u16 {
    let mut seen = HANDED_OUT.lock().unwrap();
    loop {
        let port = pick();
        if !seen.contains(&port) {
            seen.push(port);
            return port;
        }
    }
}

/// A TCP port that was free a moment ago (never one handed out before in this process).
/// The seed of a test's random kill moments: `RUNNEL_KILL_SEED` when set (to rerun a failed
/// run's moments, as its output printed them), else a random one; printed.
pub fn kill_seed() -> u64 {
    let seed = std::env::var("RUNNEL_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill seed {seed}");
    seed
}

pub fn free_tcp_port() -> u16 {
    distinct(|| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

/// A UDP port that was free a moment ago (never one handed out before in this process).
pub fn free_udp_port() -> u16 {
    distinct(|| {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

/// A child process with its arguments, so it can be restarted the same way.
pub struct Proc {
    name: &'static str,
    program: PathBuf,
    /// Its arguments (a test may change them between runs).
    pub args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// How many times it was killed.
    pub kills: u32,
}

impl Proc {
    /// A process to start with `args`, its output appended to `log`.
    pub fn new(name: &'static str, program: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name,
            program,
            args,
            log,
            child: None,
            kills: 0,
        }
    }

    /// Starts the process (stdout and stderr appended to its log file).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
            self.kills += 1;
        }
    }

    /// True while started and not exited.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Resident memory of the running process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The process's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A broker and an agent wired together in one temporary directory.
pub struct Pipeline {
    /// Temporary root (removed on drop).
    pub dir: tempfile::TempDir,
    /// `runnel broker`.
    pub broker: Proc,
    /// `runnel-agent`.
    pub agent: Proc,
    /// `http://127.0.0.1:PORT` of the agent.
    pub agent_url: String,
    /// `127.0.0.1:PORT` of the broker admin API.
    pub admin_addr: String,
}

impl Pipeline {
    /// Prepares (does not start) a pipeline; `agent_extra` are additional agent flags.
    pub fn new(agent_extra: &[&str]) -> Self {
        Self::with_args(agent_extra, &[])
    }

    /// Like [`Pipeline::new`], with additional broker flags too; `{dir}` in a broker flag is the
    /// pipeline's temporary root (the broker's data dir is `{dir}/broker`).
    pub fn with_args(agent_extra: &[&str], broker_extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (quic, admin, http) = (free_udp_port(), free_tcp_port(), free_tcp_port());
        let d = dir.path();
        let broker_args = vec![
            "broker".to_string(),
            format!("--data-dir={}", d.join("broker").display()),
            format!("--quic-addr=127.0.0.1:{quic}"),
            format!("--admin-addr=127.0.0.1:{admin}"),
            // Checkpoint often, so restarts (and kill -9) exercise checkpoint + partial scan.
            "--checkpoint-interval-bytes=262144".to_string(),
        ];
        let mut broker_args = broker_args;
        broker_args.extend(
            broker_extra
                .iter()
                .map(|s| s.replace("{dir}", &d.display().to_string())),
        );
        let mut agent_args = vec![
            format!("--data-dir={}", d.join("agent").display()),
            format!("--http-addr=127.0.0.1:{http}"),
            format!("--broker-addr=127.0.0.1:{quic}"),
            format!("--broker-ca={}", d.join("broker/tls/ca.pem").display()),
        ];
        agent_args.extend(agent_extra.iter().map(|s| s.to_string()));
        Self {
            broker: Proc::new("broker", bin("runnel"), broker_args, d.join("broker.log")),
            agent: Proc::new(
                "agent",
                bin("runnel-agent"),
                agent_args,
                d.join("agent.log"),
            ),
            agent_url: format!("http://127.0.0.1:{http}"),
            admin_addr: format!("127.0.0.1:{admin}"),
            dir,
        }
    }

    /// The value of the broker's flag starting with `prefix` (e.g. `--quic-addr=`).
    pub fn broker_arg(&self, prefix: &str) -> Option<String> {
        self.broker
            .args
            .iter()
            .find_map(|a| a.strip_prefix(prefix).map(str::to_string))
    }

    /// Starts the broker, waits until it is ready, then the agent, and waits for it.
    pub async fn start(&mut self) {
        self.start_broker().await;
        self.start_agent().await;
    }

    /// Starts the broker and waits for `/readyz`.
    pub async fn start_broker(&mut self) {
        self.broker.start();
        let url = format!("http://{}/readyz", self.admin_addr);
        wait_ready(&url, &mut self.broker).await;
        let token = std::fs::read_to_string(self.dir.path().join("broker/admin-token"))
            .expect("the broker writes DATA_DIR/admin-token on its first start");
        register_admin_token(&self.admin_addr, &token);
    }

    /// The broker's admin token (it writes one to `DATA_DIR/admin-token` on its first start).
    pub fn token(&self) -> String {
        admin_token(&self.admin_addr).expect("the broker has started")
    }

    /// Enrolls an agent of `tenant` named `name` and writes its certificate and key to
    /// `DIR/certs/NAME/`; returns the agent flags that use them.
    pub fn enroll(&self, name: &str, tenant: &str) -> Vec<String> {
        let out = self.dir.path().join("certs").join(name);
        self.cli(&[
            "agent",
            "enroll",
            "--name",
            name,
            "--tenant",
            tenant,
            "--out",
            out.to_str().unwrap(),
        ]);
        vec![
            format!("--tls-cert={}", out.join("agent.pem").display()),
            format!("--tls-key={}", out.join("agent.key").display()),
        ]
    }

    /// Starts the agent and waits for `/readyz`; the first start enrolls it (as `test-agent`
    /// of tenant `default`) unless its flags name a certificate.
    pub async fn start_agent(&mut self) {
        if !self.agent.args.iter().any(|a| a.starts_with("--tls-cert")) {
            let flags = self.enroll("test-agent", "default");
            self.agent.args.extend(flags);
        }
        self.agent.start();
        let url = format!("{}/readyz", self.agent_url);
        wait_ready(&url, &mut self.agent).await;
    }

    /// `runnel log stats` from the CLI, parsed.
    pub fn log_stats(&self) -> serde_json::Value {
        let out = runnel(["log", "stats", "--admin-addr", &self.admin_addr])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `runnel log read` from the CLI, one parsed value per line.
    pub fn log_read(&self, from: u64, limit: usize) -> Vec<serde_json::Value> {
        let out = runnel(["log", "read", "--admin-addr", &self.admin_addr])
            .args(["--from", &from.to_string(), "--limit", &limit.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    /// Runs `runnel ARGS --admin-addr ADMIN` and returns its stdout (panics with stderr on
    /// failure).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = runnel(
            args.iter()
                .copied()
                .chain(["--admin-addr", self.admin_addr.as_str()]),
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "runnel {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `runnel plugin deploy` of the example or test plugin `name` under its own name.
    pub fn deploy_plugin(&self, name: &str) {
        self.cli(&[
            "plugin",
            "deploy",
            plugin(name).to_str().unwrap(),
            "--name",
            name,
        ]);
    }

    /// An HTTP client that sends the broker's admin token with every request.
    pub fn http(&self) -> reqwest::Client {
        authed_http(&self.token(), None)
    }

    /// A client of the broker's admin API.
    pub fn admin(&self) -> runnel_client::admin::Admin {
        let admin = runnel_client::admin::Admin::new(&self.admin_addr);
        match admin_token(&self.admin_addr) {
            Some(t) => admin.with_token(t),
            None => admin,
        }
    }

    /// The broker's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin().metrics().await.unwrap()
    }

    /// `runnel plugin list`, parsed.
    pub fn plugin_list(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli(&["plugin", "list"])).unwrap()
    }

    /// `runnel log read --topic TOPIC` of everything, one parsed value per entry.
    pub fn read_topic(&self, topic: &str) -> Vec<serde_json::Value> {
        self.cli(&["log", "read", "--topic", topic, "--limit", "100000"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until the pipeline has processed every event in the log and the log holds at least
    /// `n` events; returns the plugin list.
    pub async fn wait_pipeline_caught_up(
        &self,
        n: u64,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.log_stats();
            let list = self.plugin_list();
            if stats["records"].as_u64() >= Some(n) && list.iter().all(|p| p["lag"] == 0) {
                return list;
            }
            if Instant::now() > deadline {
                panic!(
                    "the pipeline did not catch up with {n} events in {timeout:?}: {list:?}\n--- broker log ---\n{}",
                    tail(&self.broker.log_text())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the log holds `n` events (panics with both logs after `timeout`).
    pub async fn wait_for_records(&self, n: u64, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let admin = self.admin();
        loop {
            if let Ok(stats) = admin.log_stats().await
                && stats.records >= n
            {
                return serde_json::to_value(stats).expect("stats serialize");
            }
            if Instant::now() > deadline {
                panic!(
                    "the log did not reach {n} events in {timeout:?}\n--- agent log ---\n{}\n--- broker log ---\n{}",
                    tail(&self.agent.log_text()),
                    tail(&self.broker.log_text())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(6000);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Waits until `url` answers 2xx, failing with the log if `proc` exits or 30 s pass.
pub async fn wait_ready(url: &str, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            proc.running(),
            "{} exited during start:\n{}",
            proc.name,
            tail(&proc.log_text())
        );
        assert!(
            Instant::now() < deadline,
            "{} not ready:\n{}",
            proc.name,
            tail(&proc.log_text())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Path of a plugin component built by `cargo build --release --target wasm32-wasip2
/// --manifest-path plugins/Cargo.toml` into the shared target dir.
pub fn plugin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir");
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first",
        path.display()
    );
    path
}

/// A request body: one [`event`] of type `event_type` per id, as a JSON array.
pub fn events_body(ids: &[String], event_type: &str) -> String {
    serde_json::Value::Array(ids.iter().map(|id| event(id, event_type)).collect()).to_string()
}

/// A valid event of about 300 bytes of JSON.
pub fn event(id: &str, event_type: &str) -> serde_json::Value {
    serde_json::json!({
        "event_id": id,
        "event_type": event_type,
        "timestamp": "2026-11-21T12:00:00.000Z",
        "user_id": "user-0042",
        "session_id": "session-7f3a",
        "platform": "ios",
        "app_version": "4.2.0",
        "properties": {"path": "/checkout/confirm", "amount": 129.5, "currency": "EUR", "pad": "x".repeat(80)}
    })
}

/// Posts the events `event(n)` for `n` in `range` to the agent at `agent_url`, as JSON arrays of
/// `per`, each retried until it gets a 202.
pub async fn post_range(
    agent_url: &str,
    range: std::ops::Range<u64>,
    per: u64,
    event: fn(u64) -> serde_json::Value,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for lo in range.clone().step_by(per as usize) {
        let hi = (lo + per).min(range.end);
        let body = serde_json::Value::Array((lo..hi).map(event).collect()).to_string();
        post_until_accepted(&client, agent_url, body).await;
    }
}

/// Posts `body` (a JSON array of events) to the agent at `agent_url`, retrying until it is
/// accepted (202); panics after 120 s without.
pub async fn post_until_accepted(client: &reqwest::Client, agent_url: &str, body: String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = client
            .post(format!("{agent_url}/v1/events"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status().as_u16() == 202) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent at {agent_url} did not accept a request in 120 s: {:?}",
            r.map(|r| r.status())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts `events` to an agent in order, `per_request` to a request, each retried until it is
/// accepted (202).
pub async fn post_events(agent_url: &str, events: &[serde_json::Value], per_request: usize) {
    let client = reqwest::Client::new();
    for chunk in events.chunks(per_request) {
        post_until_accepted(
            &client,
            agent_url,
            serde_json::Value::from(chunk.to_vec()).to_string(),
        )
        .await;
    }
}

/// Posts generated events to an agent in order, `batch` events per request, retrying each
/// request until it is accepted (202), waiting `pace` between requests.
pub async fn post_generated(
    agent_url: &str,
    events: &[runnel_gen::Generated],
    batch: usize,
    pace: Duration,
) {
    let client = reqwest::Client::new();
    for chunk in events.chunks(batch) {
        let body = format!(
            "[{}]",
            chunk
                .iter()
                .map(|g| g.json.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        post_until_accepted(&client, agent_url, body).await;
        tokio::time::sleep(pace).await;
    }
}

/// The Python of the test venv (`scripts/setup.sh --test`: pyarrow, deltalake, DuckDB, moto).
pub fn python() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/runnel-py/bin/python")
}

/// Runs the script `tests/python/SCRIPT` with [`python`] and parses the JSON it prints (panics
/// with its stderr when it fails).
pub fn run_python(script: &str, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run scripts/setup.sh: it installs pyarrow and ADBC into ~/.cache/runnel-py");
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A moto S3 server on a loopback port, stopped on drop.
pub struct Moto {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    /// Starts one.
    pub async fn start() -> Self {
        let port = free_tcp_port();
        let moto = python().with_file_name("moto_server");
        let child = std::process::Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting moto_server (scripts/setup.sh --test installs it)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(&endpoint).await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, endpoint }
    }

    /// Creates a bucket (`PUT /BUCKET`, which moto takes unsigned).
    pub async fn bucket(&self, name: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "creating bucket {name}: {}",
            r.status()
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `X-Runnel-Delivery`.
    pub id: String,
    /// `X-Runnel-Signature`.
    pub signature: String,
    /// The body.
    pub body: String,
    /// The status it answered.
    pub status: u16,
}

/// A local webhook receiver on a loopback port (an axum server in the test process, stopped on
/// drop): it records every POST and answers 500 to the first `fail_first` attempts of each
/// delivery id (`u32::MAX`: always), then 200.
pub struct WebhookReceiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Starts one.
    pub async fn start(fail_first: u32) -> Self {
        let got: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>> = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let id = header("x-runnel-delivery");
                    let mut got = state.lock().unwrap();
                    let before = got.iter().filter(|d| d.id == id).count() as u32;
                    let status = if before < fail_first { 500 } else { 200 };
                    got.push(Delivery {
                        id,
                        signature: header("x-runnel-signature"),
                        body,
                        status,
                    });
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, got, task }
    }

    /// Every request so far, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
