//! Per-logical-unit state that every I_T nexus shares: SPC-2 and persistent
//! reservations, the software write protect bit, results of copy
//! operations, and what the backend says about provisioning.
//!
//! The data path (READ, WRITE) asks [`LuState::conflict`] on every command;
//! while nothing is reserved that is one relaxed atomic load, so reactors
//! never contend on the lock for ordinary I/O.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bootlun_engine::BlockBackend;

use super::pr::Pr;
use super::sense::{Sense, SenseKey};

/// Unit attention conditions this crate raises (SPC-4 table of ASC/ASCQ).
pub mod ua {
    use super::{Sense, SenseKey};

    const fn ua(asc: u8, ascq: u8) -> Sense {
        Sense::new(SenseKey::UnitAttention, asc, ascq)
    }
    /// POWER ON OCCURRED: a target cold reset.
    pub const POWER_ON: Sense = ua(0x29, 0x01);
    /// BUS DEVICE RESET FUNCTION OCCURRED: LOGICAL UNIT RESET or a
    /// target warm reset.
    pub const RESET: Sense = ua(0x29, 0x03);
    /// MODE PARAMETERS CHANGED (by another I_T nexus).
    pub const MODE_PARAMETERS_CHANGED: Sense = ua(0x2a, 0x01);
    /// RESERVATIONS PREEMPTED.
    pub const RESERVATIONS_PREEMPTED: Sense = ua(0x2a, 0x03);
    /// RESERVATIONS RELEASED.
    pub const RESERVATIONS_RELEASED: Sense = ua(0x2a, 0x04);
    /// REGISTRATIONS PREEMPTED.
    pub const REGISTRATIONS_PREEMPTED: Sense = ua(0x2a, 0x05);
    /// COMMANDS CLEARED BY ANOTHER INITIATOR: CLEAR TASK SET from
    /// another I_T nexus.
    pub const COMMANDS_CLEARED: Sense = ua(0x2f, 0x00);
}

/// Unit attentions kept per I_T nexus; beyond this the oldest go (a
/// nexus that never sends a command must not grow the table).
pub const UA_QUEUE_MAX: usize = 8;

/// Operation codes that neither report nor clear a unit attention (SPC-4
/// 5.14: INQUIRY, REPORT LUNS, REQUEST SENSE).
fn ua_exempt(opcode: u8) -> bool {
    matches!(opcode, 0x12 | 0xa0 | 0x03)
}

/// One I_T nexus as the SCSI layer sees it: an initiator port and a target
/// port. The transport builds it once per session; nothing here knows how
/// the transport names its ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// The initiator port's name, unique among the transport's initiator
    /// ports (for iSCSI: `iqn...,i,0x<ISID>`). Compared exactly.
    pub initiator_port: String,
    /// The initiator port's TransportID (SPC-4 7.6.4), reported by
    /// PERSISTENT RESERVE IN / READ FULL STATUS.
    pub transport_id: Vec<u8>,
    /// RELATIVE TARGET PORT IDENTIFIER of the port the nexus uses.
    pub target_port: u16,
}

/// The result of one EXTENDED COPY, kept for RECEIVE COPY RESULTS from
/// the same I_T nexus (list identifiers are per nexus) while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    /// Initiator port of the nexus that issued the copy.
    pub initiator_port: String,
    pub list_id: u8,
    /// COPY MANAGER STATUS: 0 in progress, 1 done, 2 failed.
    pub status: u8,
    pub segments_processed: u16,
    pub blocks_copied: u64,
}

/// Everything behind the lock.
#[derive(Debug, Default)]
pub(crate) struct Inner {
    /// Holder of an SPC-2 RESERVE(6/10) reservation.
    pub spc2: Option<Nexus>,
    pub pr: Pr,
    /// Results of the latest copy operations, newest last.
    pub copies: VecDeque<CopyResult>,
}

/// Bytes per second a SANITIZE writes by default (`--sanitize-rate`,
/// 64 MiB/s): it runs in the background like a drive's own sanitize and
/// leaves the disk's bandwidth to the other LUNs and sessions.
pub const DEFAULT_SANITIZE_RATE: u64 = 64 << 20;

/// How many copy results RECEIVE COPY RESULTS can still find.
pub const COPY_RESULTS_KEPT: usize = 16;

