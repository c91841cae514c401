//! DHCP server for network-booting the target's own OS (RFC 2131/2132,
//! RFC 4578 client architecture, PXE and iPXE conventions).
//!
//! Two modes answer on one interface only:
//!
//! * [`DhcpMode::Server`]: a small authoritative server on port 67 with a
//!   pool (by default exactly one address, the one right after the
//!   server's), static leases by MAC, and boot information chosen from the
//!   client's firmware (BIOS PXE, UEFI PXE, iPXE).
//! * [`DhcpMode::Proxy`]: a ProxyDHCP server as described by the PXE
//!   specification: it listens on ports 67 and 4011, answers only PXE
//!   clients, and never hands out an address, only boot information.
//!
//! Requests are parsed by the small, bounds-checked parser in this module
//! (the decoder of `dhcproto` has debug assertions and unchecked arithmetic
//! that wire input can reach, so hostile packets never go near it); replies
//! are built and encoded with `dhcproto`. [`handle_packet`] is a pure
//! function of the lease table, the configuration and the packet bytes, so
//! nearly all behaviour is testable without sockets.
//!
//! Reply addressing follows RFC 2131 section 4.1: to the relay (`giaddr`)
//! on port 67 when there is one, NAKs broadcast, to `ciaddr` when the
//! client already has an address, broadcast when the client set the
//! broadcast flag, otherwise unicast to the new address after putting it
//! in the interface's ARP table (SIOCSARP), or broadcast if that fails.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dhcproto::v4::{
    DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Encodable, Encoder};

/// Port DHCP servers listen on.
pub const SERVER_PORT: u16 = 67;
/// Port DHCP clients listen on.
pub const CLIENT_PORT: u16 = 68;
/// Port of the PXE boot server / ProxyDHCP requests.
pub const PXE_PORT: u16 = 4011;

/// How long an offered address is held for the client it was offered to.
const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long an address a client declined stays out of the pool.
const DECLINE_HOLD: Duration = Duration::from_secs(600);
/// Upper bound of pool addresses scanned for a free one.
const MAX_POOL_SCAN: u32 = 65_536;
/// Minimum BOOTP message size (RFC 1542): replies are padded to it.
const MIN_REPLY_LEN: usize = 300;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header length, magic cookie excluded.
const HEADER_LEN: usize = 236;

/// What the DHCP sidecar does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    /// Hand out addresses from the pool and boot information.
    Server,
    /// ProxyDHCP: boot information only, to PXE clients only.
    Proxy,
    /// Not running.
    Off,
}

/// Boot files advertised to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// First-stage file for BIOS PXE ROMs, fetched over TFTP
    /// (e.g. `undionly.kpxe`).
    pub bios_file: String,
    /// First-stage file for x86-64 UEFI PXE firmware, fetched over TFTP
    /// (e.g. `snponly.efi`).
    pub efi_file: String,
    /// First-stage file for ARM64 UEFI firmware; empty when there is none,
    /// and then ARM64 clients get no offer (an x86 binary cannot boot them).
    pub arm64_file: String,
    /// Where UEFI HTTP boot clients fetch the first stage: this plus the
    /// file name (e.g. `http://SERVER/ipxe/`).
    pub http_base: String,
    /// Script URL handed to iPXE once it runs (e.g.
    /// `http://SERVER/boot.ipxe`).
    pub ipxe_script_url: String,
    /// Option 17 for iBFT/sanboot setups: `iscsi:SERVER:::LUN:IQN`.
    pub root_path: Option<String>,
    /// Option 203: the iSCSI initiator IQN iPXE should use.
    pub initiator_iqn: Option<String>,
}

impl BootFiles {
    /// The usual file names, with the script served over HTTP by `server`.
    pub fn defaults_for(server: Ipv4Addr) -> BootFiles {
        BootFiles {
            bios_file: "undionly.kpxe".into(),
            efi_file: "snponly.efi".into(),
            arm64_file: String::new(),
            http_base: format!("http://{server}/ipxe/"),
            ipxe_script_url: format!("http://{server}/boot.ipxe"),
            root_path: None,
            initiator_iqn: None,
        }
    }
}

/// Configuration of the DHCP sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The only interface the server listens and answers on.
    pub interface: String,
    /// This machine's address on `interface`: server identifier,
    /// next-server and router.
    pub server_ip: Ipv4Addr,
    /// Netmask of `interface`'s subnet.
    pub netmask: Ipv4Addr,
    /// Server, proxy or off.
    pub mode: DhcpMode,
    /// First and last pool address, inclusive.
    pub pool: (Ipv4Addr, Ipv4Addr),
    /// Fixed addresses by MAC; they may lie outside the pool but must be on
    /// the subnet.
    pub static_leases: Vec<([u8; 6], Ipv4Addr)>,
    /// Lease time in seconds; `None` is an infinite lease.
    pub lease_secs: Option<u32>,
    /// What to boot.
    pub boot: BootFiles,
}

impl DhcpConfig {
    /// A server-mode configuration whose pool is exactly the one address
    /// after `server_ip`, with infinite leases.
    pub fn new(interface: &str, server_ip: Ipv4Addr, netmask: Ipv4Addr, boot: BootFiles) -> Self {
        let next = Ipv4Addr::from(u32::from(server_ip).wrapping_add(1));
        DhcpConfig {
            interface: interface.to_string(),
            server_ip,
            netmask,
            mode: DhcpMode::Server,
            pool: (next, next),
            static_leases: Vec::new(),
            lease_secs: None,
            boot,
        }
    }

    fn net(&self) -> ipnet::Ipv4Net {
        crate::iface::subnet(self.server_ip, self.netmask)
    }

    fn on_subnet(&self, addr: Ipv4Addr) -> bool {
        self.net().contains(&addr)
    }

    fn broadcast_addr(&self) -> Ipv4Addr {
        self.net().broadcast()
    }

    /// True for addresses that may never be handed out: ours, the
    /// network and broadcast addresses, and anything off the subnet.
    /// (/31 and /32 have no network or broadcast address, RFC 3021.)
    fn unusable(&self, addr: Ipv4Addr) -> bool {
        let net = self.net();
        addr == self.server_ip
            || !net.contains(&addr)
            || (net.prefix_len() < 31 && (addr == net.network() || addr == net.broadcast()))
    }

    fn in_pool(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        a >= u32::from(self.pool.0) && a <= u32::from(self.pool.1)
    }

    fn static_for(&self, mac: Option<[u8; 6]>) -> Option<Ipv4Addr> {
        let mac = mac?;
        self.static_leases
            .iter()
            .find(|(m, _)| *m == mac)
            .map(|(_, a)| *a)
    }

    fn static_owner(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        self.static_leases
            .iter()
            .find(|(_, a)| *a == addr)
            .map(|(m, _)| *m)
    }
}

/// An encoded reply and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Destination address and port.
    pub dest: SocketAddrV4,
    /// Set for a unicast to a client that has no address yet (`dest` is
    /// its new address): the hardware address the sender must put in the
    /// ARP table first; if it cannot, broadcast instead.
    pub arp: Option<[u8; 6]>,
    /// DHCP message type of the reply (2 OFFER, 5 ACK, 6 NAK).
    pub msg_type: u8,
    /// The encoded message.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    Offered,
    Bound,
}

#[derive(Debug, Clone)]
struct Lease {
    addr: Ipv4Addr,
    state: LeaseState,
    /// `None`: never expires.
    expires: Option<Instant>,
}

