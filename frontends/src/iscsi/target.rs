//! What every connection of the target shares: target name, LUNs,
//! negotiation limits and the table of live sessions.

use bootlun_engine::BlockBackend;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

use super::negotiate::{Limits, SessionParams};
use crate::scsi::LuInfo;

/// One exported logical unit: the backend and what SCSI reports about it.
pub struct Lun {
    pub backend: Arc<dyn BlockBackend>,
    pub info: LuInfo,
    /// What its commands moved, for the status page and `/metrics`.
    pub counters: LunCounters,
}

/// Per-LUN counters, bumped where commands complete (relaxed atomics:
/// statistics, not synchronisation; no lock and no allocation).
#[derive(Debug, Default)]
pub struct LunCounters {
    /// Bytes sent to initiators by READ commands.
    pub read_bytes: AtomicU64,
    /// Bytes written to the medium by WRITE commands.
    pub write_bytes: AtomicU64,
    /// READ commands that completed with data.
    pub read_cmds: AtomicU64,
    /// WRITE commands that completed GOOD.
    pub write_cmds: AtomicU64,
    /// Commands of any kind that ended with CHECK CONDITION.
    pub errors: AtomicU64,
    /// Time from a READ's arrival to its status being queued.
    pub read_latency: Latency,
    /// Time from a WRITE's arrival to its status being queued.
    pub write_latency: Latency,
}

/// Upper bounds of the latency buckets, in microseconds (a last bucket
/// takes everything slower).
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// A latency histogram of relaxed counters (not cumulative per bucket;
/// the exporter sums them).
#[derive(Debug, Default)]
pub struct Latency {
    pub buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    pub sum_ns: AtomicU64,
    pub count: AtomicU64,
}

