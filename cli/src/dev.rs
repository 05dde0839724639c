//! `runnel dev`: a broker and an agent in one process on one data dir, with the default ports,
//! the example plugins deployed and (by default) a generated stream.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use runnel_agent::AgentConfig;
use runnel_broker::BrokerConfig;
use runnel_client::admin::Admin;
use runnel_client::api::Deploy;

/// `runnel dev`'s flags.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Data directory for both (`DIR/broker`, `DIR/agent`).
    #[arg(long = "dir", default_value = ".runnel-dev")]
    dir: PathBuf,
    /// TOML file with broker settings (see docs/CONFIG.md); `data_dir` is set by `--dir`.
    #[arg(long)]
    broker_config: Option<PathBuf>,
    /// TOML file with agent settings (see docs/CONFIG.md); `data_dir` is set by `--dir`.
    #[arg(long)]
    agent_config: Option<PathBuf>,
    /// Directory with the example plugins (`pii_redact.wasm` runs at the edge,
    /// `geo_enrich.wasm` is deployed to the broker). `./dev.sh` builds them and passes it.
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Generate a stream into the agent: `fintech`, `ecommerce` or `off`.
    #[arg(long, default_value = "fintech")]
    generate: String,
    /// Events a second the generator posts.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Schemas to register (`docs/schemas.md`): `example` (the generator's, `schemas/`), `off`,
    /// or a directory of `TYPE.json` files.
    #[arg(long, default_value = "example")]
    schemas: String,
}

/// The example schemas (`schemas/`), by event type.
const EXAMPLE_SCHEMAS: &[(&str, &str)] = &[
    (
        "onboarding.completed",
        include_str!("../../schemas/fintech/onboarding.completed.json"),
    ),
    (
        "deposit.completed",
        include_str!("../../schemas/fintech/deposit.completed.json"),
    ),
    (
        "withdrawal.completed",
        include_str!("../../schemas/fintech/withdrawal.completed.json"),
    ),
    (
        "app.login",
        include_str!("../../schemas/fintech/app.login.json"),
    ),
    (
        "page.view",
        include_str!("../../schemas/ecommerce/page.view.json"),
    ),
    (
        "search",
        include_str!("../../schemas/ecommerce/search.json"),
    ),
    (
        "cart.add",
        include_str!("../../schemas/ecommerce/cart.add.json"),
    ),
    (
        "checkout.completed",
        include_str!("../../schemas/ecommerce/checkout.completed.json"),
    ),
];

/// The schemas `--schemas` names: (event type, its JSON text).
fn schema_files(arg: &str) -> anyhow::Result<Vec<(String, String)>> {
    match arg {
        "off" => Ok(Vec::new()),
        "example" => Ok(EXAMPLE_SCHEMAS
            .iter()
            .map(|(t, s)| (t.to_string(), s.to_string()))
            .collect()),
        dir => {
            let mut out = Vec::new();
            let entries = std::fs::read_dir(dir).with_context(|| format!("--schemas {dir}"))?;
            for entry in entries {
                let path = entry?.path();
                let Some(ty) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                out.push((ty.to_string(), text));
            }
            out.sort();
            Ok(out)
        }
    }
}

/// The example aggregators `runnel dev` deploys from `--plugins-dir`.
const EXAMPLE_AGGREGATORS: &[&str] = &[
    "events_per_type",
    "unique_users",
    "revenue",
    "sessions",
    "agent_performance",
];

/// The example reports `runnel dev` deploys (`reports/`): the monthly field-agent commission
/// (over `agent_performance`, so only with the plugins) and the daily customer activity.
const EXAMPLE_REPORTS: &[(&str, &str)] = &[
    (
        "agent_commission",
        include_str!("../../reports/agent_commission.toml"),
    ),
    (
        "daily_customer_activity",
        include_str!("../../reports/daily_customer_activity.toml"),
    ),
];

/// What `runnel dev` generates.
#[derive(Debug, Clone, Copy)]
struct Generate {
    /// The scenario, or none.
    scenario: Option<runnel_gen::Scenario>,
    /// Events per second.
    rate: u32,
}

/// Parses `--generate`: `fintech`, `ecommerce` or `off`.
fn parse_scenario(s: &str) -> anyhow::Result<Option<runnel_gen::Scenario>> {
    match s {
        "fintech" => Ok(Some(runnel_gen::Scenario::Fintech)),
        "ecommerce" => Ok(Some(runnel_gen::Scenario::Ecommerce)),
        "off" => Ok(None),
        other => anyhow::bail!("--generate: {other:?} is not one of fintech, ecommerce, off"),
    }
}

