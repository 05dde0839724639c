//! `runnel plugin new | build | test`: the plugin author's loop, without a broker.
//!
//! - `new` writes a project that builds as it is and keeps every event, with the SDK vendored
//!   into `.runnel/` (so the project builds anywhere, offline once its crates are fetched).
//! - `build` builds the component (installing the `wasm32-wasip2` target if it is missing)
//!   and returns its path.
//! - `test` runs a component in the same host the broker uses, with the manifest's parameters
//!   and limits, on an NDJSON file: one output line per input line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use runnel_batch::{BatchView, BatchWriter};
use runnel_event::EnvelopeLimits;
use runnel_event::fields::EventView;
use runnel_host::{Fate, Runtime};
use serde::Deserialize;

/// `plugin.toml`: what a plugin is and how it runs.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name (`[a-z][a-z0-9_-]{0,63}`); the deploy name unless `--name` says otherwise.
    pub name: String,
    /// Version label; the deploy version unless `--version` says otherwise.
    pub version: Option<String>,
    /// `enrich` (aggregators arrive with windowed aggregation).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// `rust` or `python`.
    #[serde(default = "default_lang")]
    pub lang: String,
    /// One line for people reading the manifest (the broker does not store it).
    #[allow(
        dead_code,
        reason = "part of the manifest format; read by people, not by runnel"
    )]
    pub description: Option<String>,
    /// `hold` or `skip` while paused.
    pub policy: Option<String>,
    /// Capabilities the plugin asks for (`clock`, `random`); a broker grants them only if its
    /// `plugin_capabilities_allowed` lists them.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Parameters for `init`.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Limits of one call.
    #[serde(default)]
    pub limits: ManifestLimits,
    /// What an aggregator declares (checked against the component's schema).
    pub aggregate: Option<ManifestAggregate>,
}

/// `[aggregate]` of an aggregator's manifest: the schema its `init` returns, for readers of
/// the manifest; [`ManifestAggregate::check`] holds the two together.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestAggregate {
    /// `tumbling 1m`, `hopping 1h every 5m`, `session 30m`, `calendar month Africa/Nairobi`.
    pub window: String,
    /// Allowed lateness: `30s`, `1h`, ...
    pub allowed_lateness: String,
    /// Dimension columns, in order.
    pub dimensions: Vec<String>,
    /// Measures in order, each `name:kind` (`events:count`, `amount:quantiles`).
    pub measures: Vec<String>,
}

impl ManifestAggregate {
    /// Checks that `schema` (what the component declares) is what this says; the error names
    /// the first difference.
    pub fn check(&self, schema: &runnel_window::Schema) -> Result<(), String> {
        let window: runnel_window::WindowSpec = self
            .window
            .parse()
            .map_err(|e| format!("aggregate.window: {e}"))?;
        if window != schema.window {
            return Err(format!(
                "aggregate.window: the manifest says {}, the plugin declares {}",
                window, schema.window
            ));
        }
        let lateness = runnel_window::parse_duration(&self.allowed_lateness)
            .map_err(|e| format!("aggregate.allowed_lateness: {e}"))?;
        if lateness != schema.allowed_lateness_ms {
            return Err(format!(
                "aggregate.allowed_lateness: the manifest says {}, the plugin declares {}",
                self.allowed_lateness,
                runnel_window::format_duration(schema.allowed_lateness_ms)
            ));
        }
        if self.dimensions != schema.dimensions {
            return Err(format!(
                "aggregate.dimensions: the manifest says {:?}, the plugin declares {:?}",
                self.dimensions, schema.dimensions
            ));
        }
        let declared: Vec<String> = schema
            .measures
            .iter()
            .map(|(n, k)| format!("{n}:{}", k.as_str()))
            .collect();
        if self.measures != declared {
            return Err(format!(
                "aggregate.measures: the manifest says {:?}, the plugin declares {declared:?}",
                self.measures
            ));
        }
        Ok(())
    }
}

/// `[limits]` of a manifest.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Longest one call may run.
    pub deadline_ms: Option<u64>,
    /// Largest linear memory of one instance.
    pub memory_bytes_max: Option<u64>,
    /// Instructions per call.
    pub fuel_per_call: Option<u64>,
}

fn default_kind() -> String {
    "enrich".into()
}

fn default_lang() -> String {
    "rust".into()
}

