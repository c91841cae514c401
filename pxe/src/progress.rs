//! How far each network-booting client got, for the status page: the
//! sidecars report DHCP offers and files served; the stage of a client
//! only moves forward until its next DHCP offer (a new boot). Shared state
//! behind one mutex: PXE traffic is a handful of requests per boot.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Clients remembered (the oldest is forgotten first).
const MAX_CLIENTS: usize = 64;
/// Recent transfers remembered.
const MAX_TRANSFERS: usize = 32;

/// Boot stages in the order a client reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// DHCP offered an address and a boot file.
    DhcpOffer,
    /// The firmware fetched the iPXE binary.
    Ipxe,
    /// iPXE fetched its script or the boot menu.
    Menu,
    /// The kernel was fetched.
    Kernel,
    /// An initrd was fetched.
    Initrd,
    /// The client logged in to the iSCSI target (set by the target side).
    IscsiLogin,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::DhcpOffer => "DHCP offer",
            Stage::Ipxe => "iPXE",
            Stage::Menu => "menu",
            Stage::Kernel => "kernel",
            Stage::Initrd => "initrd",
            Stage::IscsiLogin => "iSCSI login",
        }
    }
}

/// One client's progress.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Client {
    /// `aa:bb:…`, when DHCP saw it.
    pub mac: Option<String>,
    pub ip: Option<IpAddr>,
    pub stage: Stage,
    /// What moved it there (file name or DHCP detail).
    pub detail: String,
    pub updated_unix: u64,
}

/// One file served.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transfer {
    /// `tftp` or `http`.
    pub protocol: &'static str,
    pub peer: IpAddr,
    pub file: String,
    pub bytes: u64,
    /// HTTP status, or 200 for a completed TFTP transfer (0: see `error`).
    pub status: u16,
    /// Why it failed, when no HTTP status says it.
    pub error: Option<String>,
    pub unix: u64,
}

/// One DHCP lease (server mode).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseRow {
    /// Hardware address or client identifier, as hex bytes.
    pub client: String,
    pub addr: std::net::Ipv4Addr,
    /// ACKed (else only offered).
    pub bound: bool,
    /// `None`: an infinite lease.
    pub expires_in_secs: Option<u64>,
}

/// A file being sent right now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Active {
    /// `tftp` or `http`.
    pub protocol: &'static str,
    pub peer: IpAddr,
    pub file: String,
    /// Bytes the client has acknowledged (TFTP) or the socket took (HTTP).
    pub sent: u64,
    /// Bytes to send in all.
    pub total: u64,
    pub started_unix: u64,
}

struct State {
    clients: VecDeque<Client>,
    transfers: VecDeque<Transfer>,
    leases: Vec<LeaseRow>,
    /// Transfers under way, by the id their [`ActiveTransfer`] holds.
    active: Vec<(u64, Active)>,
    next_active: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    clients: VecDeque::new(),
    transfers: VecDeque::new(),
    leases: Vec::new(),
    active: Vec::new(),
    next_active: 0,
});

/// Transfers under way listed at most (a flood of requests shows the first).
const MAX_ACTIVE: usize = 64;

/// A transfer in progress as the status page shows it; it leaves the list
/// when dropped, however the transfer ended.
#[derive(Debug)]
pub struct ActiveTransfer(Option<u64>, u64);

impl ActiveTransfer {
    /// Start listing a transfer of `total` bytes of `file` to `peer`.
    pub fn begin(protocol: &'static str, peer: IpAddr, file: &str, total: u64) -> ActiveTransfer {
        let mut st = lock();
        if st.active.len() >= MAX_ACTIVE {
            return ActiveTransfer(None, total);
        }
        let id = st.next_active;
        st.next_active += 1;
        st.active.push((
            id,
            Active {
                protocol,
                peer,
                file: file.to_string(),
                sent: 0,
                total,
                started_unix: now(),
            },
        ));
        ActiveTransfer(Some(id), total)
    }

