//! Counters kept by each reactor, readable from any thread without locks
//! (relaxed atomics: they are statistics, not synchronisation).

use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// One reactor's counters.
#[derive(Debug, Default)]
pub struct ReactorStats {
    pub core: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub read_ops: AtomicU64,
    pub write_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub buffer_waits: AtomicU64,
    pub loops: AtomicU64,
    pub sleeps: AtomicU64,
    /// Non-blocking polls (busy or adaptive spinning) that found completions.
    pub busy_polls: AtomicU64,
    /// Non-blocking polls that found nothing: the CPU spinning cost.
    pub idle_polls: AtomicU64,
    /// Adaptive mode: the spin window the reactor has learned, in ns.
    pub spin_window_ns: AtomicU64,
    /// Sends that went out with zero-copy `sendmsg`.
    pub zc_sends: AtomicU64,
    /// Of those, the ones the kernel reported it copied after all.
    pub zc_copied: AtomicU64,
    /// Read chunks sent straight from a memory-backed LU's mapping, with
    /// no copy into an I/O buffer (see `BlockBackend::mapped`).
    pub mapped_reads: AtomicU64,
    /// Receives of write data straight into a memory-backed LU's mapping,
    /// with no pool buffer and no disk write (see
    /// `BlockBackend::mapped_mut`).
    pub mapped_writes: AtomicU64,
    /// Command latency, from the command's arrival to its status being
    /// queued: bucket `i` counts latencies below [`LATENCY_BOUNDS_US`]`[i]`
    /// (and not below the bound before); the last bucket counts the rest.
    pub latency: [AtomicU64; LATENCY_BUCKETS],
}

/// Buckets of [`ReactorStats::latency`]: powers of two from 1 µs to about
/// 1 s, then everything slower.
pub const LATENCY_BUCKETS: usize = 22;

/// Upper bounds (exclusive) of the latency buckets in µs; the last bucket
/// has none.
pub const LATENCY_BOUNDS_US: [u64; LATENCY_BUCKETS - 1] = {
    let mut b = [0u64; LATENCY_BUCKETS - 1];
    let mut i = 0;
    while i < b.len() {
        b[i] = 1 << i;
        i += 1;
    }
    b
};

impl ReactorStats {
    /// Count one command that took `d`.
    pub fn record_latency(&self, d: std::time::Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        // Bucket i holds [2^(i-1), 2^i) µs; bucket 0 below 1 µs.
        let i = (64 - us.leading_zeros()) as usize;
        self.latency[i.min(LATENCY_BUCKETS - 1)].fetch_add(1, Relaxed);
    }

    /// The latency below which a share `q` (0..=1) of the commands
    /// counted so far completed, as the upper bound of its bucket in µs
    /// (`None`: nothing counted, or it lies in the open last bucket).
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.latency.iter().map(|c| c.load(Relaxed)).collect();
        quantile(&counts, q)
    }

    pub fn add(&self, c: &AtomicU64, n: u64) {
        let _ = self;
        c.fetch_add(n, Relaxed);
    }
}

/// Counters of every reactor, indexed by reactor number. Each reactor's
/// counters sit on their own cache lines: a reactor bumps its own on every
/// poll, and must not bounce a line its neighbour writes too.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub reactors: Arc<Vec<CachePadded<ReactorStats>>>,
}

impl Stats {
    pub fn new(n: usize) -> Self {
        Stats {
            reactors: Arc::new(
                (0..n)
                    .map(|_| CachePadded::new(ReactorStats::default()))
                    .collect(),
            ),
        }
    }

    /// Latency buckets of every reactor added up.
    pub fn latency_counts(&self) -> [u64; LATENCY_BUCKETS] {
        let mut c = [0u64; LATENCY_BUCKETS];
        for r in self.reactors.iter() {
            for (sum, b) in c.iter_mut().zip(r.latency.iter()) {
                *sum += b.load(Relaxed);
            }
        }
        c
    }

    /// One line per reactor, for logs and the status page.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.reactors.iter().enumerate() {
            s.push_str(&format!(
                "reactor {i} (core {}): conns {} open / {} total, reads {} ({} B), writes {} ({} B), buffer waits {}, polls {} busy / {} idle, sleeps {}, spin window {} us, zero-copy sends {} ({} copied), reads in place {}, writes in place {}, latency p50 {} p99 {}\n",
                r.core.load(Relaxed),
                r.connections_open.load(Relaxed),
                r.connections_total.load(Relaxed),
                r.read_ops.load(Relaxed),
                r.read_bytes.load(Relaxed),
                r.write_ops.load(Relaxed),
                r.write_bytes.load(Relaxed),
                r.buffer_waits.load(Relaxed),
                r.busy_polls.load(Relaxed),
                r.idle_polls.load(Relaxed),
                r.sleeps.load(Relaxed),
                r.spin_window_ns.load(Relaxed) / 1000,
                r.zc_sends.load(Relaxed),
                r.zc_copied.load(Relaxed),
                r.mapped_reads.load(Relaxed),
                r.mapped_writes.load(Relaxed),
                fmt_us(r.latency_quantile_us(0.5)),
                fmt_us(r.latency_quantile_us(0.99)),
            ));
        }
        s
    }
}

/// The quantile `q` of histogram `counts` (buckets as in
/// [`ReactorStats::latency`]), as its bucket's upper bound in µs.
pub fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            return LATENCY_BOUNDS_US.get(i).copied();
        }
    }
    None
}

fn fmt_us(v: Option<u64>) -> String {
    match v {
        Some(us) => format!("<{us} us"),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_buckets_and_quantiles() {
        let r = ReactorStats::default();
        assert_eq!(r.latency_quantile_us(0.5), None);
        r.record_latency(Duration::from_nanos(300)); // < 1 us
        for _ in 0..97 {
            r.record_latency(Duration::from_micros(20)); // [16, 32)
        }
        r.record_latency(Duration::from_micros(700)); // [512, 1024)
        r.record_latency(Duration::from_secs(5)); // open bucket
        assert_eq!(r.latency[0].load(Relaxed), 1);
        assert_eq!(r.latency[5].load(Relaxed), 97);
        assert_eq!(r.latency[10].load(Relaxed), 1);
        assert_eq!(r.latency[LATENCY_BUCKETS - 1].load(Relaxed), 1);
        assert_eq!(r.latency_quantile_us(0.5), Some(32));
        assert_eq!(r.latency_quantile_us(0.99), Some(1024));
        assert_eq!(r.latency_quantile_us(1.0), None);
    }
}