impl Manifest {
    /// Reads and checks a manifest; errors name the file and the field.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        let m: Self =
            toml::from_str(&text).with_context(|| format!("manifest {}", path.display()))?;
        let ctx = |e: String| anyhow::anyhow!("manifest {}: {e}", path.display());
        runnel_broker::plugins::check_name(&m.name).map_err(ctx)?;
        if let Some(v) = &m.version {
            runnel_broker::plugins::check_version(v).map_err(ctx)?;
        }
        if !KINDS.contains(&m.kind.as_str()) {
            return Err(ctx(format!("kind: {:?} is not one of {KINDS:?}", m.kind)));
        }
        if m.kind == "aggregate" && m.lang != "rust" {
            return Err(ctx(format!(
                "lang: {:?} aggregators are not supported yet (rust only)",
                m.lang
            )));
        }
        if !LANGS.contains(&m.lang.as_str()) {
            return Err(ctx(format!("lang: {:?} is not one of {LANGS:?}", m.lang)));
        }
        runnel_host::Capabilities::parse(m.capabilities.iter().map(String::as_str)).map_err(ctx)?;
        if let Some(p) = &m.policy {
            p.parse::<runnel_broker::plugins::Policy>().map_err(ctx)?;
        }
        Ok(m)
    }

    /// The parameters as strings (numbers and booleans are written as TOML writes them).
    pub fn params(&self) -> Vec<(String, String)> {
        self.params
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// Plugin kinds.
pub const KINDS: &[&str] = &["enrich", "aggregate"];

/// Languages `new` and `build` know.
pub const LANGS: &[&str] = &["rust", "python"];

/// The componentize-py release `build` installs for Python plugins when none is found.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Where compiled components are cached for `plugin test` (`RUNNEL_CACHE_DIR`, else
/// `~/.cache/runnel`, `compiled/` under it).
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("RUNNEL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/runnel")))
        .map(|d| d.join("compiled"))
}

/// The Python SDK and the WIT, vendored by `new --lang python`.
const PYTHON_SDK_FILES: &[SdkFile] = &[
    ("wit/plugin.wit", include_str!("../../../wit/plugin.wit")),
    (
        "python/runnel_plugin.py",
        include_str!("../../../sdk/python/runnel_plugin.py"),
    ),
];

/// A vendored SDK file: its path under `.runnel/` and its contents.
type SdkFile = (&'static str, &'static str);

/// The vendored SDK: every file `new` writes under `.runnel/`.
const SDK_FILES: &[SdkFile] = &[
    ("wit/plugin.wit", include_str!("../../../wit/plugin.wit")),
    (
        "sdk/plugin/src/lib.rs",
        include_str!("../../../sdk/plugin/src/lib.rs"),
    ),
    (
        "sdk/batch/src/lib.rs",
        include_str!("../../../sdk/batch/src/lib.rs"),
    ),
    (
        "sdk/plugin/Cargo.toml",
        "[package]\nname = \"runnel-plugin\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\nwit-bindgen = \"0.57\"\nrunnel-batch = { path = \"../batch\" }\nrunnel-guest = { path = \"../guest\" }\n",
    ),
    (
        "sdk/batch/Cargo.toml",
        "[package]\nname = \"runnel-batch\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n",
    ),
    (
        "sdk/guest/src/lib.rs",
        include_str!("../../../sdk/guest/src/lib.rs"),
    ),
    (
        "sdk/guest/Cargo.toml",
        "[package]\nname = \"runnel-guest\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\nwit-bindgen = \"0.57\"\n",
    ),
];

/// The aggregator SDK, vendored (with the WIT and the batch crate of [`SDK_FILES`]) by
/// `new --kind aggregate`.
const AGGREGATOR_SDK_FILES: &[SdkFile] = &[
    (
        "sdk/aggregator/src/lib.rs",
        include_str!("../../../sdk/aggregator/src/lib.rs"),
    ),
    (
        "sdk/aggregator/Cargo.toml",
        "[package]\nname = \"runnel-aggregator\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\nwit-bindgen = \"0.57\"\nrunnel-batch = { path = \"../batch\" }\nrunnel-guest = { path = \"../guest\" }\nserde_json = { version = \"1\", features = [\"raw_value\"] }\nserde = \"1\"\n",
    ),
];