impl Lease {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// Leases and declined addresses; the only state of the server.
#[derive(Debug, Default)]
pub struct LeaseTable {
    /// By client hardware address (see `Request::key`).
    leases: HashMap<Vec<u8>, Lease>,
    declined: HashMap<Ipv4Addr, Instant>,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live leases for the status page, by address.
    pub fn rows(&self, now: Instant) -> Vec<crate::progress::LeaseRow> {
        let mut v: Vec<_> = self
            .leases
            .iter()
            .filter(|(_, l)| l.live(now))
            .map(|(key, l)| crate::progress::LeaseRow {
                client: key
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
                addr: l.addr,
                bound: l.state == LeaseState::Bound,
                expires_in_secs: l
                    .expires
                    .map(|e| e.saturating_duration_since(now).as_secs()),
            })
            .collect();
        v.sort_by_key(|r| r.addr);
        v
    }

    /// The address currently bound (ACKed, unexpired) to the client with
    /// hardware address `mac` and no client identifier.
    pub fn bound_addr(&self, mac: &[u8]) -> Option<Ipv4Addr> {
        let now = Instant::now();
        self.leases
            .get(mac)
            .filter(|l| l.state == LeaseState::Bound && l.live(now))
            .map(|l| l.addr)
    }

    fn used_by_other(
        &self,
        cfg: &DhcpConfig,
        key: &[u8],
        mac: Option<[u8; 6]>,
        addr: Ipv4Addr,
        now: Instant,
    ) -> bool {
        if let Some(owner) = cfg.static_owner(addr) {
            if Some(owner) != mac {
                return true;
            }
        }
        if self.declined.get(&addr).is_some_and(|until| *until > now) {
            return true;
        }
        self.leases
            .iter()
            .any(|(k, l)| k.as_slice() != key && l.addr == addr && l.live(now))
    }

    /// May `addr` be given to this client?
    fn allowed(
        &self,
        cfg: &DhcpConfig,
        key: &[u8],
        mac: Option<[u8; 6]>,
        addr: Ipv4Addr,
        now: Instant,
    ) -> bool {
        if let Some(fixed) = cfg.static_for(mac) {
            return fixed == addr;
        }
        cfg.in_pool(addr) && !cfg.unusable(addr) && !self.used_by_other(cfg, key, mac, addr, now)
    }

    fn allocate(
        &self,
        cfg: &DhcpConfig,
        key: &[u8],
        mac: Option<[u8; 6]>,
        requested: Option<Ipv4Addr>,
        now: Instant,
    ) -> Option<Ipv4Addr> {
        if let Some(fixed) = cfg.static_for(mac) {
            return Some(fixed);
        }
        if let Some(l) = self.leases.get(key) {
            if self.allowed(cfg, key, mac, l.addr, now) {
                return Some(l.addr);
            }
        }
        if let Some(r) = requested {
            if self.allowed(cfg, key, mac, r, now) {
                return Some(r);
            }
        }
        let (lo, hi) = (u32::from(cfg.pool.0), u32::from(cfg.pool.1));
        if lo > hi {
            return None;
        }
        let span = (hi - lo).min(MAX_POOL_SCAN - 1);
        let taken: hashbrown::HashSet<Ipv4Addr> = self
            .leases
            .iter()
            .filter(|(k, l)| k.as_slice() != key && l.live(now))
            .map(|(_, l)| l.addr)
            .chain(
                self.declined
                    .iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(a, _)| *a),
            )
            .chain(cfg.static_leases.iter().map(|(_, a)| *a))
            .collect();
        (0..=span)
            .map(|i| Ipv4Addr::from(lo + i))
            .find(|a| !taken.contains(a) && !cfg.unusable(*a))
    }

    fn set(&mut self, key: &[u8], addr: Ipv4Addr, state: LeaseState, expires: Option<Instant>) {
        self.leases.insert(
            key.to_vec(),
            Lease {
                addr,
                state,
                expires,
            },
        );
    }
}

/// A parsed client message: the fields the server uses, every length
/// checked.
#[derive(Debug, Clone)]
struct Request {
    htype: u8,
    hlen: u8,
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: [u8; 16],
    /// Options by code; repeated codes are concatenated (RFC 3396).
    opts: HashMap<u8, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ParseError {
    Short(usize),
    NotRequest(u8),
    BadHlen(u8),
    BadMagic,
    TruncatedOption(u8),
    NoMessageType,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Short(n) => write!(f, "packet too short ({n} bytes)"),
            ParseError::NotRequest(op) => write!(f, "op {op} is not BOOTREQUEST"),
            ParseError::BadHlen(h) => write!(f, "hardware address length {h} out of range"),
            ParseError::BadMagic => write!(f, "no DHCP magic cookie (plain BOOTP is not served)"),
            ParseError::TruncatedOption(c) => {
                write!(f, "option {c} runs past the end of its field")
            }
            ParseError::NoMessageType => write!(f, "no valid message type option"),
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn parse_opts(area: &[u8], out: &mut HashMap<u8, Vec<u8>>) -> Result<(), ParseError> {
    let mut i = 0;
    while i < area.len() {
        let code = area[i];
        match code {
            0 => i += 1,
            255 => return Ok(()),
            _ => {
                let len = *area.get(i + 1).ok_or(ParseError::TruncatedOption(code))? as usize;
                let data = area
                    .get(i + 2..i + 2 + len)
                    .ok_or(ParseError::TruncatedOption(code))?;
                out.entry(code).or_default().extend_from_slice(data);
                i += 2 + len;
            }
        }
    }
    Ok(())
}

impl Request {
    fn parse(pkt: &[u8]) -> Result<Request, ParseError> {
        if pkt.len() < HEADER_LEN + 4 {
            return Err(ParseError::Short(pkt.len()));
        }
        if pkt[0] != 1 {
            return Err(ParseError::NotRequest(pkt[0]));
        }
        let hlen = pkt[2];
        if hlen == 0 || hlen > 16 {
            return Err(ParseError::BadHlen(hlen));
        }
        if pkt[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
            return Err(ParseError::BadMagic);
        }
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&pkt[28..44]);
        let mut opts = HashMap::new();
        parse_opts(&pkt[HEADER_LEN + 4..], &mut opts)?;
        // Option overload (52): 1 = `file` holds options, 2 = `sname`,
        // 3 = both; `file` is read first (RFC 2131 4.1).
        let overload = opts.get(&52).and_then(|v| v.first().copied()).unwrap_or(0);
        if overload & 1 != 0 {
            parse_opts(&pkt[108..236], &mut opts)?;
        }
        if overload & 2 != 0 {
            parse_opts(&pkt[44..108], &mut opts)?;
        }
        match opts.get(&53) {
            Some(v) if v.len() == 1 => {}
            _ => return Err(ParseError::NoMessageType),
        }
        Ok(Request {
            htype: pkt[1],
            hlen,
            xid: be32(&pkt[4..8]),
            flags: u16::from_be_bytes([pkt[10], pkt[11]]),
            ciaddr: Ipv4Addr::from(be32(&pkt[12..16])),
            giaddr: Ipv4Addr::from(be32(&pkt[24..28])),
            chaddr,
            opts,
        })
    }

    fn msg_type(&self) -> u8 {
        self.opts[&53][0]
    }

    fn hwaddr(&self) -> &[u8] {
        &self.chaddr[..self.hlen as usize]
    }

    /// Ethernet MAC, when the hardware address is one.
    fn mac(&self) -> Option<[u8; 6]> {
        (self.hlen == 6).then(|| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&self.chaddr[..6]);
            m
        })
    }

    /// Lease key: the hardware address. Option 61 is deliberately not
    /// used: UEFI firmware's PXE and the iPXE it chains into send different
    /// client identifiers for the same NIC, and the one-address pool that
    /// keeps a second machine from booting the same disk must still serve
    /// both stages of one machine.
    fn key(&self) -> Vec<u8> {
        self.hwaddr().to_vec()
    }

    fn addr_opt(&self, code: u8) -> Option<Ipv4Addr> {
        self.opts
            .get(&code)
            .filter(|v| v.len() == 4)
            .map(|v| Ipv4Addr::from(be32(v)))
    }

    fn is_pxe(&self) -> bool {
        self.opts
            .get(&60)
            .is_some_and(|v| v.starts_with(b"PXEClient"))
    }

    /// UEFI HTTP boot (vendor class `HTTPClient`, UEFI 2.5+).
    fn is_http_client(&self) -> bool {
        self.opts
            .get(&60)
            .is_some_and(|v| v.starts_with(b"HTTPClient"))
    }

    fn is_ipxe(&self) -> bool {
        self.opts.contains_key(&175)
            || self
                .opts
                .get(&77)
                .is_some_and(|v| v.windows(4).any(|w| w == b"iPXE"))
    }

    /// Client architecture (RFC 4578 option 93, first entry), else the
    /// `Arch:NNNNN` field of a PXE vendor class.
    fn arch(&self) -> Option<u16> {
        if let Some(v) = self.opts.get(&93).filter(|v| v.len() >= 2) {
            return Some(u16::from_be_bytes([v[0], v[1]]));
        }
        let vc = self.opts.get(&60)?;
        let s = std::str::from_utf8(vc).ok()?;
        let rest = s.strip_prefix("PXEClient:Arch:")?;
        rest.get(..5)?.parse().ok()
    }

    fn describe(&self) -> String {
        let mac: Vec<String> = self.hwaddr().iter().map(|b| format!("{b:02x}")).collect();
        mac.join(":")
    }
}