    /// The size given to [`ActiveTransfer::begin`].
    pub fn total(&self) -> u64 {
        self.1
    }

    /// `sent` bytes of the file have gone out so far.
    pub fn set_sent(&self, sent: u64) {
        let Some(id) = self.0 else { return };
        if let Some((_, a)) = lock().active.iter_mut().find(|(i, _)| *i == id) {
            a.sent = sent.min(a.total);
        }
    }
}

impl ActiveTransfer {
    fn take(&mut self) -> Option<Active> {
        let id = self.0.take()?;
        let mut st = lock();
        let at = st.active.iter().position(|(i, _)| *i == id)?;
        Some(st.active.remove(at).1)
    }

    /// It ended as it should; the caller reports it with [`file_served`].
    pub fn done(&mut self) {
        self.take();
    }

    /// It ended without the client asking for more, which is no failure
    /// (a TFTP `tsize` probe).
    pub fn cancel(&mut self) {
        self.take();
    }

    /// It failed: listed among recent transfers with `reason`.
    pub fn fail(&mut self, reason: &str) {
        if let Some(a) = self.take() {
            file_failed(a.protocol, a.peer, &a.file, a.sent, reason);
        }
    }
}

impl Drop for ActiveTransfer {
    /// Dropped while under way: the connection or transfer went away.
    fn drop(&mut self) {
        if let Some(a) = self.take() {
            let reason = format!("stopped after {} of {} bytes", a.sent, a.total);
            file_failed(a.protocol, a.peer, &a.file, a.sent, &reason);
        }
    }
}

/// Transfers under way, oldest first.
pub fn active() -> Vec<Active> {
    lock().active.iter().map(|(_, a)| a.clone()).collect()
}

/// The DHCP server's live leases (replaces the previous list).
pub fn set_leases(rows: Vec<LeaseRow>) {
    lock().leases = rows;
}