#[derive(Debug, Default)]
pub struct LuState {
    /// Any SPC-2 or persistent reservation is held.
    reserved: AtomicBool,
    /// SWP of the Control mode page.
    swp: AtomicBool,
    /// The backend gives space back on UNMAP (LBPME).
    thin: bool,
    /// Unmapped blocks read as zeros (LBPRZ).
    lbprz: bool,
    inner: Mutex<Inner>,
    /// Held across the read-modify-write of COMPARE AND WRITE and ORWRITE
    /// so two of them never interleave on this LU.
    rmw: Mutex<()>,
    /// Where PERSISTENT RESERVE OUT with APTPL keeps its state; `None`:
    /// APTPL is not supported (memory and block device backends).
    aptpl_path: Option<PathBuf>,
    /// Some unit attention is queued (fast path for every command).
    ua_pending: AtomicBool,
    /// Pending unit attentions by initiator port, for every I_T nexus
    /// that has sent a command and is still there.
    uas: Mutex<HashMap<String, VecDeque<Sense>>>,
    /// Bumped by every reset and CLEAR TASK SET: a task started under an
    /// older value has been aborted, whichever connection carries it.
    epoch: AtomicU64,
    /// A SANITIZE running in the background (`scsi::sanitize`): bytes to
    /// do in all and bytes done; total 0 = none running.
    sanitize_total: AtomicU64,
    sanitize_done: AtomicU64,
    /// The last SANITIZE failed; commands get SANITIZE COMMAND FAILED
    /// until a SANITIZE succeeds or EXIT FAILURE MODE (SBC-3 4.11.3).
    sanitize_failed: AtomicBool,
    /// Most bytes per second a SANITIZE writes; 0 = no limit.
    sanitize_rate: AtomicU64,
}