/// Which first-stage or script the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS PXE ROM.
    Bios,
    /// x86-64 UEFI PXE (architectures 7 and 9).
    Efi,
    /// ARM64 UEFI PXE (architecture 11).
    Arm64,
    /// UEFI HTTP boot, x86-64 (architecture 16): a URL instead of a TFTP name.
    HttpEfi,
    /// UEFI HTTP boot, ARM64 (architecture 19).
    HttpArm64,
    /// A platform no configured binary runs on (IA32 UEFI, ARM32, ...).
    Unsupported(u16),
    /// iPXE already running: hand it the script URL.
    Ipxe,
}

/// Firmware class for an RFC 4578 architecture code (IANA registry).
pub fn firmware_for_arch(arch: Option<u16>) -> Firmware {
    match arch {
        // 0 x86 BIOS; 1-5 are pre-UEFI platforms that boot like it.
        None | Some(0..=5) => Firmware::Bios,
        // 7 EFI BC (x86-64 in practice), 9 x86-64.
        Some(7) | Some(9) => Firmware::Efi,
        Some(11) => Firmware::Arm64,
        Some(16) => Firmware::HttpEfi,
        Some(19) => Firmware::HttpArm64,
        // 6 IA32, 10 ARM32, 12+ others: no binary of ours runs there.
        Some(a) => Firmware::Unsupported(a),
    }
}

/// The file (or URL) for this client, or why it gets none.
fn boot_file(cfg: &DhcpConfig, req: &Request) -> Result<(Firmware, String), String> {
    if req.is_ipxe() {
        return Ok((Firmware::Ipxe, cfg.boot.ipxe_script_url.clone()));
    }
    let b = &cfg.boot;
    let fw = firmware_for_arch(req.arch());
    let url = |f: &str| format!("{}{f}", b.http_base);
    match fw {
        Firmware::Bios => Ok((fw, b.bios_file.clone())),
        Firmware::Efi => Ok((fw, b.efi_file.clone())),
        Firmware::HttpEfi => Ok((fw, url(&b.efi_file))),
        Firmware::Arm64 | Firmware::HttpArm64 if b.arm64_file.is_empty() => Err(
            "ARM64 UEFI client, and no ARM64 iPXE binary is configured (--ipxe-arm64)".into(),
        ),
        Firmware::Arm64 => Ok((fw, b.arm64_file.clone())),
        Firmware::HttpArm64 => Ok((fw, url(&b.arm64_file))),
        Firmware::Unsupported(a) => Err(format!(
            "client architecture {a} (RFC 4578) has no iPXE binary here (BIOS, x86-64 and ARM64 UEFI are served)"
        )),
        Firmware::Ipxe => Ok((fw, b.ipxe_script_url.clone())),
    }
}

/// [`boot_file`] for a client about to get an offer: `None` (and one log
/// line) when it cannot boot from us, so it gets no offer at all.
fn bootable(cfg: &DhcpConfig, req: &Request, who: &str) -> Option<(Firmware, String)> {
    match boot_file(cfg, req) {
        Ok(f) => Some(f),
        Err(why) if req.is_pxe() || req.is_http_client() => {
            tracing::warn!("dhcp: no offer to {who}: {why}");
            None
        }
        // A plain DHCP client (no network boot) still gets its lease.
        Err(_) => Some((Firmware::Bios, String::new())),
    }
}

fn unknown(code: u8, data: Vec<u8>) -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(OptionCode::from(code), data))
}

/// What kind of reply to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// OFFER/ACK with an address and lease options.
    Lease(MessageType, Ipv4Addr),
    /// ACK to INFORM: configuration but no address or lease.
    Inform,
    /// ProxyDHCP OFFER/ACK: boot information only.
    Proxy(MessageType),
    Nak,
}