/// The DHCP server's live leases as last reported.
pub fn leases() -> Vec<LeaseRow> {
    lock().leases.clone()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The stage a file name stands for.
pub fn stage_of(file: &str) -> Option<Stage> {
    let base = file.rsplit('/').next().unwrap_or(file).to_ascii_lowercase();
    if base == "boot.ipxe" || base == "menu.ipxe" || file.ends_with("pxelinux.cfg/default") {
        return Some(Stage::Menu);
    }
    let ext_ipxe = [".efi", ".kpxe", ".pxe", ".lkrn", ".0"];
    if base.contains("initrd") || base.contains("initramfs") {
        return Some(Stage::Initrd);
    }
    if base.starts_with("vmlinuz")
        || base.starts_with("vmlinux")
        || base.starts_with("bzimage")
        || base.contains("kernel")
        || base == "linux"
    {
        return Some(Stage::Kernel);
    }
    if ext_ipxe.iter().any(|e| base.ends_with(e)) {
        return Some(Stage::Ipxe);
    }
    None
}

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn advance(st: &mut State, find: impl Fn(&Client) -> bool, new: Client, reset: bool) {
    let who = |c: &Client| match (&c.mac, &c.ip) {
        (Some(m), Some(ip)) => format!("{m} ({ip})"),
        (Some(m), None) => m.clone(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => "?".into(),
    };
    if let Some(c) = st.clients.iter_mut().find(|c| find(c)) {
        if reset || new.stage > c.stage {
            if new.stage > c.stage {
                tracing::info!(
                    "pxe: {} reached {} ({})",
                    who(c),
                    new.stage.label(),
                    new.detail
                );
            }
            c.stage = new.stage;
            c.detail = new.detail;
        }
        c.mac = new.mac.or(c.mac.take());
        c.ip = new.ip.or(c.ip);
        c.updated_unix = new.updated_unix;
        return;
    }
    if st.clients.len() >= MAX_CLIENTS {
        st.clients.pop_front();
    }
    tracing::info!(
        "pxe: {} reached {} ({})",
        who(&new),
        new.stage.label(),
        new.detail
    );
    st.clients.push_back(new);
}

/// Running totals since start, for `/metrics` (counters never go down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub dhcp_offers: u64,
    pub tftp_ok: u64,
    pub tftp_failed: u64,
    pub tftp_bytes: u64,
    pub http_ok: u64,
    pub http_failed: u64,
    pub http_bytes: u64,
}

static DHCP_OFFERS: AtomicU64 = AtomicU64::new(0);
static TFTP_OK: AtomicU64 = AtomicU64::new(0);
static TFTP_FAILED: AtomicU64 = AtomicU64::new(0);
static TFTP_BYTES: AtomicU64 = AtomicU64::new(0);
static HTTP_OK: AtomicU64 = AtomicU64::new(0);
static HTTP_FAILED: AtomicU64 = AtomicU64::new(0);
static HTTP_BYTES: AtomicU64 = AtomicU64::new(0);

/// DHCP offers made and files served (or refused) since start.
pub fn totals() -> Totals {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Totals {
        dhcp_offers: l(&DHCP_OFFERS),
        tftp_ok: l(&TFTP_OK),
        tftp_failed: l(&TFTP_FAILED),
        tftp_bytes: l(&TFTP_BYTES),
        http_ok: l(&HTTP_OK),
        http_failed: l(&HTTP_FAILED),
        http_bytes: l(&HTTP_BYTES),
    }
}

/// DHCP offered `ip` (None: proxyDHCP, no address) to `mac`.
pub fn dhcp_offer(mac: &[u8], ip: Option<IpAddr>, detail: &str) {
    DHCP_OFFERS.fetch_add(1, Ordering::Relaxed);
    let mac = mac_text(mac);
    let new = Client {
        mac: Some(mac.clone()),
        ip,
        stage: Stage::DhcpOffer,
        detail: detail.to_string(),
        updated_unix: now(),
    };
    let mut st = lock();
    // The same machine, or another one given the address it had.
    st.clients
        .retain(|c| c.mac.as_deref() == Some(mac.as_str()) || ip.is_none() || c.ip != ip);
    advance(
        &mut st,
        |c| c.mac.as_deref() == Some(mac.as_str()),
        new,
        true,
    );
}

/// `file` was not (completely) served to `peer`, for `reason`.
pub fn file_failed(protocol: &'static str, peer: IpAddr, file: &str, bytes: u64, reason: &str) {
    record(protocol, peer, file, bytes, 0, Some(reason));
}

/// `file` was served to `peer` (status 200 for a completed transfer).
pub fn file_served(protocol: &'static str, peer: IpAddr, file: &str, bytes: u64, status: u16) {
    record(protocol, peer, file, bytes, status, None);
}

fn record(
    protocol: &'static str,
    peer: IpAddr,
    file: &str,
    bytes: u64,
    status: u16,
    error: Option<&str>,
) {
    let ok = (200..300).contains(&status);
    let (done, failed, sent) = if protocol == "tftp" {
        (&TFTP_OK, &TFTP_FAILED, &TFTP_BYTES)
    } else {
        (&HTTP_OK, &HTTP_FAILED, &HTTP_BYTES)
    };
    if ok { done } else { failed }.fetch_add(1, Ordering::Relaxed);
    sent.fetch_add(bytes, Ordering::Relaxed);
    let mut st = lock();
    if st.transfers.len() >= MAX_TRANSFERS {
        st.transfers.pop_front();
    }
    st.transfers.push_back(Transfer {
        protocol,
        peer,
        file: file.to_string(),
        bytes,
        status,
        error: error.map(str::to_string),
        unix: now(),
    });
    if !(200..300).contains(&status) {
        return;
    }
    if let Some(stage) = stage_of(file) {
        let new = Client {
            mac: None,
            ip: Some(peer),
            stage,
            detail: format!("{protocol} {file}"),
            updated_unix: now(),
        };
        advance(&mut st, |c| c.ip == Some(peer), new, false);
    }
}

/// Clients (oldest first) and recent transfers (oldest first).
pub fn snapshot() -> (Vec<Client>, Vec<Transfer>) {
    let st = lock();
    (
        st.clients.iter().cloned().collect(),
        st.transfers.iter().cloned().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_active_transfer_is_listed_until_dropped() {
        let peer: IpAddr = "127.0.0.9".parse().unwrap();
        let mine = |v: Vec<Active>| v.into_iter().find(|a| a.peer == peer);
        let t = ActiveTransfer::begin("tftp", peer, "/vmlinuz", 1000);
        assert_eq!(mine(active()).map(|a| (a.sent, a.total)), Some((0, 1000)));
        t.set_sent(400);
        assert_eq!(mine(active()).map(|a| a.sent), Some(400));
        t.set_sent(5000);
        assert_eq!(mine(active()).map(|a| a.sent), Some(1000));
        drop(t);
        assert!(mine(active()).is_none());
        let (_, recent) = snapshot();
        let last = recent.iter().rev().find(|r| r.peer == peer).unwrap();
        assert_eq!(last.status, 0);
        assert_eq!(
            last.error.as_deref(),
            Some("stopped after 1000 of 1000 bytes")
        );

        let mut t = ActiveTransfer::begin("tftp", peer, "/probe", 10);
        t.cancel();
        drop(t);
        let (_, again) = snapshot();
        assert_eq!(again.iter().filter(|r| r.peer == peer).count(), 1);
    }

    #[test]
    fn file_names_map_to_stages() {
        assert_eq!(stage_of("snponly.efi"), Some(Stage::Ipxe));
        assert_eq!(stage_of("undionly.kpxe"), Some(Stage::Ipxe));
        assert_eq!(stage_of("/boot.ipxe"), Some(Stage::Menu));
        assert_eq!(stage_of("/vmlinuz-6.1.0-13-amd64"), Some(Stage::Kernel));
        assert_eq!(stage_of("/bootlun-kernel.bin"), Some(Stage::Kernel));
        assert_eq!(stage_of("/initrd.img-6.1.0-13-amd64"), Some(Stage::Initrd));
        assert_eq!(
            stage_of("/EFI/fedora/initramfs-6.5.img"),
            Some(Stage::Initrd)
        );
        assert_eq!(stage_of("/favicon.ico"), None);
    }

    #[test]
    fn a_client_moves_forward_until_its_next_offer() {
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        let mac = [2, 0, 0, 0, 0x77, 1];
        dhcp_offer(&mac, Some(ip), "test");
        file_served("tftp", ip, "snponly.efi", 100, 200);
        file_served("http", ip, "/vmlinuz-6", 100, 200);
        // Out of order or failed requests do not move it back.
        file_served("http", ip, "/boot.ipxe", 10, 200);
        file_served("http", ip, "/initrd.img-6", 0, 404);
        let (clients, transfers) = snapshot();
        let c = clients.iter().find(|c| c.ip == Some(ip)).unwrap();
        assert_eq!(c.stage, Stage::Kernel);
        assert_eq!(c.mac.as_deref(), Some("02:00:00:00:77:01"));
        assert!(transfers.iter().any(|t| t.peer == ip && t.status == 404));
        let t = totals();
        assert!(t.dhcp_offers >= 1 && t.tftp_ok >= 1 && t.http_ok >= 2 && t.http_failed >= 1);
        assert!(t.tftp_bytes >= 100 && t.http_bytes >= 110);
        dhcp_offer(&mac, Some(ip), "again");
        let (clients, _) = snapshot();
        let c = clients.iter().find(|c| c.ip == Some(ip)).unwrap();
        assert_eq!(c.stage, Stage::DhcpOffer);
    }
}