/// `runnel plugin new`: writes a project in `dir` (which must not exist or be empty).
pub fn new_project(dir: &Path, name: &str, kind: &str, lang: &str) -> anyhow::Result<()> {
    runnel_broker::plugins::check_name(name).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !KINDS.contains(&kind) {
        bail!("--kind: {kind:?} is not one of {KINDS:?}");
    }
    if !LANGS.contains(&lang) {
        bail!("--lang: {lang:?} is not one of {LANGS:?}");
    }
    if kind == "aggregate" && lang != "rust" {
        bail!("--lang: {lang:?} aggregators are not supported yet (rust only)");
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty", dir.display());
    }
    let fill = |t: &str| t.replace("{name}", name);
    // The project's own files (templates with the name filled in) and the SDK files vendored
    // under `.runnel/`.
    let (own, vendored): (Vec<(&str, String)>, Vec<&SdkFile>) = if kind == "aggregate" {
        (
            vec![
                (
                    "Cargo.toml",
                    fill(include_str!(
                        "../../templates/rust-aggregate/Cargo.toml.tmpl"
                    )),
                ),
                (
                    "src/lib.rs",
                    fill(include_str!("../../templates/rust-aggregate/lib.rs.tmpl")),
                ),
                (
                    "plugin.toml",
                    fill(include_str!(
                        "../../templates/rust-aggregate/plugin.toml.tmpl"
                    )),
                ),
            ],
            SDK_FILES
                .iter()
                .chain(AGGREGATOR_SDK_FILES)
                .filter(|(p, _)| !p.starts_with("sdk/plugin/"))
                .collect(),
        )
    } else if lang == "python" {
        (
            vec![
                (
                    "app.py",
                    fill(include_str!("../../templates/python/app.py.tmpl")),
                ),
                (
                    "plugin.toml",
                    fill(include_str!("../../templates/python/plugin.toml.tmpl")),
                ),
            ],
            PYTHON_SDK_FILES.iter().collect(),
        )
    } else {
        (
            vec![
                (
                    "Cargo.toml",
                    fill(include_str!("../../templates/rust/Cargo.toml.tmpl")),
                ),
                (
                    "src/lib.rs",
                    fill(include_str!("../../templates/rust/lib.rs.tmpl")),
                ),
                (
                    "plugin.toml",
                    fill(include_str!("../../templates/rust/plugin.toml.tmpl")),
                ),
            ],
            SDK_FILES.iter().collect(),
        )
    };
    let files = own
        .into_iter()
        .chain([
            (
                "events.ndjson",
                include_str!("../../templates/rust/events.ndjson").to_string(),
            ),
            (".gitignore", "/target\n".to_string()),
        ])
        .map(|(p, c)| (dir.join(p), c))
        .chain(
            vendored
                .into_iter()
                .map(|(p, c)| (dir.join(".runnel").join(p), (*c).to_string())),
        );
    for (path, contents) in files {
        std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Makes sure the `wasm32-wasip2` target is installed (with rustup, when there is one).
fn ensure_target() -> anyhow::Result<()> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(()); // no rustup: cargo says what is missing
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    eprintln!("installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)…");
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("rustup target add wasm32-wasip2 failed ({status})");
    }
    Ok(())
}

#[derive(Deserialize)]
struct Artifact {
    reason: String,
    #[serde(default)]
    filenames: Vec<PathBuf>,
}

/// `runnel plugin build`: builds the plugin in `dir` and returns the component's path, which
/// is always inside `dir` (under `target/`), next to the manifest `test` and `deploy` read.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest_path = dir.join("plugin.toml");
    let manifest = Manifest::read(&manifest_path)?;
    if manifest.lang == "python" {
        return build_python(dir, &manifest);
    }
    ensure_target()?;
    let out = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo (is Rust installed?)")?;
    if !out.status.success() {
        bail!("building {} failed (cargo: {})", manifest.name, out.status);
    }
    let wasm = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Artifact>(l).ok())
        .filter(|a| a.reason == "compiler-artifact")
        .flat_map(|a| a.filenames)
        .rfind(|f| f.extension().is_some_and(|e| e == "wasm"))
        .ok_or_else(|| anyhow::anyhow!("cargo built no .wasm (is crate-type cdylib?)"))?;
    // With a target dir outside the project (CARGO_TARGET_DIR), copy the component into the
    // project, so that `test` and `deploy` find its plugin.toml above it.
    let project = std::fs::canonicalize(dir)?;
    if wasm.starts_with(&project) {
        return Ok(wasm);
    }
    let local = project
        .join("target")
        .join(wasm.file_name().expect("a file"));
    std::fs::create_dir_all(project.join("target"))?;
    std::fs::copy(&wasm, &local)
        .with_context(|| format!("copying {} to {}", wasm.display(), local.display()))?;
    Ok(local)
}