fn build_reply(cfg: &DhcpConfig, req: &Request, kind: Kind) -> Vec<u8> {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::from(req.htype))
        .set_chaddr(req.hwaddr())
        .set_xid(req.xid)
        .set_secs(0)
        .set_giaddr(req.giaddr);
    let mut flags = Flags::new(req.flags & 0x8000);
    // Options in a fixed order, message type first.
    let mut opts: Vec<DhcpOption> = Vec::new();
    let (mtype, yiaddr) = match kind {
        Kind::Lease(t, a) => (t, a),
        Kind::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
        Kind::Proxy(t) => (t, Ipv4Addr::UNSPECIFIED),
        Kind::Nak => (MessageType::Nak, Ipv4Addr::UNSPECIFIED),
    };
    opts.push(DhcpOption::MessageType(mtype));
    opts.push(DhcpOption::ServerIdentifier(cfg.server_ip));
    if kind == Kind::Nak {
        if !req.giaddr.is_unspecified() {
            flags = flags.set_broadcast();
        }
        opts.push(DhcpOption::Message(
            "requested address not available".into(),
        ));
        m.set_flags(flags);
        return encode(&m, &opts);
    }
    m.set_flags(flags)
        .set_yiaddr(yiaddr)
        .set_siaddr(cfg.server_ip);
    // RFC 2131 table 3: ciaddr is echoed in ACKs, zero in OFFERs.
    if mtype == MessageType::Ack {
        m.set_ciaddr(req.ciaddr);
    }
    if let Kind::Lease(..) = kind {
        let secs = cfg.lease_secs.unwrap_or(u32::MAX);
        opts.push(DhcpOption::AddressLeaseTime(secs));
        if cfg.lease_secs.is_some() {
            opts.push(DhcpOption::Renewal(secs / 2));
            opts.push(DhcpOption::Rebinding((secs as u64 * 7 / 8) as u32));
        }
    }
    if !matches!(kind, Kind::Proxy(_)) {
        opts.push(DhcpOption::SubnetMask(cfg.netmask));
        opts.push(DhcpOption::BroadcastAddr(cfg.broadcast_addr()));
        opts.push(DhcpOption::Router(vec![cfg.server_ip]));
    }
    let file = boot_file(cfg, req).map(|(_, f)| f).unwrap_or_default();
    if !file.is_empty() {
        if file.len() < 128 {
            m.set_fname_str(&file);
        }
        opts.push(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }
    opts.push(DhcpOption::TFTPServerName(
        cfg.server_ip.to_string().into_bytes(),
    ));
    if req.is_http_client() {
        // UEFI HTTP boot only takes an offer that echoes its class.
        opts.push(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else if req.is_pxe() {
        opts.push(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        // PXE vendor options: discovery control (6) = 8, boot the file
        // named in this offer without boot-server discovery or menus.
        opts.push(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    if req.opts.contains_key(&175) {
        // iPXE encapsulated option 176 (no-pxedhcp): do not wait for a
        // ProxyDHCP offer.
        opts.push(unknown(175, vec![176, 1, 1]));
    }
    if let Some(rp) = &cfg.boot.root_path {
        opts.push(DhcpOption::RootPath(rp.clone()));
    }
    if let Some(iqn) = &cfg.boot.initiator_iqn {
        opts.push(unknown(203, iqn.as_bytes().to_vec()));
    }
    encode(&m, &opts)
}

fn encode(m: &Message, opts: &[DhcpOption]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(576);
    let mut e = Encoder::new(&mut buf);
    // `m` has no options, so this writes the header and the magic cookie.
    let res = m
        .encode(&mut e)
        .and_then(|()| opts.iter().try_for_each(|o| o.encode(&mut e)));
    if let Err(err) = res {
        // Only reachable through configuration (e.g. absurd option sizes).
        tracing::warn!("dhcp: cannot encode reply: {err}");
        return Vec::new();
    }
    buf.push(255);
    if buf.len() < MIN_REPLY_LEN {
        buf.resize(MIN_REPLY_LEN, 0);
    }
    buf
}

/// Where the packet came in: the local port and, when known, the source.
#[derive(Debug, Clone, Copy)]
pub struct RecvInfo {
    /// Local port the packet arrived on (67 or 4011).
    pub local_port: u16,
    /// Sender address, when known.
    pub src: Option<SocketAddrV4>,
}

impl Default for RecvInfo {
    fn default() -> Self {
        RecvInfo {
            local_port: SERVER_PORT,
            src: None,
        }
    }
}

/// RFC 2131 4.1: relay, then `ciaddr`, then broadcast when the client
/// asks for it (or for NAKs), else unicast to the new address through
/// an ARP entry the sender installs.
fn dest(
    req: &Request,
    nak: bool,
    yiaddr: Ipv4Addr,
    info: RecvInfo,
) -> (SocketAddrV4, Option<[u8; 6]>) {
    if info.local_port == PXE_PORT {
        if let Some(src) = info.src.filter(|s| !s.ip().is_unspecified()) {
            return (src, None);
        }
    }
    if !req.giaddr.is_unspecified() {
        return (SocketAddrV4::new(req.giaddr, SERVER_PORT), None);
    }
    if !nak && !req.ciaddr.is_unspecified() {
        return (SocketAddrV4::new(req.ciaddr, CLIENT_PORT), None);
    }
    let broadcast_flag = req.flags & 0x8000 != 0;
    if !nak && !broadcast_flag && !yiaddr.is_unspecified() && req.htype == 1 {
        if let Some(mac) = req.mac() {
            return (SocketAddrV4::new(yiaddr, CLIENT_PORT), Some(mac));
        }
    }
    (SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT), None)
}

fn reply(cfg: &DhcpConfig, req: &Request, kind: Kind, info: RecvInfo) -> Option<Reply> {
    let bytes = build_reply(cfg, req, kind);
    if bytes.is_empty() {
        return None;
    }
    let msg_type = match kind {
        Kind::Lease(t, _) | Kind::Proxy(t) => t,
        Kind::Inform => MessageType::Ack,
        Kind::Nak => MessageType::Nak,
    };
    let yiaddr = match kind {
        Kind::Lease(_, a) => a,
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let (dest, arp) = dest(req, kind == Kind::Nak, yiaddr, info);
    Some(Reply {
        dest,
        arp,
        msg_type: msg_type.into(),
        bytes,
    })
}

/// Handle one packet received on port 67 from an unknown source, now.
/// `None` means no reply (dropped, ignored, or nothing to send).
pub fn handle_packet(state: &mut LeaseTable, cfg: &DhcpConfig, pkt: &[u8]) -> Option<Reply> {
    handle_packet_at(state, cfg, pkt, RecvInfo::default(), Instant::now())
}

/// [`handle_packet`] with the receiving port, the source and the clock
/// given explicitly.
pub fn handle_packet_at(
    state: &mut LeaseTable,
    cfg: &DhcpConfig,
    pkt: &[u8],
    info: RecvInfo,
    now: Instant,
) -> Option<Reply> {
    let req = match Request::parse(pkt) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(
                "dhcp: dropped {} byte packet from {:?}: {e}",
                pkt.len(),
                info.src
            );
            return None;
        }
    };
    if cfg.mode == DhcpMode::Server && !req.giaddr.is_unspecified() && !cfg.on_subnet(req.giaddr) {
        // The pool only serves this interface's subnet.
        tracing::debug!(
            "dhcp: ignoring {} relayed from {}, outside {}/{}",
            req.describe(),
            req.giaddr,
            cfg.server_ip,
            cfg.netmask
        );
        return None;
    }
    match cfg.mode {
        DhcpMode::Off => None,
        DhcpMode::Proxy => handle_proxy(cfg, &req, info),
        DhcpMode::Server => handle_server(state, cfg, &req, info, now),
    }
}

fn handle_proxy(cfg: &DhcpConfig, req: &Request, info: RecvInfo) -> Option<Reply> {
    if !req.is_pxe() {
        tracing::debug!("proxydhcp: ignoring non-PXE client {}", req.describe());
        return None;
    }
    let t = req.msg_type();
    let (fw, file) = bootable(cfg, req, &req.describe())?;
    match (info.local_port, t) {
        (PXE_PORT, 3) | (PXE_PORT, 8) => {
            tracing::info!("proxydhcp: boot ACK to {} ({fw:?}: {file})", req.describe());
            reply(cfg, req, Kind::Proxy(MessageType::Ack), info)
        }
        (PXE_PORT, _) => None,
        (_, 1) => {
            tracing::info!(
                "proxydhcp: boot OFFER to {} ({fw:?}: {file})",
                req.describe()
            );
            crate::progress::dhcp_offer(req.hwaddr(), None, &format!("{fw:?}: {file}"));
            reply(cfg, req, Kind::Proxy(MessageType::Offer), info)
        }
        // REQUESTs on port 67 are for the real DHCP server.
        _ => None,
    }
}

fn handle_server(
    state: &mut LeaseTable,
    cfg: &DhcpConfig,
    req: &Request,
    info: RecvInfo,
    now: Instant,
) -> Option<Reply> {
    let key = req.key();
    let mac = req.mac();
    let who = req.describe();
    let sid = req.addr_opt(54);
    let requested = req.addr_opt(50);
    let expires = cfg.lease_secs.map(|s| now + Duration::from_secs(s as u64));
    // Forget what has expired, so the table stays as small as the pool.
    state.leases.retain(|_, l| l.live(now));
    state.declined.retain(|_, until| *until > now);
    match req.msg_type() {
        // DISCOVER
        1 => {
            let (fw, file) = bootable(cfg, req, &who)?;
            let Some(addr) = state.allocate(cfg, &key, mac, requested, now) else {
                tracing::warn!(
                    "dhcp: no free address for {who}: pool {}-{} exhausted, no offer",
                    cfg.pool.0,
                    cfg.pool.1
                );
                return None;
            };
            let bound = state
                .leases
                .get(&key)
                .is_some_and(|l| l.addr == addr && l.state == LeaseState::Bound && l.live(now));
            if !bound {
                state.set(&key, addr, LeaseState::Offered, Some(now + OFFER_HOLD));
            }
            tracing::info!("dhcp: OFFER {addr} to {who} ({fw:?}: {file})");
            crate::progress::dhcp_offer(
                req.hwaddr(),
                Some(addr.into()),
                &format!("{fw:?}: {file}"),
            );
            reply(cfg, req, Kind::Lease(MessageType::Offer, addr), info)
        }
        // REQUEST
        3 => {
            let target = if let Some(sid) = sid {
                if sid != cfg.server_ip {
                    // The client chose another server's offer.
                    if state
                        .leases
                        .get(&key)
                        .is_some_and(|l| l.state == LeaseState::Offered)
                    {
                        state.leases.remove(&key);
                    }
                    tracing::debug!("dhcp: {who} selected server {sid}");
                    return None;
                }
                // SELECTING: must match what we offered.
                let want = requested.unwrap_or(req.ciaddr);
                let offered = state
                    .leases
                    .get(&key)
                    .is_some_and(|l| l.addr == want && l.live(now));
                // An offer that timed out is still fine if nobody took it.
                if offered || state.allowed(cfg, &key, mac, want, now) {
                    Some(want)
                } else {
                    tracing::info!(
                        "dhcp: NAK {who}: requested {want}, which was not offered to it"
                    );
                    None
                }
            } else if let Some(want) = requested {
                // INIT-REBOOT
                if state.allowed(cfg, &key, mac, want, now) {
                    Some(want)
                } else {
                    tracing::info!("dhcp: NAK {who}: init-reboot address {want} not available");
                    None
                }
            } else if !req.ciaddr.is_unspecified() {
                // RENEWING / REBINDING
                if state.allowed(cfg, &key, mac, req.ciaddr, now) {
                    Some(req.ciaddr)
                } else {
                    tracing::info!("dhcp: NAK {who}: renewal of {} refused", req.ciaddr);
                    None
                }
            } else {
                tracing::debug!(
                    "dhcp: REQUEST from {who} without server id, requested address or ciaddr"
                );
                return None;
            };
            match target {
                Some(addr) => {
                    state.set(&key, addr, LeaseState::Bound, expires);
                    state.declined.remove(&addr);
                    let (fw, file) = boot_file(cfg, req).unwrap_or((Firmware::Bios, String::new()));
                    tracing::info!("dhcp: ACK {addr} to {who} ({fw:?}: {file})");
                    reply(cfg, req, Kind::Lease(MessageType::Ack, addr), info)
                }
                None => reply(cfg, req, Kind::Nak, info),
            }
        }
        // DECLINE
        4 => {
            if sid.is_some_and(|s| s != cfg.server_ip) {
                return None;
            }
            let addr = requested.or_else(|| state.leases.get(&key).map(|l| l.addr))?;
            if !cfg.in_pool(addr) && cfg.static_owner(addr).is_none() {
                // Not ours to hold back (and no unbounded growth).
                tracing::debug!("dhcp: {who} declined {addr}, which this server does not hand out");
                return None;
            }
            if state.leases.get(&key).is_some_and(|l| l.addr == addr) {
                state.leases.remove(&key);
            }
            state.declined.insert(addr, now + DECLINE_HOLD);
            tracing::warn!(
                "dhcp: {who} declined {addr} (address in use on the network?); held back for {}s",
                DECLINE_HOLD.as_secs()
            );
            None
        }
        // RELEASE
        7 => {
            if sid.is_some_and(|s| s != cfg.server_ip) {
                return None;
            }
            if state.leases.get(&key).is_some_and(|l| l.addr == req.ciaddr) {
                state.leases.remove(&key);
                tracing::info!("dhcp: {who} released {}", req.ciaddr);
            }
            None
        }
        // INFORM
        8 => {
            tracing::info!("dhcp: INFORM ACK to {who} at {}", req.ciaddr);
            reply(cfg, req, Kind::Inform, info)
        }
        t => {
            tracing::debug!("dhcp: ignoring message type {t} from {who}");
            None
        }
    }
}

/// Put `ip` -> `mac` in the ARP table of `interface`, so a reply can be
/// unicast to a client that cannot answer ARP yet (RFC 2131 4.1).
fn set_arp(
    sock: &mio::net::UdpSocket,
    interface: &str,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const ATF_COM: libc::c_int = 0x02;
    // SAFETY: arpreq is plain old data; all-zero is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let pa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in is no larger than sockaddr.
    unsafe {
        std::ptr::write(
            &mut req.arp_pa as *mut libc::sockaddr as *mut libc::sockaddr_in,
            pa,
        )
    };
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac) {
        *d = s as libc::c_char;
    }
    req.arp_flags = ATF_COM;
    if interface.len() >= req.arp_dev.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (d, s) in req.arp_dev.iter_mut().zip(interface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCSARP reads one arpreq, which lives for the call.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSARP,
            &req as *const libc::arpreq,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind_udp(interface: &str, port: u16) -> io::Result<mio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes())).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("dhcp: bind to interface {interface}: {e}"),
        )
    })?;
    s.set_nonblocking(true)?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    s.bind(&addr.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("dhcp: bind port {port} on {interface}: {e}"),
        )
    })?;
    Ok(mio::net::UdpSocket::from_std(s.into()))
}