impl Latency {
    pub fn record(&self, d: std::time::Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = LATENCY_BOUNDS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A logged-in normal session as the status page shows it: fixed at login,
/// plus counters its connection bumps (relaxed) as commands complete.
#[derive(Debug)]
pub struct SessionInfo {
    pub conn_id: u64,
    pub isid: [u8; 6],
    pub peer: SocketAddr,
    /// Reactor (index into the engine's `Stats`) serving the connection.
    pub reactor: usize,
    /// What the login negotiated (initiator name, digests, sizes).
    pub params: SessionParams,
    /// Seconds since the Unix epoch at login.
    pub login_unix: u64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub commands: AtomicU64,
}

impl SessionInfo {
    pub fn new(
        conn_id: u64,
        isid: [u8; 6],
        peer: SocketAddr,
        reactor: usize,
        params: SessionParams,
    ) -> SessionInfo {
        let login_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        SessionInfo {
            conn_id,
            isid,
            peer,
            reactor,
            params,
            login_unix,
            read_bytes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            commands: AtomicU64::new(0),
        }
    }

    /// The ISID as 12 hex digits.
    pub fn isid_hex(&self) -> String {
        self.isid.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Lun {
    /// Describe `backend` for the SCSI layer. The identifier is derived
    /// from the backend's identity (its canonical path), so it stays the
    /// same across restarts.
    pub fn new(backend: Arc<dyn BlockBackend>, target_name: &str, max_transfer_bytes: u32) -> Lun {
        let mut h = Sha256::new();
        h.update(target_name.as_bytes());
        h.update([0]);
        h.update(backend.identity().as_bytes());
        let d = h.finalize();
        let mut ident = [0u8; 16];
        ident.copy_from_slice(&d[..16]);
        let bs = backend.block_size();
        let info = LuInfo {
            block_size: bs,
            num_blocks: backend.size_bytes() / bs as u64,
            read_only: backend.read_only(),
            write_cache: true,
            ident,
            vendor: "BOOTLUN",
            product: "bootlun disk",
            revision: "0001",
            max_transfer_blocks: max_transfer_bytes / bs,
            optimal_transfer_blocks: (128 * 1024) / bs,
            rotational: backend.rotational(),
            state: crate::scsi::LuState::for_backend(&*backend),
        };
        Lun {
            backend,
            info,
            counters: LunCounters::default(),
        }
    }
}

/// State shared by every connection of the target.
pub struct TargetShared {
    pub target_name: String,
    pub luns: Vec<Lun>,
    pub lun_numbers: Vec<u64>,
    pub limits: Limits,
    /// Commands one connection may have outstanding (CmdSN window).
    pub queue_depth: u32,
    /// Advertised in SendTargets; empty = the address the initiator used.
    pub portals: Vec<String>,
    /// A connection that has not logged in after this long is closed.
    pub login_timeout_secs: u64,
    /// An idle connection gets a NOP-In asking for an answer after this
    /// many seconds (0: never).
    pub nop_interval_secs: u64,
    /// A connection from which nothing arrives this many seconds after
    /// such a NOP-In is closed.
    pub nop_timeout_secs: u64,
    /// Normal sessions the target holds at most; logins beyond are
    /// refused with "out of resources".
    pub max_sessions: usize,
    next_tsih: AtomicU16,
    /// Logged-in normal sessions by (InitiatorName, ISID), for session
    /// reinstatement (RFC 7143 6.3.5).
    sessions: Mutex<HashMap<(String, [u8; 6]), SessionEntry>>,
    next_conn_id: AtomicU64,
}

/// Answer of [`TargetShared::claim_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionClaim {
    /// The caller now holds the session.
    Claimed,
    /// An older connection holds it and is being closed; try again soon.
    Reinstating,
    /// A new session, and `max_sessions` are held already.
    Full,
}

/// The connection that holds a session.
struct SessionEntry {
    conn_id: u64,
    /// What the status page shows of it.
    info: Arc<SessionInfo>,
    /// Its socket. Valid while the entry exists: a connection removes its
    /// entry before its socket can be closed.
    fd: RawFd,
}

impl TargetShared {
    pub fn new(target_name: String, luns: Vec<Lun>, limits: Limits, queue_depth: u32) -> Self {
        let lun_numbers = (0..luns.len() as u64).collect();
        TargetShared {
            target_name,
            luns,
            lun_numbers,
            limits,
            queue_depth,
            portals: Vec::new(),
            login_timeout_secs: 30,
            nop_interval_secs: 5,
            nop_timeout_secs: 15,
            max_sessions: 64,
            next_tsih: AtomicU16::new(1),
            sessions: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
        }
    }

    /// A unique id for a new connection.
    pub fn conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Connection `conn_id` (socket `fd`) wants the session of
    /// `initiator` + `isid`. When another connection still holds it, that
    /// connection is shut down (it stops taking commands, drains its I/O
    /// and then releases the session) and the caller must retry.
    pub fn claim_session(&self, info: &Arc<SessionInfo>, fd: RawFd) -> SessionClaim {
        let (initiator, isid, conn_id) = (&info.params.initiator_name, info.isid, info.conn_id);
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let key = (initiator.to_string(), isid);
        match s.get(&key) {
            Some(o) if o.conn_id != conn_id => {
                // SAFETY: the holder has not closed its socket yet (it
                // removes its entry under this lock before that).
                unsafe { libc::shutdown(o.fd, libc::SHUT_RDWR) };
                SessionClaim::Reinstating
            }
            None if s.len() >= self.max_sessions => SessionClaim::Full,
            _ => {
                s.insert(
                    key,
                    SessionEntry {
                        conn_id,
                        info: info.clone(),
                        fd,
                    },
                );
                SessionClaim::Claimed
            }
        }
    }

    /// TARGET COLD RESET from connection `conn_id`: every other session's
    /// connection is shut down (RFC 7143 11.5.1); each drains and
    /// releases its session as on any connection loss.
    pub fn shutdown_other_sessions(&self, conn_id: u64) {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for e in s.values().filter(|e| e.conn_id != conn_id) {
            // SAFETY: as in `claim_session`: the holder removes its entry
            // under this lock before its socket can be closed.
            unsafe { libc::shutdown(e.fd, libc::SHUT_RDWR) };
        }
    }

    /// The connection of the session whose SCSI initiator port is `port`
    /// (`name,i,0x<ISID>`, as `Conn` builds it) has been closed by the
    /// initiator, though its reactor may not have seen it yet. True only
    /// when that is certain (the socket reports hang-up).
    pub fn peer_closed(&self, port: &str) -> bool {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = s.iter().find_map(|((name, isid), e)| {
            let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
            let p = format!("{},i,0x{hex}", name.to_ascii_lowercase());
            (p == port).then_some(e)
        }) else {
            return false;
        };
        let mut pfd = libc::pollfd {
            fd: e.fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call;
        // the socket stays open while its entry exists (see SessionEntry),
        // and the lock is held.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 1 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Connection `conn_id` is gone (all its I/O finished): release its
    /// session, if it holds it.
    pub fn unregister_session(&self, initiator: &str, isid: [u8; 6], conn_id: u64) {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let key = (initiator.to_string(), isid);
        if s.get(&key).is_some_and(|e| e.conn_id == conn_id) {
            s.remove(&key);
        }
    }

    /// The logged-in normal sessions, oldest first (a copy of the table's
    /// handles: the lock is held only to clone them).
    pub fn sessions(&self) -> Vec<Arc<SessionInfo>> {
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Arc<SessionInfo>> = s.values().map(|e| e.info.clone()).collect();
        drop(s);
        v.sort_by_key(|i| i.conn_id);
        v
    }

    /// A fresh, non-zero TSIH.
    pub fn alloc_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }
}
