//! Must-show 1 of the plugin work: `runnel plugin new`, `build`, `test` on a fresh project,
//! with nothing done by hand; and `test` with a plugin that drops, replaces and fails events.

use std::path::{Path, PathBuf};
use std::process::Command;

use runnel_e2e::{bin, plugin};
use serde_json::Value;

fn runnel(args: &[&str], envs: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(bin("runnel"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "runnel {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A target dir for projects made by `plugin new`, beside the test's own (kept between runs,
/// so a rerun does not rebuild the SDK's dependencies).
fn plugin_target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap();
    target.join("plugin-new")
}

#[test]
fn new_build_test_works_on_a_fresh_project() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("demo");
    let printed = runnel(
        &[
            "plugin",
            "new",
            "demo",
            "--kind",
            "enrich",
            "--dir",
            project.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(printed.trim(), project.to_str().unwrap());
    let target = plugin_target_dir();
    let wasm = runnel(
        &["plugin", "build", project.to_str().unwrap()],
        &[("CARGO_TARGET_DIR", &target)],
    );
    let wasm = PathBuf::from(wasm.trim());
    assert!(wasm.is_file(), "{} is not a file", wasm.display());
    // In the project, whatever the cargo target dir, so the manifest is found above it.
    assert!(
        wasm.starts_with(std::fs::canonicalize(&project).unwrap()),
        "{}",
        wasm.display()
    );
    let input = project.join("events.ndjson");
    let out = runnel(
        &[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        &[],
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let input_events = std::fs::read_to_string(&input).unwrap().lines().count();
    assert_eq!(lines.len(), input_events, "{out}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["fate"], "keep", "{l}");
        assert_eq!(l["line"], i + 1);
        assert!(l["event"]["event_id"].is_string(), "{l}");
    }
    // A second `new` into the same directory is refused, not merged.
    let again = Command::new(bin("runnel"))
        .args(["plugin", "new", "demo", "--dir", project.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

#[test]
fn test_prints_every_fate_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(
        &input,
        concat!(
            r#"{"event_id":"a","event_type":"page.view","timestamp":1,"properties":{"email":"x@example.com","ip":"203.0.113.9"}}"#, "\n",
            r#"{"event_id":"b","event_type":"page.view","timestamp":"not a time"}"#, "\n",
            r#"{"event_id":"c","event_type":"page.view","timestamp":2}"#, "\n",
        ),
    )
    .unwrap();
    let redact = plugin("pii_redact");
    let out = runnel(
        &[
            "plugin",
            "test",
            redact.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--param",
            "salt=s",
        ],
        &[],
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["fate"], "replace", "{out}");
    assert!(
        lines[0]["event"]["properties"]["email"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(lines[0]["event"]["properties"]["ip"], "203.0.113.0");
    assert_eq!(lines[1]["fate"], "invalid");
    assert!(
        lines[1]["error"].as_str().unwrap().contains("timestamp"),
        "{out}"
    );
    assert_eq!(lines[2]["fate"], "keep");

    let trap = plugin("trap_on_event");
    let out = runnel(
        &[
            "plugin",
            "test",
            trap.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--param",
            "poison=c",
        ],
        &[],
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["fate"], "keep");
    assert_eq!(lines[2]["fate"], "failed", "{out}");
    assert_eq!(lines[2]["kind"], "trap");
}

/// Building an example plugin in the checkout leaves the checkout clean: what `plugin build`
/// writes into the plugin's folder is ignored by git (when the tree is a git checkout).
fn assert_ignored_by_git(repo: &Path, built: &Path) {
    let in_git = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--is-inside-work-tree"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !in_git {
        return;
    }
    let status = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["check-ignore", "-q"])
        .arg(built)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{} is not ignored by git",
        built.display()
    );
}

/// The contract is language-neutral: the Python example (componentize-py, `plugins/python/`)
/// builds with `runnel plugin build` and runs in the broker's host with the same results a Rust
/// plugin would give.
#[test]
fn python_plugin_builds_and_runs_in_the_host() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let project = repo.join("plugins/python/normalize");
    let wasm = runnel(&["plugin", "build", project.to_str().unwrap()], &[]);
    let wasm = PathBuf::from(wasm.trim());
    assert!(wasm.is_file(), "{} is not a file", wasm.display());
    assert_ignored_by_git(repo, &wasm);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(
        &input,
        concat!(
            r#"{"event_id":"a","event_type":"page.view","timestamp":1,"platform":" iOS ","properties":{"path":"/"}}"#, "\n",
            r#"{"event_id":"b","event_type":"test.ping","timestamp":2}"#, "\n",
            r#"{"event_id":"c","event_type":"page.view","timestamp":3,"platform":"android"}"#, "\n",
            r#"{"event_id":"d","event_type":"qa.ping","timestamp":4}"#, "\n",
        ),
    )
    .unwrap();
    let out = runnel(
        &[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        &[],
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0]["fate"], "replace", "{out}");
    assert_eq!(lines[0]["event"]["platform"], "ios");
    assert_eq!(lines[0]["event"]["properties"]["path"], "/");
    assert_eq!(lines[0]["event"]["event_id"], "a");
    assert_eq!(lines[1]["fate"], "drop");
    assert!(
        lines[1]["reason"].as_str().unwrap().contains("drop_prefix"),
        "{out}"
    );
    assert_eq!(lines[2]["fate"], "keep");
    assert_eq!(lines[3]["fate"], "keep");
    // A parameter from the command line reaches the Python init and decide.
    let out = runnel(
        &[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--param",
            "drop_prefix=qa.",
        ],
        &[],
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[1]["fate"], "keep", "{out}");
    assert_eq!(lines[3]["fate"], "drop", "{out}");
}

/// `plugin new --kind aggregate`: a project that builds as it is; `test` shows its rows and the
/// windows the broker's engine makes of them.
#[test]
fn new_aggregator_builds_and_tests_with_windows() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("per-type");
    runnel(
        &[
            "plugin",
            "new",
            "per-type",
            "--kind",
            "aggregate",
            "--dir",
            project.to_str().unwrap(),
        ],
        &[],
    );
    let target = plugin_target_dir();
    let wasm = runnel(
        &["plugin", "build", project.to_str().unwrap()],
        &[("CARGO_TARGET_DIR", &target)],
    );
    let input = project.join("events.ndjson");
    let out = runnel(
        &[
            "plugin",
            "test",
            wasm.trim(),
            "--input",
            input.to_str().unwrap(),
        ],
        &[],
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rows = lines.iter().filter(|l| l["kind"] == "row").count();
    assert_eq!(rows, 3, "{out}");
    let windows: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "window").collect();
    assert_eq!(windows.len(), 2, "{out}");
    let views = windows
        .iter()
        .find(|w| w["event_type"] == "page.view")
        .unwrap();
    assert_eq!(views["events"], 2);
    assert_eq!(views["window_start"], "2026-11-21T12:00:00.000Z");
    assert_eq!(views["window_end"], "2026-11-21T12:01:00.000Z");
    assert_eq!(views["is_final"], true);
    // An aggregator cannot be mistaken for an enricher by the broker: it says what it is.
    let bad = Command::new(bin("runnel"))
        .args([
            "plugin",
            "new",
            "py-agg",
            "--kind",
            "aggregate",
            "--lang",
            "python",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("aggregators"));
}

/// `plugin test` names a quantiles measure's columns as `agg read` does (`amount_p50`, …), so
/// what an author sees is what an analyst reads.
#[test]
fn plugin_test_names_quantile_columns_as_agg_read_does() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("payments.ndjson");
    std::fs::write(
        &input,
        concat!(
            r#"{"event_id":"a","event_type":"deposit.completed","timestamp":"2026-11-21T10:00:01Z","properties":{"amount":10,"currency":"KES","country":"KE"}}"#, "\n",
            r#"{"event_id":"b","event_type":"deposit.completed","timestamp":"2026-11-21T10:00:02Z","properties":{"amount":30,"currency":"KES","country":"KE"}}"#, "\n",
        ),
    )
    .unwrap();
    let wasm = plugin("revenue");
    let out = runnel(
        &[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        &[],
    );
    let windows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "window")
        .collect();
    assert_eq!(windows.len(), 1, "{out}");
    let w = &windows[0];
    for col in ["amount_p50", "amount_p90", "amount_p99"] {
        assert!(w[col].is_number(), "{col} missing in {w}");
    }
    assert!(w.get("amount").is_none(), "{w}");
    assert_eq!(w["payments"], 2, "{w}");
}