/// Start the DHCP sidecar: sockets are bound before this returns (so the
/// server is ready when it does), then a thread serves them for the life
/// of the process. `DhcpMode::Off` returns a thread that ends at once.
pub fn spawn(cfg: DhcpConfig) -> io::Result<JoinHandle<()>> {
    let builder = std::thread::Builder::new().name("bootlun-dhcp".into());
    if cfg.mode == DhcpMode::Off {
        return builder.spawn(|| {});
    }
    let mut socks = vec![(SERVER_PORT, bind_udp(&cfg.interface, SERVER_PORT)?)];
    if cfg.mode == DhcpMode::Proxy {
        socks.push((PXE_PORT, bind_udp(&cfg.interface, PXE_PORT)?));
    }
    let poll = mio::Poll::new()?;
    for (i, (_, s)) in socks.iter_mut().enumerate() {
        poll.registry()
            .register(s, mio::Token(i), mio::Interest::READABLE)?;
    }
    let (lo, hi) = (u32::from(cfg.pool.0), u32::from(cfg.pool.1));
    let usable =
        lo <= hi && (lo..=hi.min(lo.saturating_add(255))).any(|a| !cfg.unusable(Ipv4Addr::from(a)));
    if cfg.mode == DhcpMode::Server && !usable && cfg.static_leases.is_empty() {
        tracing::warn!(
            "dhcp: pool {}-{} has no usable address on {}/{}: no client will get a lease",
            cfg.pool.0,
            cfg.pool.1,
            cfg.server_ip,
            cfg.netmask
        );
    }
    tracing::info!(
        "dhcp: {:?} mode on {} ({}), pool {}-{}",
        cfg.mode,
        cfg.interface,
        cfg.server_ip,
        cfg.pool.0,
        cfg.pool.1
    );
    builder.spawn(move || serve(cfg, poll, socks))
}