/// The first of `candidates` (relative to `dir`'s ancestors) that exists: the SDK vendored in
/// `.runnel/`, or the Runnel repository's own when the plugin lives inside it.
fn find_up(dir: &Path, vendored: &str, in_repo: &str) -> Option<PathBuf> {
    let v = dir.join(".runnel").join(vendored);
    if v.exists() {
        return std::fs::canonicalize(v).ok();
    }
    let abs = std::fs::canonicalize(dir).ok()?;
    abs.ancestors()
        .map(|a| a.join(in_repo))
        .find(|p| p.exists())
}

/// componentize-py: `RUNNEL_COMPONENTIZE_PY`, else on `PATH`, else in the Runnel virtualenv
/// (`~/.cache/runnel-py`), which is made and filled with [`COMPONENTIZE_PY`] if needed.
fn componentize_py() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("RUNNEL_COMPONENTIZE_PY") {
        return Ok(PathBuf::from(p));
    }
    if Command::new("componentize-py")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(PathBuf::from("componentize-py"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow::anyhow!("HOME is not set"))?;
    let venv = PathBuf::from(home).join(".cache/runnel-py");
    let bin = venv.join("bin/componentize-py");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("installing {COMPONENTIZE_PY} into {}…", venv.display());
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv (is Python 3 installed?)")?
        .success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", COMPONENTIZE_PY])
            .status()
            .context("running pip")?
            .success();
    if !ok || !bin.exists() {
        bail!(
            "installing {COMPONENTIZE_PY} into {} failed",
            venv.display()
        );
    }
    Ok(bin)
}

/// Builds a Python plugin (`app.py`) with componentize-py into `DIR/target/NAME.wasm`.
fn build_python(dir: &Path, manifest: &Manifest) -> anyhow::Result<PathBuf> {
    let wit = find_up(dir, "wit", "wit").ok_or_else(|| {
        anyhow::anyhow!(
            "no .runnel/wit in {} (made by runnel plugin new)",
            dir.display()
        )
    })?;
    let sdk = find_up(dir, "python", "sdk/python").ok_or_else(|| {
        anyhow::anyhow!(
            "no .runnel/python in {} (made by runnel plugin new)",
            dir.display()
        )
    })?;
    let tool = componentize_py()?;
    let out_dir = dir.join("target");
    std::fs::create_dir_all(&out_dir)?;
    let wasm = std::fs::canonicalize(&out_dir)?.join(format!("{}.wasm", manifest.name));
    let status = Command::new(&tool)
        .arg("-d")
        .arg(&wit)
        .args(["-w", "enricher", "componentize", "app", "-p", "."])
        .arg("-p")
        .arg(&sdk)
        .arg("-o")
        .arg(&wasm)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", tool.display()))?;
    if !status.success() {
        bail!(
            "building {} failed (componentize-py: {status})",
            manifest.name
        );
    }
    Ok(wasm)
}

/// What `test` saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TestSummary {
    /// Input lines.
    pub lines: usize,
    /// Lines that are not valid events.
    pub invalid: usize,
    /// Kept or replaced.
    pub passed: usize,
    /// Dropped by the plugin.
    pub dropped: usize,
    /// Failed in the plugin.
    pub failed: usize,
}

