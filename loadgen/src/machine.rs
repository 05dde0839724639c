//! The machine a benchmark ran on: cores, memory, CPU, kernel, and the latency of a durable
//! 4 KiB append in the data directory (what every fsync-bound figure rests on).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// The machine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// Cores this process may run on.
    pub cores: usize,
    /// Total memory, bytes.
    pub memory_bytes: u64,
    /// CPU model.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// `fdatasync` after a 4 KiB append, median of 200, milliseconds.
    pub fsync_p50_ms: f64,
    /// The same, 99th percentile.
    pub fsync_p99_ms: f64,
    /// Where the fsync was measured.
    pub fsync_dir: String,
}

impl Machine {
    /// Probes this machine; the fsync is measured with a file in `dir`.
    pub fn probe(dir: &Path) -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or("unknown CPU".to_string(), |s| s.trim().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let (fsync_p50_ms, fsync_p99_ms) = fsync_ms(dir).unwrap_or((f64::NAN, f64::NAN));
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_bytes,
            cpu,
            kernel,
            fsync_p50_ms,
            fsync_p99_ms,
            fsync_dir: dir.display().to_string(),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cores, {:.1} GiB, {}, Linux {}, fdatasync(4 KiB append) p50 {:.3} ms p99 {:.3} ms",
            self.cores,
            self.memory_bytes as f64 / f64::from(1u32 << 30),
            self.cpu,
            self.kernel,
            self.fsync_p50_ms,
            self.fsync_p99_ms
        )
    }
}

fn fsync_ms(dir: &Path) -> std::io::Result<(f64, f64)> {
    let path = dir.join(format!(".runnel-fsync-probe-{}", std::process::id()));
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((samples[100], samples[198]))
}
