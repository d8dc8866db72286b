//! Clocks, percentiles, random jitter and readings from /proc.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand_core::RngCore;

/// The process clock all embedded timestamps count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process epoch (monotonic; senders and receivers share it).
pub(crate) fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The process-clock reading of an instant (0 if it is before the epoch).
pub(crate) fn ns_at(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Starts the process clock.
pub(crate) fn init_clock() {
    let _ = epoch();
}

/// A uniform draw in `[0, 1)`.
pub(crate) fn unit(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A uniform duration in `[0, max)`.
pub(crate) fn offset(rng: &mut impl RngCore, max: Duration) -> Duration {
    max.mul_f64(unit(rng))
}

/// Percentiles of a sample, in the sample's unit. `q` in `(0, 1]`.
pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `p50/p99/p99.9/max` in milliseconds of a sample of nanoseconds (sorts it).
pub(crate) fn latency_summary(sample: &mut [u64]) -> (f64, f64, f64, f64) {
    sample.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    (
        ms(percentile(sample, 0.50)),
        ms(percentile(sample, 0.99)),
        ms(percentile(sample, 0.999)),
        ms(sample.last().copied().unwrap_or(0)),
    )
}

/// A `Key:   123 kB` field of /proc/PID/status, in KiB.
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The resident set of a process, KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// User + system CPU seconds of a process (clock ticks at the usual 100 Hz).
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Summed CPU seconds of every process whose command name is `comm` (e.g. `postgres`).
pub(crate) fn cpu_secs_by_comm(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim_end() == comm {
            total += cpu_secs(pid).unwrap_or(0.0);
        }
    }
    total
}

/// The 1-, 5- and 15-minute load averages.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU use of the relay, the generator and (optionally) processes named `comm`, between
/// two samples.
pub(crate) struct CpuWatch {
    relay_pid: Option<u32>,
    comm: Option<String>,
    at: Instant,
    relay: f64,
    me: f64,
    other: f64,
}

impl CpuWatch {
    pub(crate) fn start(relay_pid: Option<u32>, comm: Option<&str>) -> Self {
        Self {
            relay_pid,
            comm: comm.map(str::to_owned),
            at: Instant::now(),
            relay: relay_pid.and_then(cpu_secs).unwrap_or(0.0),
            me: cpu_secs(std::process::id()).unwrap_or(0.0),
            other: comm.map(cpu_secs_by_comm).unwrap_or(0.0),
        }
    }

    /// `relay=…% loadgen=…% [comm=…%]` of one core over the interval.
    pub(crate) fn report(&self) -> String {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let pct = |a: f64, b: f64| 100.0 * (a - b) / wall;
        let mut s = format!(
            "relay_cpu_pct={:.0} loadgen_cpu_pct={:.0}",
            self.relay_pid
                .and_then(cpu_secs)
                .map(|c| pct(c, self.relay))
                .unwrap_or(f64::NAN),
            pct(cpu_secs(std::process::id()).unwrap_or(0.0), self.me)
        );
        if let Some(c) = &self.comm {
            s.push_str(&format!(" {c}_cpu_pct={:.0}", pct(cpu_secs_by_comm(c), self.other)));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&v, 1.0), 1000);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.999), 7);
    }

    #[test]
    fn proc_readings() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_secs(me).is_some());
    }
}