/// `runnel plugin test`: runs `wasm` over the NDJSON `input`. For an enricher it writes one
/// line per input line to `out`: `{"line":N,"fate":"keep|replace|drop|failed|invalid", …}`
/// with the resulting event, the drop reason, the failure or the validation error. For an
/// aggregator (whose schema must match the manifest's `[aggregate]`, if given) it writes the
/// invalid lines and failed events, each row the plugin mapped
/// (`"kind":"row"`), and the rows of every window (`"kind":"window"`) once the input is done.
pub fn test(
    wasm: &Path,
    input: &Path,
    params: Vec<(String, String)>,
    limits: runnel_host::Limits,
    declared: Option<&ManifestAggregate>,
    out: &mut impl Write,
) -> anyhow::Result<TestSummary> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let mut runtime = Runtime::new().map_err(|e| anyhow::anyhow!("starting the runtime: {e}"))?;
    if let Some(dir) = cache_dir() {
        runtime = runtime.with_cache_dir(dir);
    }
    let name = wasm
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    let mut plugin = match runtime.load_enricher(&name, &bytes, params.clone(), limits.clone()) {
        Ok(p) => p,
        Err(runnel_host::LoadError::Invalid(not_enricher)) => {
            // Perhaps an aggregator.
            return match runtime.load_aggregator(&name, &bytes, params, limits) {
                Ok(agg) => {
                    if let Some(d) = declared {
                        d.check(agg.schema())
                            .map_err(|e| anyhow::anyhow!("plugin.toml: {e}"))?;
                    }
                    test_aggregator(agg, &text, out)
                }
                Err(runnel_host::LoadError::Invalid(_)) => {
                    Err(anyhow::anyhow!("{}: {not_enricher}", wasm.display()))
                }
                Err(e) => Err(anyhow::anyhow!("{}: {e}", wasm.display())),
            };
        }
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", wasm.display())),
    };
    let now = runnel_event::now_ms();
    let (rows, batch) = parse_lines(&text, now);
    let mut summary = TestSummary {
        lines: rows.len(),
        ..TestSummary::default()
    };
    let result = plugin.enrich(&batch)?;
    let view = BatchView::new(&batch)?;
    let repl = if result.replacements.is_empty() {
        None
    } else {
        Some(BatchView::new(&result.replacements)?)
    };
    let host = "plugin-test";
    for (line, row) in rows {
        let v = match row {
            Err(error) => {
                summary.invalid += 1;
                serde_json::json!({"line": line, "fate": "invalid", "error": error})
            }
            Ok(i) => match &result.fates[i] {
                Fate::Keep => {
                    summary.passed += 1;
                    let e = view.event(i);
                    let ev = EventView::new(&e, i as u64, host, host);
                    serde_json::json!({"line": line, "fate": "keep", "event": ev})
                }
                Fate::Replace(n) => {
                    summary.passed += 1;
                    let r = repl
                        .as_ref()
                        .expect("replacements exist")
                        .event(*n as usize);
                    let ev = EventView::new(&r, i as u64, host, host);
                    serde_json::json!({"line": line, "fate": "replace", "event": ev})
                }
                Fate::Drop(reason) => {
                    summary.dropped += 1;
                    serde_json::json!({"line": line, "fate": "drop", "reason": reason})
                }
                Fate::Failed(f) => {
                    summary.failed += 1;
                    serde_json::json!({"line": line, "fate": "failed", "kind": f.kind.as_str(), "reason": f.message})
                }
            },
        };
        serde_json::to_writer(&mut *out, &v)?;
        out.write_all(b"\n")?;
    }
    Ok(summary)
}

/// For each non-blank input line: its number, and the event's index in the batch or why the
/// line is not a valid event.
type Lines = Vec<(usize, Result<usize, String>)>;

/// Parses NDJSON lines into a batch.
fn parse_lines(text: &str, now: i64) -> (Lines, Vec<u8>) {
    let env_limits = EnvelopeLimits::default();
    let mut rows = Vec::new();
    let mut w = BatchWriter::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match runnel_event::parse_event(line, &env_limits, now) {
            Ok(e) => {
                runnel_event::fields::push(&mut w, &e);
                rows.push((n + 1, Ok(w.len() - 1)));
            }
            Err(e) => rows.push((n + 1, Err(e.to_string()))),
        }
    }
    (rows, w.finish())
}

