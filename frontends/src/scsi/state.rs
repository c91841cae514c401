//! Per-logical-unit state that every I_T nexus shares: SPC-2 and persistent
//! reservations, the software write protect bit, results of copy
//! operations, and what the backend says about provisioning.
//!
//! The data path (READ, WRITE) asks [`LuState::conflict`] on every command;
//! while nothing is reserved that is one relaxed atomic load, so reactors
//! never contend on the lock for ordinary I/O.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bootlun_engine::BlockBackend;

use super::pr::Pr;

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

    /// The I_T nexus is gone (logout, connection loss): its SPC-2
    /// reservation is released. Persistent reservations survive, as SPC-4
    /// requires.
    pub fn nexus_lost(&self, nexus: &Nexus) {
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

    /// LOGICAL UNIT RESET or a target reset: SPC-2 reservations are
    /// released; persistent reservations and registrations are kept; the
    /// software write protect bit returns to its default.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.spc2 = None;
        self.update_reserved(&g);
        drop(g);
        self.set_swp(false);
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
