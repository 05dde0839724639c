//! What a run prints and writes: the summary table, `--json FILE` (every figure and the
//! machine), and `--report FILE.html` (one self-contained page: inline SVG charts of latency
//! and throughput over time and the percentile spectrum, no external assets).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::engine::Recorder;
use crate::machine::Machine;
use crate::probe::Visibility;

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    /// `ingest` or `broker`.
    pub command: String,
    /// What was loaded (URL or address).
    pub target: String,
    /// The settings, as given.
    pub settings: serde_json::Value,
    /// One line describing the offered load.
    pub load: String,
    /// Where it ran.
    pub machine: Machine,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// From the start to the last answer (at least the duration).
    pub elapsed: Duration,
    /// The requests.
    pub rec: Recorder,
    /// `--visible` probes.
    pub visibility: Option<Visibility>,
    /// `--until-logged`: (events the broker's log gained, seconds from the start until it held
    /// them all).
    pub logged: Option<(u64, f64)>,
}

const MIB: f64 = (1u64 << 20) as f64;

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// The percentiles of the summary: label, quantile.
const PERCENTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(),
        "mean_ms": h.mean() / 1e3,
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p99_9_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn latency_row(label: &str, h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return format!("{label:<38} (none)\n");
    }
    let mut s = format!("{label:<38}");
    for (_, q) in PERCENTILES {
        let _ = write!(s, " {:>9.2}", ms(h.value_at_quantile(q)));
    }
    let _ = writeln!(s, " {:>9.2}", ms(h.max()));
    s
}

/// Quantiles of the spectrum: 0 to 99.999%, evenly spaced in `log10(1 / (1 - q))`.
fn spectrum_quantiles(count: u64) -> Vec<f64> {
    // Beyond 1 - 1/count every quantile is the maximum.
    let top = (count.max(2) as f64).log10().min(5.0);
    (0..=100)
        .map(|k| f64::from(k) * top / 100.0)
        .map(|x| 1.0 - 10f64.powf(-x))
        .collect()
}

/// (log10(1/(1-q)), milliseconds) points of a histogram's spectrum.
fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    spectrum_quantiles(h.len())
        .into_iter()
        .map(|q| (-(1.0 - q).log10(), ms(h.value_at_quantile(q))))
        .collect()
}

impl Report {
    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Successful events a second.
    pub fn events_per_sec(&self) -> f64 {
        self.rec.totals.events as f64 / self.secs()
    }

    /// The summary table.
    pub fn summary(&self) -> String {
        let r = &self.rec;
        let secs = self.secs();
        let mut s = String::new();
        let _ = writeln!(s, "runnel bench {}: {}", self.command, self.target);
        let _ = writeln!(s, "load      {}", self.load);
        let _ = writeln!(s, "machine   {}", self.machine);
        let _ = writeln!(
            s,
            "\nthroughput  {:>12.0} events/s {:>9.1} MiB/s {:>9.1} requests/s   ({} events in {} requests, {:.1} s)",
            self.events_per_sec(),
            r.totals.bytes as f64 / MIB / secs,
            r.requests as f64 / secs,
            r.totals.events,
            r.requests,
            secs
        );
        let _ = writeln!(
            s,
            "events      accepted {}, duplicates {}, rejected as invalid {}",
            r.totals.accepted, r.totals.duplicates, r.totals.rejected
        );
        if let Some((events, secs)) = self.logged {
            let _ = writeln!(
                s,
                "end to end  {:>12.0} events/s into the broker's log (it held all {events} {secs:.1} s after the start)",
                events as f64 / secs
            );
        }
        let _ = writeln!(
            s,
            "\n{:<38} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max"
        );
        s.push_str(&latency_row(&self.latency_label(), &r.latency));
        if let Some(v) = &self.visibility {
            s.push_str(&latency_row("accept -> visible in the log", &v.log));
            if let Some(name) = &v.aggregate {
                s.push_str(&latency_row(
                    &format!("accept -> visible in {name}"),
                    &v.in_aggregate,
                ));
            }
            let _ = writeln!(
                s,
                "({} probes, polled every {} ms)",
                v.samples.len(),
                v.poll.as_millis()
            );
        }
        let mut errors: Vec<(String, u64)> =
            r.errors.iter().map(|(k, v)| (k.clone(), *v)).collect();
        if let Some(v) = &self.visibility {
            errors.extend(v.errors.iter().map(|(k, v)| (k.clone(), *v)));
        }
        if errors.is_empty() {
            let _ = writeln!(s, "\nerrors      none");
        } else {
            let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(s, "\nerrors      {}", list.join(", "));
        }
        s
    }