/// `test` for an aggregator: the invalid lines and failed events, every row the plugin mapped,
/// then the rows of every window as the broker would finalize them (`finish` at the end of the
/// input; one source, so the watermark follows the input's event times).
fn test_aggregator(
    mut agg: runnel_host::Aggregator,
    text: &str,
    out: &mut impl Write,
) -> anyhow::Result<TestSummary> {
    use runnel_window::{Engine, Input, Settings};
    let now = runnel_event::now_ms();
    let (lines, batch) = parse_lines(text, now);
    let mut summary = TestSummary {
        lines: lines.len(),
        ..TestSummary::default()
    };
    let result = agg.map_batch(&batch)?;
    let schema = agg.schema().clone();
    let mut line_of = vec![0usize; lines.len()];
    for (line, row) in &lines {
        match row {
            Ok(i) => line_of[*i] = *line,
            Err(error) => {
                summary.invalid += 1;
                let v = serde_json::json!({"line": line, "fate": "invalid", "error": error});
                serde_json::to_writer(&mut *out, &v)?;
                out.write_all(b"\n")?;
            }
        }
    }
    for (i, f) in &result.failed {
        summary.failed += 1;
        let v = serde_json::json!({"line": line_of[*i as usize], "fate": "failed", "kind": f.kind.as_str(), "reason": f.message});
        serde_json::to_writer(&mut *out, &v)?;
        out.write_all(b"\n")?;
    }
    summary.passed = lines.len() - summary.invalid - summary.failed;
    let mut engine = Engine::new(schema.clone(), Settings::default())?;
    let view = BatchView::new(&batch)?;
    for ev in view.iter() {
        engine.observe("plugin-test", ev.timestamp_ms(), now);
    }
    for r in &result.rows {
        let mut obj = serde_json::Map::new();
        obj.insert("kind".into(), "row".into());
        obj.insert(
            "event_time".into(),
            runnel_event::envelope::rfc3339_ms(r.event_time_ms).into(),
        );
        for (name, v) in schema.dimensions.iter().zip(&r.dimensions) {
            obj.insert(name.clone(), v.clone().into());
        }
        let inputs: Vec<Input<'_>> = r
            .inputs
            .iter()
            .map(|i| match i {
                runnel_host::RowInput::Null => Input::Null,
                runnel_host::RowInput::Num(x) => Input::Num(*x),
                runnel_host::RowInput::Text(t) => Input::Str(t),
            })
            .collect();
        let key: Vec<&str> = r.dimensions.iter().map(String::as_str).collect();
        let added = engine.add_row(r.event_time_ms, &key, &inputs);
        if added != runnel_window::Added::Folded {
            obj.insert("not_folded".into(), format!("{added:?}").into());
        }
        serde_json::to_writer(&mut *out, &serde_json::Value::Object(obj))?;
        out.write_all(b"\n")?;
    }
    let mut windows = engine.advance(now);
    windows.extend(engine.finish());
    for w in windows {
        let mut obj = serde_json::Map::new();
        obj.insert("kind".into(), "window".into());
        obj.extend(runnel_broker::pipeline::aggregates::engine_row_json(
            &schema, &w,
        ));
        serde_json::to_writer(&mut *out, &serde_json::Value::Object(obj))?;
        out.write_all(b"\n")?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {

    /// The vendored SDK crates depend on what the real ones do: a project made by `new`
    /// builds with the SDK's sources as they are in this tree.
    #[test]
    fn vendored_sdk_manifests_have_the_real_dependencies() {
        let real = |dir: &str| -> toml::Table {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../sdk")
                .join(dir)
                .join("Cargo.toml");
            let t: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            t.get("dependencies")
                .and_then(|d| d.as_table())
                .cloned()
                .unwrap_or_default()
        };
        for (path, text) in super::SDK_FILES.iter().chain(super::AGGREGATOR_SDK_FILES) {
            let Some(dir) = path
                .strip_prefix("sdk/")
                .and_then(|p| p.strip_suffix("/Cargo.toml"))
            else {
                continue;
            };
            let t: toml::Table = toml::from_str(text).unwrap();
            let vendored = t
                .get("dependencies")
                .and_then(|d| d.as_table())
                .cloned()
                .unwrap_or_default();
            assert_eq!(vendored, real(dir), "{path}");
        }
    }

    /// The SDK's crate doc example is `plugins/tag-team`, which CI builds.
    #[test]
    fn the_sdk_doc_example_is_the_built_plugin() {
        let sdk = include_str!("../../../sdk/plugin/src/lib.rs");
        let built = include_str!("../../../plugins/tag-team/src/lib.rs");
        let mut lines = sdk
            .lines()
            .skip_while(|l| *l != "//! ```ignore")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| {
                l.strip_prefix("//! ")
                    .unwrap_or(l.trim_start_matches("//!"))
            });
        let example: Vec<&str> = lines.by_ref().collect();
        assert_eq!(example.join("\n").trim(), built.trim());
    }

    #[test]
    fn manifest_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plugin.toml");
        for (text, needle) in [
            ("name = \"Bad\"", "name"),
            ("name = \"ok\"\nkind = \"reduce\"", "kind"),
            (
                "name = \"ok\"\nkind = \"aggregate\"\nlang = \"python\"",
                "aggregators",
            ),
            ("name = \"ok\"\nlang = \"cobol\"", "lang"),
            ("name = \"ok\"\ncapabilities = [\"network\"]", "capability"),
            ("name = \"ok\"\ncolour = 1", "colour"),
            ("name = \"ok\"\npolicy = \"drop\"", "policy"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = format!("{:#}", super::Manifest::read(&p).unwrap_err());
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