/// Posts a generated stream to the agent in real time: `rate` events a second, one request
/// every 100 ms, event times around now with the generator's out-of-order (10%), within-lateness
/// (2%) and beyond-lateness (1%) events, so windows can be watched filling and finalizing.
async fn generate(ingest: String, scenario: runnel_gen::Scenario, rate: u32) {
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let per_tick = (rate / 10).max(1) as usize;
    let mut seed = runnel_event::now_ms() as u64;
    let mut warned = false;
    loop {
        tick.tick().await;
        let events = runnel_gen::generate(&runnel_gen::Config {
            seed,
            scenario,
            events: per_tick,
            start_ms: runnel_event::now_ms() - 100,
            rate_per_sec: rate.max(1),
            sources: 1,
            ..runnel_gen::Config::default()
        });
        seed += 1;
        let body = format!(
            "[{}]",
            events
                .iter()
                .map(|g| g.json.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = client
            .post(&ingest)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().as_u16() == 202 => warned = false,
            other => {
                if !warned {
                    tracing::warn!(result = ?other.map(|r| r.status()), "the generator's post was not accepted");
                    warned = true;
                }
            }
        }
    }
}

/// Starts both, prints how to use them, and stops both cleanly when `stop` resolves.
pub async fn run(args: DevArgs, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let gen_cfg = Generate {
        scenario: parse_scenario(&args.generate)?,
        rate: args.rate,
    };
    let broker: BrokerConfig = match &args.broker_config {
        Some(p) => runnel_config::from_file(p)?,
        None => BrokerConfig::default(),
    };
    let agent: AgentConfig = match &args.agent_config {
        Some(p) => runnel_config::from_file(p)?,
        None => AgentConfig::default(),
    };
    let (data_dir, plugins_dir) = (args.dir, args.plugins_dir);
    let example = |name: &str| -> anyhow::Result<Option<PathBuf>> {
        let Some(dir) = &plugins_dir else {
            return Ok(None);
        };
        let path = dir.join(name);
        anyhow::ensure!(
            path.is_file(),
            "--plugins-dir: {} is missing (build the plugins: cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml)",
            path.display()
        );
        Ok(Some(path))
    };
    let edge = example("pii_redact.wasm")?;
    let geo = example("geo_enrich.wasm")?;
    let mut agent = agent;
    if let Some(edge) = &edge
        && agent.edge_plugin.is_empty()
    {
        agent.edge_plugin = vec![edge.clone()];
    }
    let storage: Arc<dyn runnel_segment::Storage> = Arc::new(runnel_segment::FsStorage);
    // Flight needs a token: a fresh one for this run unless the config gives some.
    let mut broker = broker;
    if broker.flight_tokens.is_empty() {
        broker.flight_tokens = vec![format!("dev-{}", uuid::Uuid::new_v4().simple())];
    }
    let flight_token = broker.flight_tokens[0].clone();
    // `runnel query` run from the same directory reads it from here.
    runnel_broker::state::write_private(&data_dir.join("flight-token"), flight_token.as_bytes())?;
    let broker_cfg = BrokerConfig {
        data_dir: data_dir.join("broker"),
        ..broker
    };
    let broker = runnel_broker::start(broker_cfg, storage.clone()).await?;
    let token_path = data_dir.join("broker").join("admin-token");
    let admin = match std::fs::read_to_string(&token_path) {
        Ok(t) => Admin::new(broker.admin_addr).with_token(t.trim()),
        Err(e) => {
            broker.shutdown().await;
            anyhow::bail!(
                "reading the broker's admin token {} ({e}): the broker writes it on its first start; delete {} to start afresh",
                token_path.display(),
                data_dir.display()
            );
        }
    };
    let (tls_cert, tls_key) = match (&agent.tls_cert, &agent.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => match enroll_agent(&admin, &data_dir).await {
            Ok(files) => files,
            Err(e) => {
                broker.shutdown().await;
                return Err(e);
            }
        },
    };
    let agent_cfg = AgentConfig {
        data_dir: data_dir.join("agent"),
        broker_addr: broker.quic_addr,
        broker_ca: agent.broker_ca.clone().or_else(|| broker.dev_ca.clone()),
        tls_cert: Some(tls_cert),
        tls_key: Some(tls_key),
        ..agent
    };
    let agent = match runnel_agent::start(agent_cfg, storage).await {
        Ok(a) => a,
        Err(e) => {
            broker.shutdown().await;
            return Err(e);
        }
    };
    let mut deploys: Vec<(&str, PathBuf)> = Vec::new();
    if let Some(geo) = &geo {
        deploys.push(("geo-enrich", geo.clone()));
    }
    for name in EXAMPLE_AGGREGATORS {
        if let Some(path) = example(&format!("{name}.wasm"))? {
            deploys.push((name, path));
        }
    }
    for (name, path) in &deploys {
        let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if let Err(e) = admin.deploy(name, wasm, &Deploy::default()).await {
            tracing::warn!(plugin = name, error = %e, "deploying failed");
        }
    }
    for (ty, text) in schema_files(&args.schemas)? {
        let registered = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(schema) => admin.schema_register(&ty, &schema).await.map(|_| ()),
            Err(e) => Err(runnel_client::Error::Protocol {
                url: ty.clone(),
                message: format!("not JSON: {e}"),
            }),
        };
        if let Err(e) = registered {
            tracing::warn!(event_type = %ty, error = %e, "registering the schema failed");
        }
    }
    for (name, text) in EXAMPLE_REPORTS {
        if let Err(e) = admin.report_deploy(name, (*text).to_string(), None).await {
            tracing::warn!(report = name, error = %e, "deploying the example report failed");
        }
    }
    let plugins = match (&edge, &geo) {
        (Some(_), Some(_)) => {
            "\n  plugins        pii-redact at the edge; geo-enrich and the aggregators events_per_type, unique_users,\
             \n                 revenue, sessions, agent_performance in the broker (runnel plugin list, runnel agg list)"
        }
        _ => "",
    };
    let ingest = format!("http://{}/v1/events", agent.http_addr);
    let generator = gen_cfg
        .scenario
        .map(|sc| tokio::spawn(generate(ingest.clone(), sc, gen_cfg.rate)));
    let generating = match gen_cfg.scenario {
        Some(sc) => format!(
            "\n  generator      {:?} events, {} a second (--generate off stops it)",
            sc, gen_cfg.rate
        ),
        None => String::new(),
    };
    println!(
        "runnel dev is up (data dir {dir})\n\
         \n  agent ingest   POST {ingest}\
         \n  agent metrics  http://{agent_addr}/metrics\
         \n  broker QUIC    {quic} (CA: {ca})\
         \n  broker admin   http://{admin}  (/v1/log/stats, /v1/log/read, /v1/plugins, /v1/aggregates, /metrics)\
         \n  admin token    {token_path}  (runnel reads it from there when run here; else --token-file)\
         \n  Arrow Flight   {flight}  token {flight_token}{plugins}{generating}\
         \n\nTry:\n  curl -s -XPOST {ingest} -H 'content-type: application/json' \\\n    \
         -d '{{\"event_id\":\"e-1\",\"event_type\":\"page.view\",\"timestamp\":\"2026-11-21T12:00:00Z\",\"properties\":{{\"path\":\"/\",\"ip\":\"198.51.100.23\",\"email\":\"ada@example.com\"}}}}'\
         \n  runnel log stats --admin-addr {admin}\
         \n  runnel log read --admin-addr {admin} --limit 10\
         \n  runnel plugin list --admin-addr {admin}\
         \n  runnel agg list --admin-addr {admin}\
         \n  runnel agg read events_per_type --admin-addr {admin}\
         \n  runnel log read --topic late_events --admin-addr {admin}\
         \n  runnel archive status --admin-addr {admin}   (the log as a Delta Lake table: docs/archive.md)\
         \n  runnel report list --admin-addr {admin}   (agent_commission, daily_customer_activity: docs/reports.md)\
         \n  runnel report run daily_customer_activity --param day=$(TZ=Africa/Nairobi date +%F) --wait-for none --wait --admin-addr {admin}\
         \n  runnel query \"SELECT event_type, SUM(events) AS events FROM events_per_type GROUP BY event_type ORDER BY events DESC\"{query_args}\
         \n\nFrom Python (pip install pyarrow):\
         \n  import pyarrow.flight as fl\
         \n  c = fl.FlightClient(\"{flight}\")\
         \n  o = fl.FlightCallOptions(headers=[(b\"authorization\", b\"Bearer {flight_token}\")])\
         \n  info = c.get_flight_info(fl.FlightDescriptor.for_path(\"events_per_type\"), o)\
         \n  print(c.do_get(info.endpoints[0].ticket, o).read_all().to_pandas())\
         \n\nCtrl-C stops both.",
        dir = data_dir.display(),
        agent_addr = agent.http_addr,
        quic = broker.quic_addr,
        ca = broker
            .dev_ca
            .as_ref()
            .map_or("configured".into(), |p| p.display().to_string()),
        admin = broker.admin_addr,
        token_path = token_path.display(),
        flight = broker
            .flight_addr
            .map_or("off".into(), |a| format!("grpc://{a}")),
        query_args = match (broker.flight_addr, data_dir.to_str()) {
            (Some(a), _) if a.to_string() != "127.0.0.1:8712" => {
                format!(" --flight-addr {a} --token-file {}", token_path.display())
            }
            (_, Some(".runnel-dev")) => String::new(),
            _ => format!(" --token-file {}", token_path.display()),
        },
    );
    stop.await;
    if let Some(g) = generator {
        g.abort();
    }
    println!("stopping agent and broker…");
    agent.shutdown().await;
    broker.shutdown().await;
    Ok(())
}

/// The certificate and key of `runnel dev`'s agent, in `DIR/agent-tls/`: enrolled on the first
/// start (as the agent the data dir already belongs to, if any, else `dev-agent`), reused after.
async fn enroll_agent(
    admin: &Admin,
    data_dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("agent-tls");
    let (cert, key) = (dir.join("agent.pem"), dir.join("agent.key"));
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    let name = std::fs::read_to_string(data_dir.join("agent").join("agent_id"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "dev-agent".to_string());
    let e = admin
        .agent_enroll(&name, "default")
        .await
        .with_context(|| format!("enrolling the dev agent {name:?}"))?;
    runnel_broker::state::write_private(&key, e.key_pem.as_bytes())?;
    runnel_broker::state::write_private(&cert, e.cert_pem.as_bytes())?;
    Ok((cert, key))
}