    fn latency_label(&self) -> String {
        if self.command == "broker" {
            "batch -> broker ack (after fsync)".into()
        } else {
            "request -> 202 (spool fsync)".into()
        }
    }

    /// Every figure, for `--json`.
    pub fn json(&self) -> serde_json::Value {
        let r = &self.rec;
        let secs = self.secs();
        let series: Vec<serde_json::Value> = r
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let q =
                    |q: f64| (!s.latency.is_empty()).then(|| ms(s.latency.value_at_quantile(q)));
                json!({
                    "second": i,
                    "events_per_sec": s.events,
                    "mib_per_sec": s.bytes as f64 / MIB,
                    "requests": s.latency.len(),
                    "errors": s.errors,
                    "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
                    "max_ms": (!s.latency.is_empty()).then(|| ms(s.latency.max())),
                })
            })
            .collect();
        let spectrum: Vec<serde_json::Value> = spectrum(&r.latency)
            .into_iter()
            .map(|(x, v)| json!({ "percentile": 100.0 * (1.0 - 10f64.powf(-x)), "latency_ms": v }))
            .collect();
        let visible = self.visibility.as_ref().map(|v| {
            json!({
                "probes": v.samples.len(),
                "poll_ms": v.poll.as_secs_f64() * 1e3,
                "log": latency_json(&v.log),
                "aggregate": v.aggregate,
                "in_aggregate": latency_json(&v.in_aggregate),
                "errors": v.errors,
                "samples": v.samples.iter().map(|s| json!({
                    "at_s": s.at.as_secs_f64(),
                    "log_ms": s.log.as_secs_f64() * 1e3,
                    "aggregate_ms": s.aggregate.map(|d| d.as_secs_f64() * 1e3),
                })).collect::<Vec<_>>(),
            })
        });
        json!({
            "command": self.command,
            "target": self.target,
            "settings": self.settings,
            "load": self.load,
            "machine": self.machine,
            "started_at": self.started_at,
            "elapsed_s": secs,
            "throughput": {
                "events_per_sec": self.events_per_sec(),
                "mib_per_sec": r.totals.bytes as f64 / MIB / secs,
                "requests_per_sec": r.requests as f64 / secs,
                "events": r.totals.events,
                "bytes": r.totals.bytes,
                "requests": r.requests,
            },
            "events": {
                "accepted": r.totals.accepted,
                "duplicates": r.totals.duplicates,
                "rejected": r.totals.rejected,
            },
            "latency": latency_json(&r.latency),
            "visible": visible,
            "end_to_end": self.logged.map(|(events, secs)| json!({
                "events": events,
                "seconds": secs,
                "events_per_sec": events as f64 / secs,
            })),
            "errors": r.errors,
            "series": series,
            "spectrum": spectrum,
        })
    }

    /// The HTML page.
    pub fn html(&self) -> String {
        let r = &self.rec;
        let x_secs = |f: &dyn Fn(&crate::engine::Second) -> Option<f64>| -> Vec<(f64, f64)> {
            r.seconds
                .iter()
                .enumerate()
                .filter_map(|(i, s)| f(s).map(|v| (i as f64 + 0.5, v)))
                .collect()
        };
        let q = |q: f64| {
            move |s: &crate::engine::Second| {
                (!s.latency.is_empty()).then(|| ms(s.latency.value_at_quantile(q)))
            }
        };
        let mut over_time = vec![
            Series::line("p50", "#1b9e77", x_secs(&q(0.5))),
            Series::line("p90", "#7570b3", x_secs(&q(0.9))),
            Series::line("p99", "#d95f02", x_secs(&q(0.99))),
            Series::line(
                "max",
                "#e7298a",
                x_secs(&|s| (!s.latency.is_empty()).then(|| ms(s.latency.max()))),
            ),
        ];
        let mut spectra = vec![Series::line(
            &self.latency_label(),
            "#d95f02",
            spectrum(&r.latency),
        )];
        if let Some(v) = &self.visibility {
            let points = |f: &dyn Fn(&crate::probe::Sample) -> Option<Duration>| {
                v.samples
                    .iter()
                    .filter_map(|s| f(s).map(|d| (s.at.as_secs_f64(), d.as_secs_f64() * 1e3)))
                    .collect()
            };
            over_time.push(Series::dots(
                "visible in the log (probe)",
                "#66a61e",
                points(&|s| Some(s.log)),
            ));
            spectra.push(Series::line(
                "accept -> visible in the log",
                "#66a61e",
                spectrum(&v.log),
            ));
            if let Some(name) = &v.aggregate {
                over_time.push(Series::dots(
                    &format!("visible in {name} (probe)"),
                    "#a6761d",
                    points(&|s| s.aggregate),
                ));
                spectra.push(Series::line(
                    &format!("accept -> visible in {name}"),
                    "#a6761d",
                    spectrum(&v.in_aggregate),
                ));
            }
        }
        let throughput = vec![Series::line(
            "events/s",
            "#1f78b4",
            x_secs(&|s| Some(s.events as f64)),
        )];
        let top = spectrum_quantiles(r.latency.len().max(10))
            .last()
            .map_or(3.0, |q| -(1.0 - q).log10());
        let spectrum_ticks: Vec<(f64, String)> = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as f64 <= top + 1e-9)
            .map(|(i, l)| (i as f64, l.to_string()))
            .collect();
        let charts = [
            chart(
                "latency-over-time",
                "Latency over time (per second of the run, by answer time)",
                "seconds since the start",
                "ms",
                &over_time,
                None,
            ),
            chart(
                "throughput-over-time",
                "Throughput over time",
                "seconds since the start",
                "events/s",
                &throughput,
                None,
            ),
            chart(
                "percentile-spectrum",
                "Latency by percentile",
                "percentile",
                "ms",
                &spectra,
                Some(&spectrum_ticks),
            ),
        ];
        let mut page = String::new();
        let _ = write!(
            page,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>runnel bench {cmd}</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1000px}}\
             pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}\
             svg{{background:#fff;border:1px solid #ddd;margin:1em 0}}</style></head><body>\n\
             <h1>runnel bench {cmd}</h1>\n<p>{target} &middot; started {started}</p>\n\
             <pre id=\"summary\">{summary}</pre>\n",
            cmd = esc(&self.command),
            target = esc(&self.target),
            started = esc(&self.started_at),
            summary = esc(&self.summary()),
        );
        for c in charts {
            page.push_str(&c);
            page.push('\n');
        }
        let _ = write!(
            page,
            "<h2>Settings</h2>\n<pre id=\"settings\">{}</pre>\n</body></html>\n",
            esc(&serde_json::to_string_pretty(&self.settings).unwrap_or_default())
        );
        page
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One plotted series.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    color: &'static str,
    points: Vec<(f64, f64)>,
    dots: bool,
}

