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
}

impl ReactorStats {
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

    /// One line per reactor, for logs and the status page.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.reactors.iter().enumerate() {
            s.push_str(&format!(
                "reactor {i} (core {}): conns {} open / {} total, reads {} ({} B), writes {} ({} B), buffer waits {}, polls {} busy / {} idle, sleeps {}, spin window {} us\n",
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
            ));
        }
        s
    }
}