fn serve(cfg: DhcpConfig, mut poll: mio::Poll, socks: Vec<(u16, mio::net::UdpSocket)>) {
    let mut events = mio::Events::with_capacity(16);
    let mut table = LeaseTable::new();
    // One receive buffer for every datagram: a request is decoded and
    // answered before the next is read, so nothing needs to own its bytes
    // past that (no `Bytes` here; the encoded reply is a plain `Vec` that
    // is sent once and dropped).
    let mut buf = vec![0u8; 4096];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("dhcp: poll failed, server stops: {e}");
            return;
        }
        for ev in events.iter() {
            let Some((port, sock)) = socks.get(ev.token().0) else {
                continue;
            };
            loop {
                let (n, src) = match sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!("dhcp: receive on port {port}: {e}");
                        break;
                    }
                };
                let src = match src {
                    SocketAddr::V4(a) => Some(a),
                    SocketAddr::V6(_) => None,
                };
                let info = RecvInfo {
                    local_port: *port,
                    src,
                };
                let reply = handle_packet_at(&mut table, &cfg, &buf[..n], info, Instant::now());
                crate::progress::set_leases(table.rows(Instant::now()));
                if let Some(mut r) = reply {
                    if let Some(mac) = r.arp {
                        if let Err(e) = set_arp(sock, &cfg.interface, *r.dest.ip(), mac) {
                            tracing::debug!(
                                "dhcp: no ARP entry for {} ({e}), broadcasting",
                                r.dest.ip()
                            );
                            r.dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
                        }
                    }
                    if let Err(e) = sock.send_to(&r.bytes, SocketAddr::V4(r.dest)) {
                        tracing::warn!("dhcp: send to {}: {e}", r.dest);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Decoder};

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const POOL: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const MAC1: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC2: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn cfg() -> DhcpConfig {
        DhcpConfig::new(
            "veth0",
            SERVER,
            Ipv4Addr::new(255, 255, 255, 0),
            BootFiles::defaults_for(SERVER),
        )
    }

    /// A raw client message: header, magic, options, END.
    fn raw(mtype: u8, mac: &[u8], ciaddr: Ipv4Addr, opts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = 1;
        p[1] = 1;
        p[2] = mac.len() as u8;
        p[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        p[12..16].copy_from_slice(&ciaddr.octets());
        p[28..28 + mac.len()].copy_from_slice(mac);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, mtype]);
        for (c, d) in opts {
            p.push(*c);
            p.push(d.len() as u8);
            p.extend_from_slice(d);
        }
        p.push(255);
        p
    }

    fn decode(r: &Reply) -> Message {
        Message::decode(&mut Decoder::new(&r.bytes)).unwrap()
    }

    fn opt_bytes(m: &Message, code: u8) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        m.opts()
            .get(OptionCode::from(code))?
            .encode(&mut Encoder::new(&mut buf))
            .unwrap();
        Some(buf[2..].to_vec())
    }

    fn bootfile(m: &Message) -> String {
        String::from_utf8(opt_bytes(m, 67).unwrap()).unwrap()
    }

    #[test]
    fn discover_request_ack_single_pool_address() {
        let c = cfg();
        let mut t = LeaseTable::new();
        let r = handle_packet(&mut t, &c, &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[])).unwrap();
        assert_eq!(r.msg_type, 2);
        assert_eq!((r.dest, r.arp), (SocketAddrV4::new(POOL, 68), Some(MAC1)));
        assert_eq!(
            &r.bytes[236..243],
            &[99, 130, 83, 99, 53, 1, 2],
            "message type first"
        );
        let m = decode(&r);
        assert_eq!(m.yiaddr(), POOL);
        assert_eq!(m.siaddr(), SERVER);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(opt_bytes(&m, 51).unwrap(), vec![0xff; 4]);
        assert!(opt_bytes(&m, 58).is_none());
        assert_eq!(opt_bytes(&m, 54).unwrap(), SERVER.octets());
        assert_eq!(opt_bytes(&m, 3).unwrap(), SERVER.octets());
        assert_eq!(opt_bytes(&m, 1).unwrap(), [255, 255, 255, 0]);
        assert_eq!(opt_bytes(&m, 28).unwrap(), [10, 77, 0, 255]);
        assert_eq!(opt_bytes(&m, 66).unwrap(), b"10.77.0.1");
        assert_eq!(bootfile(&m), "undionly.kpxe");
        assert!(
            opt_bytes(&m, 60).is_none(),
            "no PXEClient echo for a non-PXE client"
        );
        assert!(r.bytes.len() >= MIN_REPLY_LEN);

        // Second client: pool full, no offer.
        assert!(handle_packet(&mut t, &c, &raw(1, &MAC2, Ipv4Addr::UNSPECIFIED, &[])).is_none());

        let req = raw(
            3,
            &MAC1,
            Ipv4Addr::UNSPECIFIED,
            &[(54, &SERVER.octets()), (50, &POOL.octets())],
        );
        let r = handle_packet(&mut t, &c, &req).unwrap();
        assert_eq!(r.msg_type, 5);
        assert_eq!(decode(&r).yiaddr(), POOL);
        assert_eq!(t.bound_addr(&MAC1), Some(POOL));

        // Second client asking for the bound address: NAK.
        let req = raw(3, &MAC2, Ipv4Addr::UNSPECIFIED, &[(50, &POOL.octets())]);
        assert_eq!(handle_packet(&mut t, &c, &req).unwrap().msg_type, 6);
        assert!(handle_packet(&mut t, &c, &raw(1, &MAC2, Ipv4Addr::UNSPECIFIED, &[])).is_none());

        // Renewal: unicast ACK to ciaddr.
        let r = handle_packet(&mut t, &c, &raw(3, &MAC1, POOL, &[])).unwrap();
        assert_eq!(r.msg_type, 5);
        assert_eq!(r.dest, SocketAddrV4::new(POOL, 68));
        assert_eq!(decode(&r).ciaddr(), POOL);

        // Release frees it for the other client.
        assert!(
            handle_packet(&mut t, &c, &raw(7, &MAC1, POOL, &[(54, &SERVER.octets())])).is_none()
        );
        let r = handle_packet(&mut t, &c, &raw(1, &MAC2, Ipv4Addr::UNSPECIFIED, &[])).unwrap();
        assert_eq!(decode(&r).yiaddr(), POOL);
    }

    #[test]
    fn request_after_offer_timeout_still_acked() {
        let c = cfg();
        let mut t = LeaseTable::new();
        let now = Instant::now();
        let i = RecvInfo::default();
        handle_packet_at(
            &mut t,
            &c,
            &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[]),
            i,
            now,
        )
        .unwrap();
        let later = now + OFFER_HOLD + Duration::from_secs(1);
        let req = raw(
            3,
            &MAC1,
            Ipv4Addr::UNSPECIFIED,
            &[(54, &SERVER.octets()), (50, &POOL.octets())],
        );
        assert_eq!(
            handle_packet_at(&mut t, &c, &req, i, later)
                .unwrap()
                .msg_type,
            5
        );
    }

    #[test]
    fn finite_lease_sets_t1_t2() {
        let mut c = cfg();
        c.lease_secs = Some(3600);
        let mut t = LeaseTable::new();
        let m =
            decode(&handle_packet(&mut t, &c, &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[])).unwrap());
        assert_eq!(opt_bytes(&m, 51).unwrap(), 3600u32.to_be_bytes());
        assert_eq!(opt_bytes(&m, 58).unwrap(), 1800u32.to_be_bytes());
        assert_eq!(opt_bytes(&m, 59).unwrap(), 3150u32.to_be_bytes());
    }

    #[test]
    fn lease_expiry_frees_address() {
        let mut c = cfg();
        c.lease_secs = Some(10);
        let mut t = LeaseTable::new();
        let now = Instant::now();
        let i = RecvInfo::default();
        handle_packet_at(
            &mut t,
            &c,
            &raw(3, &MAC1, Ipv4Addr::UNSPECIFIED, &[(50, &POOL.octets())]),
            i,
            now,
        )
        .unwrap();
        assert!(handle_packet_at(
            &mut t,
            &c,
            &raw(1, &MAC2, Ipv4Addr::UNSPECIFIED, &[]),
            i,
            now
        )
        .is_none());
        let later = now + Duration::from_secs(11);
        let r = handle_packet_at(
            &mut t,
            &c,
            &raw(1, &MAC2, Ipv4Addr::UNSPECIFIED, &[]),
            i,
            later,
        )
        .unwrap();
        assert_eq!(decode(&r).yiaddr(), POOL);
    }

    #[test]
    fn selecting_other_server_drops_offer_and_wrong_address_naks() {
        let c = cfg();
        let mut t = LeaseTable::new();
        handle_packet(&mut t, &c, &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[])).unwrap();
        let other = [10, 77, 0, 9];
        assert!(handle_packet(
            &mut t,
            &c,
            &raw(
                3,
                &MAC1,
                Ipv4Addr::UNSPECIFIED,
                &[(54, &other), (50, &[10, 77, 0, 3])]
            )
        )
        .is_none());
        // Offer withdrawn: the other client can have the address now.
        assert!(handle_packet(&mut t, &c, &raw(1, &MAC2, Ipv4Addr::UNSPECIFIED, &[])).is_some());
        let r = handle_packet(
            &mut t,
            &c,
            &raw(
                3,
                &MAC2,
                Ipv4Addr::UNSPECIFIED,
                &[(54, &SERVER.octets()), (50, &[10, 77, 0, 7])],
            ),
        )
        .unwrap();
        assert_eq!(r.msg_type, 6);
        assert_eq!(r.dest.ip(), &Ipv4Addr::BROADCAST);
        // Init-reboot off the subnet: NAK.
        let r = handle_packet(
            &mut t,
            &c,
            &raw(3, &MAC1, Ipv4Addr::UNSPECIFIED, &[(50, &[192, 0, 2, 5])]),
        )
        .unwrap();
        assert_eq!(r.msg_type, 6);
    }

    #[test]
    fn decline_marks_address_bad() {
        let c = cfg();
        let mut t = LeaseTable::new();
        handle_packet(
            &mut t,
            &c,
            &raw(3, &MAC1, Ipv4Addr::UNSPECIFIED, &[(50, &POOL.octets())]),
        )
        .unwrap();
        assert!(handle_packet(
            &mut t,
            &c,
            &raw(
                4,
                &MAC1,
                Ipv4Addr::UNSPECIFIED,
                &[(50, &POOL.octets()), (54, &SERVER.octets())]
            )
        )
        .is_none());
        assert!(handle_packet(&mut t, &c, &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[])).is_none());
        assert!(handle_packet(&mut t, &c, &raw(1, &MAC2, Ipv4Addr::UNSPECIFIED, &[])).is_none());
    }

    #[test]
    fn inform_gets_ack_without_address_or_lease() {
        let c = cfg();
        let mut t = LeaseTable::new();
        let ci = Ipv4Addr::new(10, 77, 0, 50);
        let r = handle_packet(&mut t, &c, &raw(8, &MAC1, ci, &[])).unwrap();
        assert_eq!(r.msg_type, 5);
        assert_eq!(r.dest, SocketAddrV4::new(ci, 68));
        let m = decode(&r);
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(opt_bytes(&m, 51).is_none());
        assert_eq!(bootfile(&m), "undionly.kpxe");
    }

    #[test]
    fn static_lease_by_mac() {
        let mut c = cfg();
        let fixed = Ipv4Addr::new(10, 77, 0, 100);
        c.static_leases.push((MAC2, fixed));
        let mut t = LeaseTable::new();
        handle_packet(
            &mut t,
            &c,
            &raw(3, &MAC1, Ipv4Addr::UNSPECIFIED, &[(50, &POOL.octets())]),
        )
        .unwrap();
        let m =
            decode(&handle_packet(&mut t, &c, &raw(1, &MAC2, Ipv4Addr::UNSPECIFIED, &[])).unwrap());
        assert_eq!(m.yiaddr(), fixed);
        let r = handle_packet(
            &mut t,
            &c,
            &raw(
                3,
                &MAC2,
                Ipv4Addr::UNSPECIFIED,
                &[(54, &SERVER.octets()), (50, &fixed.octets())],
            ),
        )
        .unwrap();
        assert_eq!(r.msg_type, 5);
        // Nobody else gets the static address.
        let r = handle_packet(
            &mut t,
            &c,
            &raw(
                3,
                &[2, 0, 0, 0, 0, 3],
                Ipv4Addr::UNSPECIFIED,
                &[(50, &fixed.octets())],
            ),
        )
        .unwrap();
        assert_eq!(r.msg_type, 6);
    }

    #[test]
    fn firmware_selects_boot_file() {
        let c = cfg();
        type Case<'a> = (&'a [(u8, &'a [u8])], &'a str, bool);
        let cases: [Case; 7] = [
            (
                &[(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, &[0, 0])],
                "undionly.kpxe",
                true,
            ),
            (
                &[(60, b"PXEClient:Arch:00007:UNDI:003016"), (93, &[0, 7])],
                "snponly.efi",
                true,
            ),
            (
                &[(60, b"PXEClient:Arch:00009:UNDI:003016"), (93, &[0, 9])],
                "snponly.efi",
                true,
            ),
            (
                &[(60, b"PXEClient:Arch:00009:UNDI:003016"), (93, &[0, 9])],
                "snponly.efi",
                true,
            ),
            (
                &[(60, b"PXEClient:Arch:00007:UNDI:003016")],
                "snponly.efi",
                true,
            ),
            (
                &[
                    (60, b"PXEClient:Arch:00000:UNDI:002001"),
                    (77, b"iPXE"),
                    (93, &[0, 0]),
                ],
                "http://10.77.0.1/boot.ipxe",
                true,
            ),
            (
                &[(175, &[177, 5, 1, 0x80, 0x86, 0x10, 0x0e])],
                "http://10.77.0.1/boot.ipxe",
                false,
            ),
        ];
        for (opts, want, pxe) in cases {
            let mut t = LeaseTable::new();
            let m = decode(
                &handle_packet(&mut t, &c, &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, opts)).unwrap(),
            );
            assert_eq!(bootfile(&m), want);
            assert_eq!(m.fname_str().unwrap().unwrap().trim_end_matches('\0'), want);
            assert_eq!(opt_bytes(&m, 60).is_some(), pxe);
            if pxe {
                assert_eq!(opt_bytes(&m, 60).unwrap(), b"PXEClient");
                assert_eq!(opt_bytes(&m, 43).unwrap(), [6, 1, 8, 255]);
            }
            let ipxe175 = opts.iter().any(|(c, _)| *c == 175);
            assert_eq!(
                opt_bytes(&m, 175).map(|v| v == [176, 1, 1]),
                ipxe175.then_some(true)
            );
        }
    }

    #[test]
    fn each_architecture_gets_its_own_binary_or_nothing() {
        let mut c = cfg();
        let discover = |c: &DhcpConfig, opts: &[(u8, &[u8])]| {
            let mut t = LeaseTable::new();
            handle_packet(&mut t, c, &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, opts))
                .map(|r| decode(&r))
        };
        let arm64: &[(u8, &[u8])] = &[(60, b"PXEClient:Arch:00011:UNDI:003016"), (93, &[0, 11])];
        // No ARM64 binary: an x86 one would not run, so no offer at all.
        assert!(discover(&c, arm64).is_none());
        // IA32 UEFI likewise.
        assert!(discover(
            &c,
            &[(60, b"PXEClient:Arch:00006:UNDI:003016"), (93, &[0, 6])]
        )
        .is_none());
        c.boot.arm64_file = "snponly-arm64.efi".into();
        assert_eq!(bootfile(&discover(&c, arm64).unwrap()), "snponly-arm64.efi");
        // UEFI HTTP boot: a URL, and option 60 set back to HTTPClient.
        let m = discover(
            &c,
            &[(60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, &[0, 16])],
        )
        .unwrap();
        assert_eq!(bootfile(&m), "http://10.77.0.1/ipxe/snponly.efi");
        assert_eq!(opt_bytes(&m, 60).unwrap(), b"HTTPClient");
        let m = discover(
            &c,
            &[(60, b"HTTPClient:Arch:00019:UNDI:003001"), (93, &[0, 19])],
        )
        .unwrap();
        assert_eq!(bootfile(&m), "http://10.77.0.1/ipxe/snponly-arm64.efi");
        // A plain DHCP client (no network boot) still gets its lease.
        let m = discover(&c, &[(93, &[0, 6])]).unwrap();
        assert!(opt_bytes(&m, 67).is_none());
    }

    #[test]
    fn root_path_and_initiator() {
        let mut c = cfg();
        c.boot.root_path = Some("iscsi:10.77.0.1:::0:iqn.2026-01.bootlun:disk".into());
        c.boot.initiator_iqn = Some("iqn.2026-01.bootlun:client".into());
        let mut t = LeaseTable::new();
        let m =
            decode(&handle_packet(&mut t, &c, &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[])).unwrap());
        assert_eq!(
            opt_bytes(&m, 17).unwrap(),
            b"iscsi:10.77.0.1:::0:iqn.2026-01.bootlun:disk"
        );
        assert_eq!(opt_bytes(&m, 203).unwrap(), b"iqn.2026-01.bootlun:client");
    }

    #[test]
    fn relay_and_broadcast_addressing() {
        let c = cfg();
        let mut t = LeaseTable::new();
        let mut p = raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[]);
        p[24..28].copy_from_slice(&[10, 77, 0, 254]);
        let r = handle_packet(&mut t, &c, &p).unwrap();
        assert_eq!(r.dest, SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 254), 67));
        assert_eq!(decode(&r).giaddr(), Ipv4Addr::new(10, 77, 0, 254));
        // A relay on another subnet: not served from this pool.
        let mut p = raw(1, &MAC2, Ipv4Addr::UNSPECIFIED, &[]);
        p[24..28].copy_from_slice(&[192, 0, 2, 1]);
        assert!(handle_packet(&mut t, &c, &p).is_none());
        let mut p = raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[]);
        p[10] = 0x80;
        let r = handle_packet(&mut t, &c, &p).unwrap();
        assert_eq!(r.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert!(decode(&r).flags().broadcast());
    }

    #[test]
    fn proxy_mode_boot_info_only() {
        let mut c = cfg();
        c.mode = DhcpMode::Proxy;
        let mut t = LeaseTable::new();
        // Non-PXE clients are ignored.
        assert!(handle_packet(&mut t, &c, &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[])).is_none());
        let pxe: &[(u8, &[u8])] = &[(60, b"PXEClient:Arch:00007:UNDI:003016"), (93, &[0, 7])];
        let r = handle_packet(&mut t, &c, &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, pxe)).unwrap();
        assert_eq!(r.msg_type, 2);
        let m = decode(&r);
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(opt_bytes(&m, 51).is_none());
        assert!(opt_bytes(&m, 3).is_none());
        assert_eq!(bootfile(&m), "snponly.efi");
        assert_eq!(opt_bytes(&m, 60).unwrap(), b"PXEClient");
        // REQUEST on 67 is for the real server.
        assert!(handle_packet(&mut t, &c, &raw(3, &MAC1, Ipv4Addr::UNSPECIFIED, pxe)).is_none());
        // REQUEST on 4011: ACK unicast to the sender.
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 40), 68);
        let info = RecvInfo {
            local_port: PXE_PORT,
            src: Some(src),
        };
        let r = handle_packet_at(
            &mut t,
            &c,
            &raw(3, &MAC1, *src.ip(), pxe),
            info,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(r.msg_type, 5);
        assert_eq!(r.dest, src);
        assert_eq!(decode(&r).yiaddr(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn off_mode_answers_nothing() {
        let mut c = cfg();
        c.mode = DhcpMode::Off;
        assert!(handle_packet(
            &mut LeaseTable::new(),
            &c,
            &raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[])
        )
        .is_none());
    }

    #[test]
    fn hostile_packets_dropped() {
        let c = cfg();
        let mut t = LeaseTable::new();
        let good = raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[]);
        assert!(handle_packet(&mut t, &c, &good[..100]).is_none());
        assert!(handle_packet(&mut t, &c, &[]).is_none());
        let mut p = good.clone();
        p[0] = 2;
        assert!(handle_packet(&mut t, &c, &p).is_none());
        let mut p = good.clone();
        p[2] = 200;
        assert!(handle_packet(&mut t, &c, &p).is_none());
        let mut p = good.clone();
        p[236] = 0;
        assert!(handle_packet(&mut t, &c, &p).is_none());
        // Option length running past the end.
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 1, 60, 200, b'P']);
        assert!(handle_packet(&mut t, &c, &p).is_none());
        // Overload pointing at a `file` field full of garbage lengths.
        let mut p = raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[(52, &[3])]);
        p[108..236].fill(0x7f);
        assert!(handle_packet(&mut t, &c, &p).is_none());
        // Message type of the wrong length.
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 2, 1, 1, 255]);
        assert!(handle_packet(&mut t, &c, &p).is_none());
        // Still serving.
        assert!(handle_packet(&mut t, &c, &good).is_some());
    }

    #[test]
    fn overloaded_options_are_read() {
        let c = cfg();
        let mut t = LeaseTable::new();
        let mut p = raw(1, &MAC1, Ipv4Addr::UNSPECIFIED, &[(52, &[1])]);
        let vc = b"PXEClient:Arch:00009:UNDI:003016";
        p[108] = 60;
        p[109] = vc.len() as u8;
        p[110..110 + vc.len()].copy_from_slice(vc);
        p[110 + vc.len()] = 255;
        let m = decode(&handle_packet(&mut t, &c, &p).unwrap());
        assert_eq!(bootfile(&m), "snponly.efi");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(pkt in proptest::collection::vec(proptest::num::u8::ANY, 0..700)) {
            let mut t = LeaseTable::new();
            let _ = handle_packet(&mut t, &cfg(), &pkt);
            let mut c = cfg();
            c.mode = DhcpMode::Proxy;
            let _ = handle_packet(&mut t, &c, &pkt);
        }

        #[test]
        fn valid_header_arbitrary_options_never_panic(
            mtype in 0u8..12,
            hlen in 0u8..20,
            flags in proptest::num::u8::ANY,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let mut p = raw(mtype, &MAC1, Ipv4Addr::UNSPECIFIED, &[]);
            p[2] = hlen;
            p[10] = flags;
            p.pop();
            p.extend_from_slice(&tail);
            let mut t = LeaseTable::new();
            for mode in [DhcpMode::Server, DhcpMode::Proxy] {
                let mut c = cfg();
                c.mode = mode;
                for port in [SERVER_PORT, PXE_PORT] {
                    let info = RecvInfo { local_port: port, src: None };
                    if let Some(r) = handle_packet_at(&mut t, &c, &p, info, Instant::now()) {
                        proptest::prop_assert!(!r.bytes.is_empty());
                    }
                }
            }
        }
    }
}
