//! # runnel-loadgen: `runnel bench`
//!
//! The load benchmark operators run before they trust Runnel, in the manner of `wrk2` and
//! `kafka-producer-perf-test`:
//!
//! - `runnel bench ingest` loads an agent's HTTP endpoint (`POST /v1/events`);
//! - `runnel bench broker` loads a broker's QUIC endpoint with simulated agents, to measure the
//!   log and pipeline without the HTTP layer.
//!
//! Both offer a fixed rate in an open loop (`--rate N` events a second; latency measured from
//! each request's scheduled time, so a target that falls behind shows its backlog) or run a
//! closed loop (`--rate max`). They print a live progress line and a summary table, and write
//! `--json FILE` (every figure and the machine) and `--report FILE.html` (SVG charts, no
//! external assets). `--visible` (ingest) measures how long accepted events take to be visible
//! in the broker's log and in an aggregate.
//!
//! Layout: [`workload`] (request bodies), [`engine`] (open and closed loops, the recorder),
//! [`targets`] (HTTP and QUIC), [`probe`] (`--visible`), [`report`] (summary, JSON, HTML),
//! [`machine`] (cores, memory, fsync latency).

pub mod engine;
pub mod machine;
pub mod probe;
pub mod report;
pub mod targets;
pub mod workload;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::engine::{Mode, Plan, Recorder, Target};
use crate::report::Report;
use crate::workload::{Scenario, Spec, Workload};

/// Most events per request (`--batch`).
pub const BATCH_MAX: usize = 100_000;
/// Most bytes of JSON per event (`--event-bytes`).
pub const EVENT_BYTES_MAX: usize = 1 << 20;
/// Most connections or simulated agents (`--connections`, `--agents`).
pub const CONNECTIONS_MAX: usize = 10_000;
/// Longest run (`--duration`).
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);

/// The offered load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Closed loop.
    Max,
    /// Events a second, open loop.
    PerSec(f64),
}

/// Parses `--rate`: `max`, or events a second (`50000`, `50k`, `1.5m`).
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "max" {
        return Ok(Rate::Max);
    }
    let (num, mult) = match s.to_ascii_lowercase() {
        t if t.ends_with('k') => (t[..t.len() - 1].to_string(), 1e3),
        t if t.ends_with('m') => (t[..t.len() - 1].to_string(), 1e6),
        t => (t, 1.0),
    };
    match num.replace('_', "").parse::<f64>() {
        Ok(v) if v * mult > 0.0 && (v * mult).is_finite() => Ok(Rate::PerSec(v * mult)),
        _ => Err(format!(
            "{s:?} is not `max` or a positive number of events a second (e.g. 50000 or 50k)"
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 2m, 500ms)"))
}

/// Settings both commands share.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Events a second offered in an open loop (each request is scheduled in advance and its
    /// latency counts from then: `50000`, `50k`), or `max`: a closed loop, as fast as answers
    /// come.
    #[arg(long, default_value = "max", value_parser = parse_rate)]
    pub rate: Rate,
    /// How long to offer load (`30s`, `2m`; at most 24 h).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Events per request (1 to 100,000).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Bytes of JSON per event: events are padded up to it (at most 1 MiB).
    #[arg(long, default_value_t = 300)]
    pub event_bytes: usize,
    /// Share of events that repeat an id sent before (0 to 1): the agent drops them.
    #[arg(long, default_value_t = 0.0)]
    pub dup_ratio: f64,
    /// Share of events with an invalid event type (0 to less than 1): the agent refuses them
    /// and accepts the rest of the request.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_ratio: f64,
    /// The events: `uniform`, or the realistic skewed streams `fintech` and `ecommerce`.
    #[arg(long, value_enum, default_value = "fintech")]
    pub scenario: Scenario,
    /// A request not answered within this counts as a `timeout` error.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write every figure, and the machine, as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report (SVG charts) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Directory whose disk the fsync latency is measured on (the data dir under test).
    #[arg(long, default_value = ".")]
    pub fsync_dir: PathBuf,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// `runnel bench ingest`.
#[derive(clap::Args, Debug, Clone)]
pub struct IngestArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// The agent's ingest URL.
    #[arg(long, default_value = "http://127.0.0.1:8710/v1/events")]
    pub url: String,
    /// Requests in flight at most (open loop), or senders (closed loop).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Also measure accept -> visible at the broker (log and aggregate) with probe events.
    #[arg(long)]
    pub visible: bool,
    /// The broker's admin address (for `--visible`).
    #[arg(long, default_value = "127.0.0.1:8713")]
    pub admin_addr: SocketAddr,
    /// The aggregate `--visible` watches (it needs an `event_type` dimension and an `events`
    /// measure), or `none`.
    #[arg(long, default_value = "events_per_type")]
    pub visible_aggregate: String,
    /// Time between probe events.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub probe_every: Duration,
    /// How often a probe polls the broker (the resolution of the visibility figures).
    #[arg(long, default_value_t = 1)]
    pub visible_poll_ms: u64,
    /// After the load, wait until the broker's log (at `--admin-addr`) holds every event the
    /// agent accepted, and report the end-to-end rate into the log.
    #[arg(long)]
    pub until_logged: bool,
    /// The API token for `--admin-addr` (the `runnel` CLI's `--token`, `RUNNEL_TOKEN` or
    /// `--token-file`).
    #[arg(skip)]
    pub token: Option<String>,
}