impl LuState {
    /// State for a LU on `backend`: provisioning from the backend, and
    /// persistent reservations from the APTPL file beside it, if any.
    pub fn for_backend(backend: &dyn BlockBackend) -> std::sync::Arc<LuState> {
        let aptpl_path = backend.state_file("bootlun-pr");
        let mut inner = Inner::default();
        if let Some(p) = &aptpl_path {
            match std::fs::read_to_string(p) {
                Ok(text) => match Pr::load(&text) {
                    Ok(pr) => inner.pr = pr,
                    Err(e) => {
                        tracing::warn!("{}: ignoring persistent reservations: {e}", p.display())
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("{}: {e}", p.display()),
            }
        }
        let reserved = inner.pr.reservation.is_some();
        std::sync::Arc::new(LuState {
            reserved: AtomicBool::new(reserved),
            swp: AtomicBool::new(false),
            thin: backend.thin(),
            lbprz: backend.discard_zeroes(),
            inner: Mutex::new(inner),
            rmw: Mutex::new(()),
            aptpl_path,
            ua_pending: AtomicBool::new(false),
            uas: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            sanitize_total: AtomicU64::new(0),
            sanitize_done: AtomicU64::new(0),
            sanitize_failed: AtomicBool::new(false),
            sanitize_rate: AtomicU64::new(DEFAULT_SANITIZE_RATE),
        })
    }

    /// State with the given provisioning and no APTPL file (tests).
    pub fn with_provisioning(thin: bool, lbprz: bool) -> LuState {
        LuState {
            thin,
            lbprz,
            ..LuState::default()
        }
    }

    /// Progress of a running SANITIZE in 65536ths (the sense data's
    /// PROGRESS INDICATION), `None` when none is running.
    pub fn sanitize_progress(&self) -> Option<u16> {
        let total = self.sanitize_total.load(Ordering::Acquire);
        if total == 0 {
            return None;
        }
        let done = self.sanitize_done.load(Ordering::Relaxed).min(total);
        Some(((u128::from(done) * 0xFFFF) / u128::from(total)) as u16)
    }

    /// Mark a SANITIZE of `total` bytes as running; false if one already
    /// is.
    pub(crate) fn sanitize_begin(&self, total: u64) -> bool {
        self.sanitize_done.store(0, Ordering::Relaxed);
        self.sanitize_total
            .compare_exchange(0, total.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn sanitize_advance(&self, done: u64) {
        self.sanitize_done.store(done, Ordering::Relaxed);
    }

    /// The running SANITIZE ended; `ok`: it succeeded.
    pub(crate) fn sanitize_end(&self, ok: bool) {
        self.sanitize_failed.store(!ok, Ordering::Relaxed);
        self.sanitize_total.store(0, Ordering::Release);
    }

    pub fn sanitize_failed(&self) -> bool {
        self.sanitize_failed.load(Ordering::Relaxed)
    }

    /// SANITIZE EXIT FAILURE MODE: the LU is usable again.
    pub(crate) fn sanitize_exit_failure(&self) {
        self.sanitize_failed.store(false, Ordering::Relaxed);
    }

    /// Most bytes per second a SANITIZE OVERWRITE writes (0: no limit).
    pub fn sanitize_rate(&self) -> u64 {
        self.sanitize_rate.load(Ordering::Relaxed)
    }

    pub fn set_sanitize_rate(&self, bytes_per_sec: u64) {
        self.sanitize_rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    pub fn swp(&self) -> bool {
        self.swp.load(Ordering::Relaxed)
    }

    pub fn set_swp(&self, on: bool) {
        self.swp.store(on, Ordering::Relaxed);
    }

    pub fn thin(&self) -> bool {
        self.thin
    }

    pub fn lbprz(&self) -> bool {
        self.lbprz
    }

    pub fn aptpl_supported(&self) -> bool {
        self.aptpl_path.is_some()
    }

    pub(crate) fn aptpl_path(&self) -> Option<&std::path::Path> {
        self.aptpl_path.as_deref()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep
        // serving rather than poisoning every later command.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn rmw_lock(&self) -> MutexGuard<'_, ()> {
        self.rmw.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Recompute the "anything reserved" fast-path flag (lock held).
    pub(crate) fn update_reserved(&self, inner: &Inner) {
        let r = inner.spc2.is_some() || inner.pr.reservation.is_some();
        self.reserved.store(r, Ordering::Relaxed);
    }

    /// True when some reservation is held (the fast path of the conflict
    /// check).
    pub fn any_reservation(&self) -> bool {
        self.reserved.load(Ordering::Relaxed)
    }

    fn uas(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Sense>>> {
        self.uas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An I_T nexus sent its first command: from now on it receives the
    /// unit attentions raised for every nexus.
    pub fn nexus_seen(&self, nexus: &Nexus) {
        self.uas().entry(nexus.initiator_port.clone()).or_default();
    }

    /// Queue `sense` for the I_T nexuses in `to` that are still there.
    pub fn raise_ua_for(&self, sense: Sense, to: &[Nexus]) {
        if to.is_empty() {
            return;
        }
        let mut g = self.uas();
        let mut any = false;
        for n in to {
            if let Some(q) = g.get_mut(&n.initiator_port) {
                if !q.contains(&sense) {
                    if q.len() >= UA_QUEUE_MAX {
                        q.pop_front();
                    }
                    q.push_back(sense);
                }
                any = true;
            }
        }
        if any {
            self.ua_pending.store(true, Ordering::Release);
        }
    }

    /// Queue `sense` for every known I_T nexus but `except` (initiator
    /// port). A condition already queued for a nexus is not queued twice.
    pub fn raise_ua(&self, sense: Sense, except: Option<&Nexus>) {
        let mut g = self.uas();
        let mut any = false;
        for (port, q) in g.iter_mut() {
            if except.is_some_and(|n| &n.initiator_port == port) {
                continue;
            }
            if !q.contains(&sense) {
                if q.len() >= UA_QUEUE_MAX {
                    q.pop_front();
                }
                q.push_back(sense);
            }
            any |= !q.is_empty();
        }
        if any {
            self.ua_pending.store(true, Ordering::Release);
        }
    }

    /// The unit attention a command with operation code `opcode` from
    /// `nexus` must end with instead of running, if any; it is taken off
    /// the nexus's queue (SPC-4 5.14).
    pub fn take_ua(&self, nexus: &Nexus, opcode: u8) -> Option<Sense> {
        if ua_exempt(opcode) {
            return None;
        }
        self.take_pending_ua(nexus)
    }

    /// The oldest unit attention of `nexus`, taken off its queue: what
    /// REQUEST SENSE reports as its sense data (SPC-4 5.14).
    pub fn take_pending_ua(&self, nexus: &Nexus) -> Option<Sense> {
        if !self.ua_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut g = self.uas();
        let s = g.get_mut(&nexus.initiator_port)?.pop_front();
        if g.values().all(|q| q.is_empty()) {
            self.ua_pending.store(false, Ordering::Release);
        }
        s
    }

    /// The current task epoch (see [`LuState::abort_all`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Every task of the LU, on every I_T nexus, is aborted: tasks that
    /// started before this call see a newer epoch and end without status.
    pub fn abort_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The I_T nexus holding an SPC-2 reservation, if one is held.
    pub fn spc2_holder(&self) -> Option<Nexus> {
        if !self.any_reservation() {
            return None;
        }
        self.lock().spc2.clone()
    }

    /// The I_T nexus is gone (logout, connection loss): its SPC-2
    /// reservation is released. Persistent reservations survive, as SPC-4
    /// requires.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        self.uas().remove(&nexus.initiator_port);
        self.drop_copies(nexus);
        if !self.any_reservation() {
            return;
        }
        let mut g = self.lock();
        if g.spc2.as_ref() == Some(nexus) {
            g.spc2 = None;
        }
        self.update_reserved(&g);
    }

    /// Forget the copy results of a nexus that is gone.
    fn drop_copies(&self, nexus: &Nexus) {
        self.lock()
            .copies
            .retain(|c| c.initiator_port != nexus.initiator_port);
    }

    /// LOGICAL UNIT RESET or a target reset: every task is aborted, SPC-2
    /// reservations are released; persistent reservations and
    /// registrations are kept; the software write protect bit returns to
    /// its default. Every I_T nexus, the one that asked included, gets
    /// the unit attention `why` ([`ua::RESET`] or [`ua::POWER_ON`]).
    pub fn reset_with(&self, why: Sense) {
        self.abort_all();
        let mut g = self.lock();
        g.spc2 = None;
        self.update_reserved(&g);
        drop(g);
        self.set_swp(false);
        self.raise_ua(why, None);
    }

    /// [`LuState::reset_with`] for LOGICAL UNIT RESET.
    pub fn reset(&self) {
        self.reset_with(ua::RESET);
    }

    /// Record a copy result, dropping the oldest beyond
    /// [`COPY_RESULTS_KEPT`] and any older result with the same list id.
    pub fn record_copy(&self, r: CopyResult) {
        let mut g = self.lock();
        g.copies
            .retain(|c| c.list_id != r.list_id || c.initiator_port != r.initiator_port);
        g.copies.push_back(r);
        while g.copies.len() > COPY_RESULTS_KEPT {
            g.copies.pop_front();
        }
    }

    pub fn copy_result(&self, nexus: &Nexus, list_id: u8) -> Option<CopyResult> {
        self.lock()
            .copies
            .iter()
            .rev()
            .find(|c| c.list_id == list_id && c.initiator_port == nexus.initiator_port)
            .cloned()
    }
}

#[cfg(test)]
mod ua_tests {
    use super::*;

    fn nexus(port: &str) -> Nexus {
        Nexus {
            initiator_port: port.to_string(),
            ..Nexus::default()
        }
    }

    #[test]
    fn reset_raises_a_unit_attention_on_every_nexus_once() {
        let s = LuState::default();
        let (a, b, late) = (nexus("a"), nexus("b"), nexus("late"));
        s.nexus_seen(&a);
        s.nexus_seen(&b);
        assert_eq!(s.take_ua(&a, 0x00), None);
        let e = s.epoch();
        s.reset();
        assert_ne!(s.epoch(), e, "tasks of every nexus are aborted");
        // INQUIRY, REPORT LUNS and REQUEST SENSE neither see nor clear it.
        for op in [0x12, 0xa0, 0x03] {
            assert_eq!(s.take_ua(&a, op), None);
        }
        assert_eq!(s.take_ua(&a, 0x00), Some(ua::RESET));
        assert_eq!(s.take_ua(&a, 0x00), None, "reported once");
        assert_eq!(s.take_ua(&b, 0x28), Some(ua::RESET));
        assert_eq!(s.take_ua(&late, 0x00), None, "unknown nexus");
        // REQUEST SENSE takes it as its data.
        s.reset();
        assert_eq!(s.take_pending_ua(&a), Some(ua::RESET));
        assert_eq!(s.take_ua(&a, 0x00), None);
        assert_eq!(s.take_ua(&b, 0x00), Some(ua::RESET));
        assert!(!s.ua_pending.load(Ordering::Relaxed));
    }

    #[test]
    fn raise_skips_the_sender_dedups_and_is_bounded() {
        let s = LuState::default();
        let (a, b) = (nexus("a"), nexus("b"));
        s.nexus_seen(&a);
        s.nexus_seen(&b);
        s.raise_ua(ua::COMMANDS_CLEARED, Some(&a));
        s.raise_ua(ua::COMMANDS_CLEARED, Some(&a));
        assert_eq!(s.take_ua(&a, 0x00), None);
        assert_eq!(s.take_ua(&b, 0x00), Some(ua::COMMANDS_CLEARED));
        assert_eq!(s.take_ua(&b, 0x00), None);
        for i in 0..3 * UA_QUEUE_MAX as u8 {
            s.raise_ua(Sense::new(SenseKey::UnitAttention, 0x2a, i), None);
        }
        let mut n = 0;
        while s.take_ua(&a, 0x00).is_some() {
            n += 1;
        }
        assert_eq!(n, UA_QUEUE_MAX);
        // A nexus that is gone keeps nothing.
        s.nexus_lost(&b);
        assert!(!s.uas().contains_key("b"));
    }
}
