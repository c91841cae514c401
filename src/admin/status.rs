//! What the admin page shows, gathered from the live counters into one
//! serialisable snapshot (`/status.json` is exactly this).

use bootlun_engine::Stats;
use bootlun_frontends::iscsi::TargetShared;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Samples kept for the charts: one a second, five minutes.
pub(crate) const HISTORY: usize = 300;

/// The live objects the page reads.
pub(crate) struct Source {
    pub(crate) target_name: String,
    pub(crate) portal: SocketAddr,
    pub(crate) shared: Arc<TargetShared>,
    pub(crate) stats: Stats,
    pub(crate) pxe: Option<PxeStatus>,
    pub(crate) started: Instant,
    history: Mutex<VecDeque<Sample>>,
}

impl Source {
    pub(crate) fn new(
        target_name: String,
        portal: SocketAddr,
        shared: Arc<TargetShared>,
        stats: Stats,
        pxe: Option<PxeStatus>,
    ) -> Source {
        Source {
            target_name,
            portal,
            shared,
            stats,
            pxe,
            started: Instant::now(),
            history: Mutex::new(VecDeque::with_capacity(HISTORY + 1)),
        }
    }
}

/// Cumulative totals at one instant.
#[derive(Clone, Copy, Default)]
struct Sample {
    unix_ms: u64,
    read_bytes: u64,
    write_bytes: u64,
    read_cmds: u64,
    write_cmds: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn totals(shared: &TargetShared) -> Sample {
    let mut s = Sample {
        unix_ms: unix_ms(),
        ..Sample::default()
    };
    for l in &shared.luns {
        s.read_bytes += l.counters.read_bytes.load(Relaxed);
        s.write_bytes += l.counters.write_bytes.load(Relaxed);
        s.read_cmds += l.counters.read_cmds.load(Relaxed);
        s.write_cmds += l.counters.write_cmds.load(Relaxed);
    }
    s
}

/// Record the totals once a second until `stop`.
pub(crate) fn start_sampler(src: Arc<Source>, stop: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("bootlun-admin-sample".into())
        .spawn(move || {
            while !stop.load(SeqCst) {
                let s = totals(&src.shared);
                {
                    let mut h = src.history.lock().unwrap_or_else(|e| e.into_inner());
                    h.push_back(s);
                    while h.len() > HISTORY + 1 {
                        h.pop_front();
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
}

/// The PXE side as far as the target knows it at start-up.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct PxeStatus {
    pub(crate) interface: String,
    pub(crate) server: String,
    pub(crate) boot_entries: Vec<BootEntryRow>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct BootEntryRow {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) version: Option<String>,
    pub(crate) kernel: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Snapshot {
    pub(crate) version: String,
    pub(crate) target: String,
    pub(crate) portal: String,
    pub(crate) uptime_secs: u64,
    pub(crate) now_unix_ms: u64,
    pub(crate) luns: Vec<LunRow>,
    pub(crate) sessions: Vec<SessionRow>,
    pub(crate) reactors: Vec<ReactorRow>,
    pub(crate) history: History,
    pub(crate) pxe: Option<PxeStatus>,
    /// Network-booting clients and how far each got (PXE on only).
    #[serde(default)]
    pub(crate) pxe_clients: Vec<PxeClientRow>,
    /// Files the TFTP and HTTP sidecars served lately.
    #[serde(default)]
    pub(crate) pxe_transfers: Vec<PxeTransferRow>,
    /// DHCP leases (server mode).
    #[serde(default)]
    pub(crate) dhcp_leases: Vec<LeaseRow>,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct LeaseRow {
    pub(crate) client: String,
    pub(crate) addr: String,
    pub(crate) bound: bool,
    pub(crate) expires_in_secs: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct PxeClientRow {
    pub(crate) mac: Option<String>,
    pub(crate) ip: Option<String>,
    /// DHCP offer, iPXE, menu, kernel, initrd or iSCSI login.
    pub(crate) stage: String,
    pub(crate) detail: String,
    pub(crate) updated_unix: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct PxeTransferRow {
    pub(crate) protocol: String,
    pub(crate) peer: String,
    pub(crate) file: String,
    /// Bytes sent (so far, while `in_progress`).
    pub(crate) bytes: u64,
    /// Size of the file (or range) being sent; 0 for a finished transfer.
    #[serde(default)]
    pub(crate) total: u64,
    /// Still being sent: `status` is 0 until it ends.
    #[serde(default)]
    pub(crate) in_progress: bool,
    /// HTTP status, 200 for a whole TFTP transfer, 0 when `error` says why not.
    pub(crate) status: u16,
    #[serde(default)]
    pub(crate) error: Option<String>,
    pub(crate) unix: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct LunRow {
    pub(crate) lun: u64,
    pub(crate) backend: String,
    pub(crate) size_bytes: u64,
    pub(crate) block_size: u32,
    pub(crate) read_only: bool,
    pub(crate) write_cache: bool,
    pub(crate) thin: bool,
    /// Percent done of a SANITIZE in progress.
    pub(crate) sanitize_percent: Option<f64>,
    pub(crate) read_bytes: u64,
    pub(crate) write_bytes: u64,
    pub(crate) read_cmds: u64,
    pub(crate) write_cmds: u64,
    pub(crate) errors: u64,
    #[serde(default)]
    pub(crate) read_latency: Hist,
    #[serde(default)]
    pub(crate) write_latency: Hist,
}

/// A latency histogram: per-bucket counts (bucket i holds commands that
/// took at most `LATENCY_BOUNDS_US[i]`, and more than the bound before;
/// the last bucket everything slower), their sum and count.
#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct Hist {
    pub(crate) bounds_us: Vec<u64>,
    pub(crate) buckets: Vec<u64>,
    pub(crate) sum_ns: u64,
    pub(crate) count: u64,
}

impl Hist {
    fn of(l: &bootlun_frontends::iscsi::target::Latency) -> Hist {
        Hist {
            bounds_us: bootlun_frontends::iscsi::target::LATENCY_BOUNDS_US.to_vec(),
            buckets: l.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_ns: l.sum_ns.load(Relaxed),
            count: l.count.load(Relaxed),
        }
    }

    /// Mean in microseconds (0 with no command).
    pub(crate) fn mean_us(&self) -> u64 {
        (self.sum_ns / 1000).checked_div(self.count).unwrap_or(0)
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct SessionRow {
    pub(crate) initiator: String,
    pub(crate) alias: String,
    pub(crate) isid: String,
    pub(crate) peer: String,
    pub(crate) reactor: usize,
    pub(crate) core: u64,
    pub(crate) header_digest: bool,
    pub(crate) data_digest: bool,
    pub(crate) initiator_max_recv_dsl: u32,
    pub(crate) target_max_recv_dsl: u32,
    pub(crate) max_burst_length: u32,
    pub(crate) first_burst_length: u32,
    pub(crate) initial_r2t: bool,
    pub(crate) immediate_data: bool,
    pub(crate) login_unix: u64,
    pub(crate) uptime_secs: u64,
    pub(crate) read_bytes: u64,
    pub(crate) write_bytes: u64,
    pub(crate) commands: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct ReactorRow {
    pub(crate) reactor: usize,
    pub(crate) core: u64,
    pub(crate) connections_open: u64,
    pub(crate) connections_total: u64,
    pub(crate) read_ops: u64,
    pub(crate) write_ops: u64,
    pub(crate) read_bytes: u64,
    pub(crate) write_bytes: u64,
    pub(crate) buffer_waits: u64,
    pub(crate) loops: u64,
    pub(crate) sleeps: u64,
    pub(crate) busy_polls: u64,
    pub(crate) idle_polls: u64,
    pub(crate) spin_window_us: u64,
    /// Sends that went out zero-copy, and those the kernel copied anyway.
    #[serde(default)]
    pub(crate) zero_copy_sends: u64,
    #[serde(default)]
    pub(crate) zero_copy_copied: u64,
    /// Read chunks sent straight from a memory-backed LU's mapping.
    #[serde(default)]
    pub(crate) reads_in_place: u64,
    /// Receives of write data straight into a memory-backed LU's mapping.
    #[serde(default)]
    pub(crate) writes_in_place: u64,
}

/// Per-second rates over the last five minutes, oldest first.
#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct History {
    /// Seconds since the Unix epoch at the end of each interval.
    pub(crate) t: Vec<u64>,
    pub(crate) read_bytes_per_sec: Vec<u64>,
    pub(crate) write_bytes_per_sec: Vec<u64>,
    pub(crate) read_iops: Vec<u64>,
    pub(crate) write_iops: Vec<u64>,
}

impl History {
    fn from(samples: &VecDeque<Sample>, now: Sample) -> History {
        let mut h = History::default();
        let mut pts: Vec<Sample> = samples.iter().copied().collect();
        // The current totals end the last interval, so a client polling
        // the page sees what moved a moment ago.
        if pts.last().is_some_and(|l| now.unix_ms > l.unix_ms + 200) {
            pts.push(now);
        }
        for w in pts.windows(2) {
            let ms = w[1].unix_ms.saturating_sub(w[0].unix_ms).max(1);
            let rate = |a: u64, b: u64| b.saturating_sub(a).saturating_mul(1000) / ms;
            h.t.push(w[1].unix_ms / 1000);
            h.read_bytes_per_sec
                .push(rate(w[0].read_bytes, w[1].read_bytes));
            h.write_bytes_per_sec
                .push(rate(w[0].write_bytes, w[1].write_bytes));
            h.read_iops.push(rate(w[0].read_cmds, w[1].read_cmds));
            h.write_iops.push(rate(w[0].write_cmds, w[1].write_cmds));
        }
        let extra = h.t.len().saturating_sub(HISTORY);
        for v in [
            &mut h.t,
            &mut h.read_bytes_per_sec,
            &mut h.write_bytes_per_sec,
            &mut h.read_iops,
            &mut h.write_iops,
        ] {
            v.drain(..extra);
        }
        h
    }
}

impl Source {
    pub(crate) fn snapshot(&self) -> Snapshot {
        let sh = &self.shared;
        let core_of = |r: usize| {
            self.stats
                .reactors
                .get(r)
                .map(|s| s.core.load(Relaxed))
                .unwrap_or(0)
        };
        let luns = sh
            .luns
            .iter()
            .zip(&sh.lun_numbers)
            .map(|(l, &n)| {
                let c = &l.counters;
                LunRow {
                    lun: n,
                    backend: l.backend.describe().to_string(),
                    size_bytes: l.info.num_blocks * u64::from(l.info.block_size),
                    block_size: l.info.block_size,
                    read_only: l.info.read_only,
                    write_cache: l.info.write_cache,
                    thin: l.info.state.thin(),
                    sanitize_percent: l
                        .info
                        .state
                        .sanitize_progress()
                        .map(|p| (f64::from(p) * 1000.0 / 65535.0).round() / 10.0),
                    read_bytes: c.read_bytes.load(Relaxed),
                    write_bytes: c.write_bytes.load(Relaxed),
                    read_cmds: c.read_cmds.load(Relaxed),
                    write_cmds: c.write_cmds.load(Relaxed),
                    errors: c.errors.load(Relaxed),
                    read_latency: Hist::of(&c.read_latency),
                    write_latency: Hist::of(&c.write_latency),
                }
            })
            .collect();
        let now_s = unix_ms() / 1000;
        let sessions: Vec<SessionRow> = sh
            .sessions()
            .iter()
            .map(|s| SessionRow {
                initiator: s.params.initiator_name.clone(),
                alias: s.params.initiator_alias.clone(),
                isid: s.isid_hex(),
                peer: s.peer.to_string(),
                reactor: s.reactor,
                core: core_of(s.reactor),
                header_digest: s.params.header_digest,
                data_digest: s.params.data_digest,
                initiator_max_recv_dsl: s.params.initiator_max_recv_dsl,
                target_max_recv_dsl: s.params.target_max_recv_dsl,
                max_burst_length: s.params.max_burst_length,
                first_burst_length: s.params.first_burst_length,
                initial_r2t: s.params.initial_r2t,
                immediate_data: s.params.immediate_data,
                login_unix: s.login_unix,
                uptime_secs: now_s.saturating_sub(s.login_unix),
                read_bytes: s.read_bytes.load(Relaxed),
                write_bytes: s.write_bytes.load(Relaxed),
                commands: s.commands.load(Relaxed),
            })
            .collect();
        let reactors = self
            .stats
            .reactors
            .iter()
            .enumerate()
            .map(|(i, r)| ReactorRow {
                reactor: i,
                core: r.core.load(Relaxed),
                connections_open: r.connections_open.load(Relaxed),
                connections_total: r.connections_total.load(Relaxed),
                read_ops: r.read_ops.load(Relaxed),
                write_ops: r.write_ops.load(Relaxed),
                read_bytes: r.read_bytes.load(Relaxed),
                write_bytes: r.write_bytes.load(Relaxed),
                buffer_waits: r.buffer_waits.load(Relaxed),
                loops: r.loops.load(Relaxed),
                sleeps: r.sleeps.load(Relaxed),
                busy_polls: r.busy_polls.load(Relaxed),
                idle_polls: r.idle_polls.load(Relaxed),
                spin_window_us: r.spin_window_ns.load(Relaxed) / 1000,
                zero_copy_sends: r.zc_sends.load(Relaxed),
                zero_copy_copied: r.zc_copied.load(Relaxed),
                reads_in_place: r.mapped_reads.load(Relaxed),
                writes_in_place: r.mapped_writes.load(Relaxed),
            })
            .collect();
        let history = {
            let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
            History::from(&h, totals(sh))
        };
        let (pxe_clients, pxe_transfers) = if self.pxe.is_some() {
            pxe_progress(&sessions)
        } else {
            (Vec::new(), Vec::new())
        };
        let dhcp_leases = if self.pxe.is_some() {
            bootlun_pxe::progress::leases()
                .into_iter()
                .map(|l| LeaseRow {
                    client: l.client,
                    addr: l.addr.to_string(),
                    bound: l.bound,
                    expires_in_secs: l.expires_in_secs,
                })
                .collect()
        } else {
            Vec::new()
        };
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            target: self.target_name.clone(),
            portal: self.portal.to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            now_unix_ms: unix_ms(),
            luns,
            sessions,
            reactors,
            history,
            pxe: self.pxe.clone(),
            pxe_clients,
            pxe_transfers,
            dhcp_leases,
        }
    }
}

/// The sidecars' view of booting clients; a client whose address has an
/// iSCSI session has reached the last stage.
fn pxe_progress(sessions: &[SessionRow]) -> (Vec<PxeClientRow>, Vec<PxeTransferRow>) {
    use bootlun_pxe::progress::{snapshot, Stage};
    let (clients, transfers) = snapshot();
    let logged_in = |ip: &std::net::IpAddr| {
        sessions
            .iter()
            .any(|s| s.peer.parse::<SocketAddr>().is_ok_and(|p| p.ip() == *ip))
    };
    let clients = clients
        .into_iter()
        .map(|c| {
            let login = c.ip.as_ref().is_some_and(logged_in);
            let (stage, detail) = if login {
                (Stage::IscsiLogin, "session open".to_string())
            } else {
                (c.stage, c.detail)
            };
            PxeClientRow {
                mac: c.mac,
                ip: c.ip.map(|i| i.to_string()),
                stage: stage.label().to_string(),
                detail,
                updated_unix: c.updated_unix,
            }
        })
        .collect();
    // Finished transfers oldest first, then those under way.
    let transfers = transfers
        .into_iter()
        .map(|t| PxeTransferRow {
            protocol: t.protocol.to_string(),
            peer: t.peer.to_string(),
            file: t.file,
            bytes: t.bytes,
            total: 0,
            in_progress: false,
            status: t.status,
            error: t.error,
            unix: t.unix,
        })
        .chain(
            bootlun_pxe::progress::active()
                .into_iter()
                .map(|a| PxeTransferRow {
                    protocol: a.protocol.to_string(),
                    peer: a.peer.to_string(),
                    file: a.file,
                    bytes: a.sent,
                    total: a.total,
                    in_progress: true,
                    status: 0,
                    error: None,
                    unix: a.started_unix,
                }),
        )
        .collect();
    (clients, transfers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sec: u64, read: u64, cmds: u64) -> Sample {
        Sample {
            unix_ms: sec * 1000,
            read_bytes: read,
            read_cmds: cmds,
            ..Sample::default()
        }
    }

    #[test]
    fn history_is_rates_between_samples_capped_at_five_minutes() {
        let mut q: VecDeque<Sample> = (0..400).map(|s| at(s, s * 1000, s)).collect();
        let h = History::from(&q, at(399, 399_000, 399));
        assert_eq!(h.t.len(), HISTORY);
        assert!(h.read_bytes_per_sec.iter().all(|r| *r == 1000));
        assert!(h.read_iops.iter().all(|r| *r == 1));
        assert_eq!(h.t.last(), Some(&399));
        // The current totals close a last, shorter interval.
        q.clear();
        q.push_back(at(10, 0, 0));
        let h = History::from(&q, at(10, 0, 0));
        assert!(h.t.is_empty());
        let mut now = at(10, 500, 1);
        now.unix_ms += 500;
        let h = History::from(&q, now);
        assert_eq!(h.read_bytes_per_sec, vec![1000]);
        // Totals taken with the last sample add no interval of their own.
        q.push_back(at(11, 100, 0));
        let h = History::from(&q, at(11, 100, 0));
        assert_eq!(h.read_bytes_per_sec, vec![100]);
    }
}