/// `runnel bench broker`.
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Simulated agents, each with its own connection and one batch in flight.
    #[arg(long, default_value_t = 8)]
    pub agents: usize,
    /// The broker's QUIC address.
    #[arg(long, default_value = "127.0.0.1:8711")]
    pub broker_addr: SocketAddr,
    /// PEM file of the CA of the broker's certificate (`runnel dev` writes it here).
    #[arg(long, default_value = ".runnel-dev/broker/tls/ca.pem")]
    pub broker_ca: PathBuf,
    /// Name on the broker's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// The broker's admin API, which enrolls the simulated agents (a certificate each, of
    /// `--tenant`) with an admin token.
    #[arg(long, default_value = "127.0.0.1:8713")]
    pub admin_addr: SocketAddr,
    /// The tenant the simulated agents are enrolled in (its quotas apply to them).
    #[arg(long, default_value = "bench")]
    pub tenant: String,
    /// The admin token (the `runnel` CLI's `--token`, `RUNNEL_TOKEN` or `--token-file`).
    #[arg(skip)]
    pub token: Option<String>,
}

/// `runnel bench …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCmd {
    /// Load an agent's HTTP ingest endpoint.
    Ingest(IngestArgs),
    /// Load a broker's QUIC endpoint with simulated agents (no HTTP layer).
    Broker(BrokerArgs),
}

fn check(ok: bool, flag: &str, msg: String) -> anyhow::Result<()> {
    anyhow::ensure!(ok, "{flag}: {msg}");
    Ok(())
}

impl LoadArgs {
    fn validate(&self) -> anyhow::Result<()> {
        check(
            (1..=BATCH_MAX).contains(&self.batch),
            "--batch",
            format!("{} is not within 1..={BATCH_MAX}", self.batch),
        )?;
        check(
            self.event_bytes <= EVENT_BYTES_MAX,
            "--event-bytes",
            format!("{} exceeds {EVENT_BYTES_MAX}", self.event_bytes),
        )?;
        check(
            (0.0..=1.0).contains(&self.dup_ratio),
            "--dup-ratio",
            format!("{} is not within 0..=1", self.dup_ratio),
        )?;
        check(
            (0.0..1.0).contains(&self.invalid_ratio),
            "--invalid-ratio",
            format!("{} is not within 0..1", self.invalid_ratio),
        )?;
        check(
            !self.duration.is_zero() && self.duration <= DURATION_MAX,
            "--duration",
            format!("{:?} is not within (0, 24h]", self.duration),
        )?;
        check(
            !self.timeout.is_zero(),
            "--timeout",
            "must be more than 0".into(),
        )?;
        Ok(())
    }

    fn spec(&self) -> Spec {
        Spec {
            scenario: self.scenario,
            batch: self.batch,
            event_bytes: self.event_bytes,
            dup_ratio: self.dup_ratio,
            invalid_ratio: self.invalid_ratio,
            run_id: rand::random(),
        }
    }

    fn mode(&self) -> Mode {
        match self.rate {
            Rate::Max => Mode::Closed,
            Rate::PerSec(events) => Mode::Open {
                requests_per_sec: events / self.batch as f64,
            },
        }
    }

    fn describe(&self, who: &str) -> String {
        let rate = match self.rate {
            Rate::Max => "closed loop (--rate max)".to_string(),
            Rate::PerSec(r) => format!("open loop at {r:.0} events/s"),
        };
        format!(
            "{rate}, {:?}, {} events of {} bytes per request, {who}, scenario {}, dup {}, invalid {}",
            self.duration,
            self.batch,
            self.event_bytes,
            serde_json::to_value(self.scenario)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?"),
            self.dup_ratio,
            self.invalid_ratio
        )
    }
}

fn settings_json<T: std::fmt::Debug>(args: &T, load: &LoadArgs) -> serde_json::Value {
    serde_json::json!({
        "rate": match load.rate { Rate::Max => "max".to_string(), Rate::PerSec(r) => format!("{r}") },
        "duration_s": load.duration.as_secs_f64(),
        "batch": load.batch,
        "event_bytes": load.event_bytes,
        "dup_ratio": load.dup_ratio,
        "invalid_ratio": load.invalid_ratio,
        "scenario": load.scenario,
        "timeout_s": load.timeout.as_secs_f64(),
        "args": format!("{args:?}"),
    })
}