impl Series {
    fn line(name: &str, color: &'static str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            color,
            points,
            dots: false,
        }
    }
    fn dots(name: &str, color: &'static str, points: Vec<(f64, f64)>) -> Self {
        Self {
            dots: true,
            ..Self::line(name, color, points)
        }
    }
}

/// A "nice" step for about `n` ticks over `0..max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A line chart as inline SVG. Each series is a `<polyline>` (or `<circle>`s for dots) in a
/// `<g class="series" data-series="NAME" data-points="N">`.
fn chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_ticks: Option<&[(f64, String)]>,
) -> String {
    const W: f64 = 900.0;
    const H: f64 = 400.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const B: f64 = 90.0;
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all
        .clone()
        .map(|p| p.0)
        .fold(0.0f64, f64::max)
        .max(x_ticks.and_then(|t| t.last()).map_or(1.0, |t| t.0))
        .max(1.0);
    let y_max = all.map(|p| p.1).fold(0.0f64, f64::max).max(1e-3) * 1.05;
    let px = |x: f64| L + x / x_max * (W - L - R);
    let py = |y: f64| H - B - y / y_max * (H - T - B);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-size=\"12\" font-family=\"sans-serif\">\
         <title>{t}</title><text x=\"{L}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{t}</text>",
        t = esc(title)
    );
    // Axes and grid.
    let step = nice_step(y_max, 6.0);
    let mut y = 0.0;
    while y <= y_max {
        let _ = write!(
            s,
            "<line x1=\"{L}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{v}</text>",
            x2 = W - R,
            yy = py(y),
            tx = L - 6.0,
            ty = py(y) + 4.0,
            v = label(y)
        );
        y += step;
    }
    let ticks: Vec<(f64, String)> = match x_ticks {
        Some(t) => t.to_vec(),
        None => {
            let step = nice_step(x_max, 10.0);
            (0..)
                .map(|i| f64::from(i) * step)
                .take_while(|x| *x <= x_max)
                .map(|x| (x, label(x)))
                .collect()
        }
    };
    for (x, l) in &ticks {
        let _ = write!(
            s,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{T}\" y2=\"{y2}\" stroke=\"#eee\"/>\
             <text x=\"{xx:.1}\" y=\"{ty}\" text-anchor=\"middle\">{l}</text>",
            xx = px(*x),
            y2 = H - B,
            ty = H - B + 16.0,
            l = esc(l)
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{L}\" x2=\"{L}\" y1=\"{T}\" y2=\"{yb}\" stroke=\"#444\"/>\
         <line x1=\"{L}\" x2=\"{xr}\" y1=\"{yb}\" y2=\"{yb}\" stroke=\"#444\"/>\
         <text x=\"{xm}\" y=\"{xl}\" text-anchor=\"middle\">{xlab}</text>\
         <text x=\"14\" y=\"{ym}\" transform=\"rotate(-90 14 {ym})\" text-anchor=\"middle\">{ylab}</text>",
        yb = H - B,
        xr = W - R,
        xm = (L + W - R) / 2.0,
        xl = H - B + 36.0,
        ym = (T + H - B) / 2.0,
        xlab = esc(x_label),
        ylab = esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let _ = write!(
            s,
            "<g class=\"series\" data-series=\"{n}\" data-points=\"{c}\">",
            n = esc(&se.name),
            c = se.points.len()
        );
        if se.dots {
            for (x, y) in &se.points {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"/>",
                    px(*x),
                    py(*y),
                    se.color
                );
            }
        } else {
            let pts: Vec<String> = se
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" points=\"{}\"/>",
                se.color,
                pts.join(" ")
            );
        }
        // Legend: rows of three under the x axis.
        let lx = L + 10.0 + (i % 3) as f64 * 270.0;
        let ly = H - B + 54.0 + (i / 3) as f64 * 15.0;
        let _ = write!(
            s,
            "<rect x=\"{lx}\" y=\"{ry}\" width=\"12\" height=\"4\" fill=\"{c}\"/>\
             <text x=\"{tx}\" y=\"{ly}\">{n}</text></g>",
            ry = ly - 6.0,
            c = se.color,
            tx = lx + 16.0,
            n = esc(&se.name)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Sent;

    fn report() -> Report {
        let mut rec = Recorder::default();
        for i in 0..300u64 {
            let at = Duration::from_millis(i * 10);
            let latency = Duration::from_micros(500 + i * 40);
            let result = if i == 7 {
                Err("http 503".to_string())
            } else {
                Ok(Sent {
                    events: 100,
                    bytes: 30_000,
                    accepted: 100,
                    ..Sent::default()
                })
            };
            rec.record(at, latency, &result);
        }
        Report {
            command: "ingest".into(),
            target: "http://127.0.0.1:8710/v1/events".into(),
            settings: json!({"rate": "max"}),
            load: "closed loop".into(),
            machine: Machine::probe(&std::env::temp_dir()),
            started_at: "2026-11-22T00:00:00Z".into(),
            elapsed: Duration::from_secs(3),
            rec,
            visibility: None,
            logged: Some((29_900, 4.0)),
        }
    }

    #[test]
    fn summary_and_json_hold_the_figures() {
        let r = report();
        let s = r.summary();
        assert!(s.contains("events/s"), "{s}");
        assert!(s.contains("http 503: 1"), "{s}");
        assert!(s.contains("7475 events/s into the broker's log"), "{s}");
        let j = r.json();
        assert_eq!(j["throughput"]["events"], 29_900);
        assert_eq!(j["series"].as_array().unwrap().len(), 3);
        assert_eq!(j["end_to_end"]["events_per_sec"], 7475.0);
        assert_eq!(j["errors"]["http 503"], 1);
        assert!(
            j["latency"]["p99_ms"].as_f64().unwrap() > j["latency"]["p50_ms"].as_f64().unwrap()
        );
        assert!(j["machine"]["cores"].as_u64().unwrap() >= 1);
        assert!(!j["spectrum"].as_array().unwrap().is_empty());
    }

    #[test]
    fn the_page_is_self_contained_and_plots_every_series() {
        let html = report().html();
        assert_eq!(
            external_assets(&html),
            Vec::<String>::new(),
            "no external assets"
        );
        // The check itself sees an external asset however it is written.
        for page in [
            r#"<img src="https://cdn.example/x.png">"#,
            r#"<link href='http://cdn.example/s.css'>"#,
            r#"<script src=//cdn.example/a.js></script>"#,
            r#"<style>body{background:url(https://cdn.example/b.png)}</style>"#,
        ] {
            assert_eq!(external_assets(page).len(), 1, "{page}");
        }
        assert!(!html.contains("<script"));
        for id in [
            "latency-over-time",
            "throughput-over-time",
            "percentile-spectrum",
        ] {
            assert!(html.contains(&format!("<svg id=\"{id}\"")), "{id}");
        }
        for series in ["p50", "p90", "p99", "max", "events/s"] {
            assert!(
                html.contains(&format!("data-series=\"{series}\" data-points=\"3\"")),
                "{series}"
            );
        }
        assert!(
            html.contains("data-series=\"request -&gt; 202 (spool fsync)\" data-points=\"101\"")
        );
    }

    /// The external references of a page: `src=`, `href=` and CSS `url(…)` values that load
    /// from elsewhere (`http:`, `https:`, or scheme-relative `//`). An SVG namespace
    /// (`xmlns="http://…"`) is a name, not a load, and is not one.
    fn external_assets(html: &str) -> Vec<String> {
        let mut out = Vec::new();
        for key in ["src=", "href=", "url("] {
            for (at, _) in html.match_indices(key) {
                let value = html[at + key.len()..].trim_start_matches(['"', '\'']);
                let end = value
                    .find(|c: char| {
                        c == '"' || c == '\'' || c == ')' || c == '>' || c.is_whitespace()
                    })
                    .unwrap_or(value.len());
                let value = &value[..end];
                if value.starts_with("http:")
                    || value.starts_with("https:")
                    || value.starts_with("//")
                {
                    out.push(value.to_string());
                }
            }
        }
        out
    }
}