/// Runs `runnel bench …`: prints progress and the summary, writes the files asked for.
pub async fn main(cmd: BenchCmd) -> anyhow::Result<()> {
    let (report, load) = match cmd {
        BenchCmd::Ingest(a) => (ingest(&a).await?, a.load),
        BenchCmd::Broker(a) => (broker(&a).await?, a.load),
    };
    println!("{}", report.summary());
    if let Some(p) = &load.json {
        let text = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(p, text).with_context(|| format!("--json: writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &load.report {
        std::fs::write(p, report.html())
            .with_context(|| format!("--report: writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// `runnel bench ingest`.
pub async fn ingest(a: &IngestArgs) -> anyhow::Result<Report> {
    a.load.validate()?;
    check(
        (1..=CONNECTIONS_MAX).contains(&a.connections),
        "--connections",
        format!("{} is not within 1..={CONNECTIONS_MAX}", a.connections),
    )?;
    check(
        a.visible_poll_ms >= 1,
        "--visible-poll-ms",
        "must be at least 1".into(),
    )?;
    let url = reqwest::Url::parse(&a.url).with_context(|| format!("--url {:?}", a.url))?;
    // Reachable? (A GET on the ingest path is answered 405 by an agent.)
    reqwest::Client::new()
        .get(url.clone())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| {
            format!(
                "--url: no agent answers at {url} (start one with `runnel dev` or `runnel agent`)"
            )
        })?;
    let spec = a.load.spec();
    let run_id = spec.run_id;
    let workload = Arc::new(Workload::new(spec));
    let target = Arc::new(targets::AgentHttp::new(
        a.url.clone(),
        workload,
        a.connections,
        a.load.timeout,
    )?);
    let probes = if a.visible {
        let aggregate = (a.visible_aggregate != "none").then(|| a.visible_aggregate.clone());
        Some(
            probe::prepare(probe::ProbeSpec {
                ingest_url: a.url.clone(),
                admin_url: format!("http://{}", a.admin_addr),
                admin_token: a.token.clone(),
                aggregate,
                every: a.probe_every,
                poll: Duration::from_millis(a.visible_poll_ms),
                timeout: a.load.timeout,
                run_id,
            })
            .await?,
        )
    } else {
        None
    };
    let who = format!("{} connections", a.connections);
    let plan = Plan {
        mode: a.load.mode(),
        connections: a.connections,
        duration: a.load.duration,
    };
    let admin = format!("http://{}", a.admin_addr);
    let logged_before = if a.until_logged {
        Some(log_records(&admin, a.token.as_deref()).await.with_context(|| {
            format!("--until-logged: reading {admin}/v1/log/stats (is --admin-addr the broker's admin address?)")
        })?)
    } else {
        None
    };
    let (mut report, start) = run(
        "ingest",
        a.url.clone(),
        settings_json(a, &a.load),
        &a.load,
        a.load.describe(&who),
        plan,
        target,
        probes,
    )
    .await?;
    if let Some(before) = logged_before {
        let probes = report
            .visibility
            .as_ref()
            .map_or(0, |v| v.samples.len() as u64);
        let want = before + report.rec.totals.accepted + probes;
        let deadline = Instant::now() + probe::CATCH_UP_MAX;
        loop {
            let now = log_records(&admin, a.token.as_deref()).await?;
            if now >= want {
                report.logged = Some((now - before, start.elapsed().as_secs_f64()));
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "--until-logged: the broker's log holds {} of the {} events accepted after {:?}",
                now - before,
                want - before,
                probe::CATCH_UP_MAX
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(report)
}

async fn log_records(admin: &str, token: Option<&str>) -> anyhow::Result<u64> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{admin}/v1/log/stats"))
        .bearer_auth(token.unwrap_or_default())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["records"]
        .as_u64()
        .context("the broker's log stats have no `records`")
}

/// `runnel bench broker`.
pub async fn broker(a: &BrokerArgs) -> anyhow::Result<Report> {
    a.load.validate()?;
    check(
        (1..=CONNECTIONS_MAX).contains(&a.agents),
        "--agents",
        format!("{} is not within 1..={CONNECTIONS_MAX}", a.agents),
    )?;
    let ca_pem = std::fs::read(&a.broker_ca).with_context(|| {
        format!(
            "--broker-ca: reading {} (the broker's tls/ca.pem; `runnel dev` writes .runnel-dev/broker/tls/ca.pem)",
            a.broker_ca.display()
        )
    })?;
    let workload = Arc::new(Workload::new(a.load.spec()));
    let mut admin = runnel_client::admin::Admin::new(a.admin_addr);
    if let Some(t) = &a.token {
        admin = admin.with_token(t.clone());
    }
    // Fresh ids: a new run never collides with an old one.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut identities = Vec::with_capacity(a.agents);
    for i in 0..a.agents {
        let name = format!("bench-{}-{i}", &run_id[..8]);
        let e = admin.agent_enroll(&name, &a.tenant).await.with_context(|| {
            format!(
                "enrolling simulated agent {name} at --admin-addr {} (it needs an admin token: --token, RUNNEL_TOKEN or --token-file)",
                a.admin_addr
            )
        })?;
        identities.push((name, e.cert_pem, e.key_pem));
    }
    let target = Arc::new(targets::BrokerQuic::new(
        targets::BrokerEndpoint {
            addr: a.broker_addr,
            server_name: a.server_name.clone(),
            ca_pem,
        },
        identities,
        workload,
        a.load.timeout,
    )?);
    // Reachable? One batch before the clock starts (it also opens the first connection).
    target.send(0).await.map_err(|kind| {
        anyhow::anyhow!(
            "--broker-addr: the broker at {} did not take a batch: {kind}",
            a.broker_addr
        )
    })?;
    let refresher = {
        let t = target.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let t = t.clone();
                let _ = tokio::task::spawn_blocking(move || t.refresh_chunks()).await;
            }
        })
    };
    let who = format!("{} simulated agents", a.agents);
    let mode = a.load.mode();
    let plan = Plan {
        mode,
        connections: match mode {
            Mode::Closed => a.agents,
            // Requests wait for their agent, timed from their schedule; every agent stays busy.
            Mode::Open { .. } => a.agents * 8,
        },
        duration: a.load.duration,
    };
    let report = run(
        "broker",
        format!("quic://{}", a.broker_addr),
        settings_json(a, &a.load),
        &a.load,
        a.load.describe(&who),
        plan,
        target,
        None,
    )
    .await;
    refresher.abort();
    Ok(report?.0)
}

#[allow(clippy::too_many_arguments)]
async fn run<T: Target>(
    command: &str,
    target_name: String,
    settings: serde_json::Value,
    load: &LoadArgs,
    describe: String,
    plan: Plan,
    target: Arc<T>,
    probes: Option<probe::Prepared>,
) -> anyhow::Result<(Report, Instant)> {
    let machine = machine::Machine::probe(&load.fsync_dir);
    if !load.quiet {
        eprintln!("runnel bench {command}: {target_name}\n{describe}\nmachine: {machine}");
    }
    let started_at = runnel_event::envelope::rfc3339_ms(targets::now_ms());
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + load.duration;
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let progress = (!load.quiet).then(|| {
        let (rec, offered) = (rec.clone(), load.rate);
        tokio::spawn(progress_line(rec, start, offered))
    });
    let probe_task = probes.map(|p| tokio::spawn(p.run(start, end)));
    engine::run(target, plan, start, rec.clone()).await;
    if let Some(p) = progress {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    let visibility = match probe_task {
        Some(t) => Some(t.await.context("the probe task failed")?),
        None => None,
    };
    let rec = rec.lock().expect("recorder lock").clone();
    let elapsed = rec.last_answer.max(load.duration);
    let report = Report {
        command: command.into(),
        target: target_name,
        settings,
        load: describe,
        machine,
        started_at,
        elapsed,
        rec,
        visibility,
        logged: None,
    };
    Ok((report, start))
}

/// Prints, each second, the last second's rate, the errors so far and the p99 so far.
async fn progress_line(rec: Arc<Mutex<Recorder>>, start: Instant, offered: Rate) {
    let tty = std::io::stderr().is_terminal();
    let offered = match offered {
        Rate::Max => String::new(),
        Rate::PerSec(r) => format!(" (offered {r:.0})"),
    };
    let mut tick = 1u64;
    loop {
        tokio::time::sleep_until(start + Duration::from_secs(tick)).await;
        let line = {
            let r = rec.lock().expect("recorder lock");
            let last = r.seconds.get(tick as usize - 1).map_or(0, |s| s.events);
            format!(
                "[{tick:>4}s] {last:>10} events/s{offered}  errors {}  p99 so far {:.2} ms",
                r.error_count(),
                r.latency.value_at_quantile(0.99) as f64 / 1e3
            )
        };
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        tick += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("50000"), Ok(Rate::PerSec(50_000.0)));
        assert_eq!(parse_rate("50k"), Ok(Rate::PerSec(50_000.0)));
        assert_eq!(parse_rate("1.5m"), Ok(Rate::PerSec(1_500_000.0)));
        assert!(parse_rate("0").unwrap_err().contains("positive"));
        assert!(parse_rate("fast").is_err());
    }
}
