//! Read-only TFTP server for first-stage boot files (RFC 1350, option
//! extension RFC 2347, blksize RFC 2348, timeout/tsize RFC 2349,
//! windowsize RFC 7440).
//!
//! One mio loop serves every transfer: requests arrive on the configured
//! address (port 69); each transfer gets its own socket bound to an
//! ephemeral port of the same address and connected to the client.
//! Files are read block by block at their offset, never loaded whole.
//!
//! Decisions worth knowing:
//!
//! * Read only: a write request gets ERROR 2 (access violation).
//! * Mode `octet` only. `netascii` gets ERROR 0 with a message saying so:
//!   boot firmware always asks for `octet`, and a byte-exact translation
//!   would break `tsize` and random-access retransmission. (With tftp-hpa's
//!   client, use `-m binary`.)
//! * Paths are jailed to the root. `\` is read as `/`. A `..` component is
//!   an access violation (ERROR 2). A leading `/` is accepted the way
//!   chrooted servers do (clients often send `/file`): the path is looked up
//!   inside the root; when nothing is found there, the absolute path was
//!   pointing outside the root and the answer is ERROR 2, not "not found".
//!   An absolute path that starts with the root directory itself is also
//!   accepted. Symlinks are followed only while they stay inside the root;
//!   one that leads out is ERROR 2. A missing relative path is ERROR 1.
//! * Options are acknowledged (OACK) only when the client asked for them
//!   and they were accepted: `blksize` 8..65464, lowered to fit the MTU
//!   of the route to the client (IP_MTU of the connected transfer socket,
//!   which is the interface MTU on a directly attached network), so blocks
//!   are never IP-fragmented; `tsize` (the real
//!   size); `timeout` 1..255 s; `windowsize` 1..65535, lowered to
//!   [`MAX_WINDOW`]. Unknown or malformed option values are ignored.
//! * Block numbers roll over from 65535 to 0.
//! * Lost packets: the window is resent after the timeout, doubling it on
//!   each try, [`MAX_RETRIES`] times; then the transfer is dropped with a
//!   log line. An ACK for a block inside the window moves the window there
//!   and sends from the next block. Duplicate ACKs of the block before the
//!   window are ignored (no Sorcerer's Apprentice).
//! * An ERROR from the client ends its transfer quietly (UEFI firmware
//!   sends ERROR 8 after a `tsize` probe, then asks again).
//! * A request from a client port that has a transfer running: the same
//!   bytes again are a retransmission and ignored; a different request
//!   replaces the transfer. Packets already queued for the transfer (such
//!   as that ERROR 8) are handled first.

use bytes::Bytes;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;
/// Largest window this server uses.
pub const MAX_WINDOW: u16 = 64;
/// Retransmissions of one window before a transfer is dropped.
pub const MAX_RETRIES: u32 = 5;
/// Transfers served at once; requests beyond get ERROR 0.
pub const MAX_TRANSFERS: usize = 128;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(60);
/// IPv4 + UDP + TFTP DATA headers.
const HEADERS: u32 = 20 + 8 + 4;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// TFTP error codes (RFC 1350, 2347).
pub mod code {
    /// Not defined, see message.
    pub const UNDEFINED: u16 = 0;
    /// File not found.
    pub const NOT_FOUND: u16 = 1;
    /// Access violation.
    pub const ACCESS: u16 = 2;
    /// Illegal TFTP operation.
    pub const ILLEGAL: u16 = 4;
    /// Option negotiation refused.
    pub const OPTIONS: u16 = 8;
}

/// Configuration of the TFTP sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpConfig {
    /// Address requests arrive on, normally `server_ip:69`.
    pub bind: SocketAddr,
    /// Interface to bind to (SO_BINDTODEVICE).
    pub interface: Option<String>,
    /// Directory served; nothing outside it is readable.
    pub root: PathBuf,
}

/// An error to send to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpError {
    /// TFTP error code.
    pub code: u16,
    /// Human-readable message.
    pub msg: String,
}

impl TftpError {
    fn new(code: u16, msg: impl Into<String>) -> Self {
        TftpError {
            code,
            msg: msg.into(),
        }
    }
}

impl std::fmt::Display for TftpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code, self.msg)
    }
}

/// Read or write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqKind {
    /// RRQ.
    Read,
    /// WRQ.
    Write,
}

/// A parsed RRQ/WRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Read or write.
    pub kind: ReqKind,
    /// File name as sent.
    pub filename: String,
    /// Transfer mode, lower-cased.
    pub mode: String,
    /// Options in the order sent, names lower-cased, first of duplicates
    /// kept.
    pub options: Vec<(String, String)>,
}

/// Parse a request packet. Anything malformed is ERROR 4; a mode other
/// than `octet` is refused here too.
pub fn parse_request(pkt: &[u8]) -> Result<Request, TftpError> {
    if pkt.len() < 2 {
        return Err(TftpError::new(code::ILLEGAL, "packet too short"));
    }
    let kind = match u16::from_be_bytes([pkt[0], pkt[1]]) {
        RRQ => ReqKind::Read,
        WRQ => ReqKind::Write,
        op => {
            return Err(TftpError::new(
                code::ILLEGAL,
                format!("unexpected opcode {op}"),
            ))
        }
    };
    let body = &pkt[2..];
    if body.last() != Some(&0) {
        return Err(TftpError::new(
            code::ILLEGAL,
            "request fields not NUL-terminated",
        ));
    }
    let mut fields: Vec<&[u8]> = body[..body.len() - 1].split(|b| *b == 0).collect();
    if fields.len() < 2 {
        return Err(TftpError::new(code::ILLEGAL, "request without mode"));
    }
    // Some clients pad the request with an extra NUL.
    if fields.len() % 2 == 1 && fields.last().is_some_and(|f| f.is_empty()) {
        fields.pop();
    }
    if fields.len() % 2 == 1 {
        return Err(TftpError::new(code::ILLEGAL, "option without value"));
    }
    let text = |f: &[u8]| {
        std::str::from_utf8(f)
            .map(str::to_string)
            .map_err(|_| TftpError::new(code::ILLEGAL, "field is not UTF-8"))
    };
    let filename = text(fields[0])?;
    if filename.is_empty() {
        return Err(TftpError::new(code::ILLEGAL, "empty file name"));
    }
    let mode = text(fields[1])?.to_ascii_lowercase();
    match mode.as_str() {
        "octet" => {}
        "netascii" => {
            return Err(TftpError::new(
                code::UNDEFINED,
                "netascii mode is not supported, use octet (binary)",
            ))
        }
        m => return Err(TftpError::new(code::ILLEGAL, format!("unknown mode {m:?}"))),
    }
    let mut options: Vec<(String, String)> = Vec::new();
    for pair in fields[2..].chunks(2) {
        let name = text(pair[0])?.to_ascii_lowercase();
        if name.is_empty() {
            return Err(TftpError::new(code::ILLEGAL, "empty option name"));
        }
        if options.iter().all(|(n, _)| *n != name) {
            options.push((name, text(pair[1])?));
        }
    }
    Ok(Request {
        kind,
        filename,
        mode,
        options,
    })
}

/// Outcome of option negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Data bytes per block.
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Options for the OACK, in the client's order; empty: no OACK.
    pub oack: Vec<(String, String)>,
}

/// Accept or ignore each requested option for a file of `file_size` bytes.
pub fn negotiate(options: &[(String, String)], file_size: u64, max_blksize: u16) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        windowsize: 1,
        timeout: DEFAULT_TIMEOUT,
        oack: Vec::new(),
    };
    for (name, value) in options {
        let num = value.trim().parse::<u64>().ok();
        match (name.as_str(), num) {
            ("blksize", Some(v)) if v >= 8 => {
                n.blksize = v.min(max_blksize.clamp(8, MAX_BLKSIZE) as u64) as u16;
                n.oack.push((name.clone(), n.blksize.to_string()));
            }
            ("tsize", Some(_)) => n.oack.push((name.clone(), file_size.to_string())),
            ("timeout", Some(v)) if (1..=255).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                n.oack.push((name.clone(), v.to_string()));
            }
            ("windowsize", Some(v)) if (1..=65535).contains(&v) => {
                n.windowsize = v.min(MAX_WINDOW as u64) as u16;
                n.oack.push((name.clone(), n.windowsize.to_string()));
            }
            _ => {}
        }
    }
    n
}

/// Map a requested file name to a regular file inside `root` (see the
/// module documentation for the rules).
pub fn resolve_path(root: &Path, filename: &str) -> Result<PathBuf, TftpError> {
    let name = filename.replace('\\', "/");
    let absolute = name.starts_with('/');
    let mut rel: &str = &name;
    if absolute {
        if let Ok(inside) = Path::new(&name).strip_prefix(root) {
            rel = inside.to_str().unwrap_or("");
        }
    }
    let mut path = root.to_path_buf();
    let mut parts = 0;
    for c in Path::new(rel.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => {
                path.push(p);
                parts += 1;
            }
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(TftpError::new(code::ACCESS, "'..' is not allowed"));
            }
        }
    }
    if parts == 0 {
        return Err(TftpError::new(code::ACCESS, "not a file"));
    }
    let real = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound && absolute => {
            return Err(TftpError::new(
                code::ACCESS,
                "absolute path outside the TFTP root",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TftpError::new(code::NOT_FOUND, "file not found"))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(TftpError::new(code::ACCESS, "permission denied"))
        }
        Err(e) => return Err(TftpError::new(code::NOT_FOUND, format!("cannot open: {e}"))),
    };
    let root_real = root
        .canonicalize()
        .map_err(|e| TftpError::new(code::UNDEFINED, format!("TFTP root unusable: {e}")))?;
    if !real.starts_with(&root_real) {
        return Err(TftpError::new(
            code::ACCESS,
            "path leads outside the TFTP root",
        ));
    }
    if !real.is_file() {
        return Err(TftpError::new(code::NOT_FOUND, "not a regular file"));
    }
    Ok(real)
}

/// Encode an ERROR packet.
pub fn encode_error(code: u16, msg: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + msg.len());
    p.extend_from_slice(&ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend(msg.bytes().filter(|b| *b != 0));
    p.push(0);
    p
}

/// Encode an OACK packet.
pub fn encode_oack(opts: &[(String, String)]) -> Vec<u8> {
    let mut p = OACK.to_be_bytes().to_vec();
    for (n, v) in opts {
        p.extend_from_slice(n.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// Largest block size that fits the MTU of the route of a connected
/// socket (IP_MTU); works in whatever network namespace the socket lives.
fn path_max_blksize(sock: &socket2::Socket) -> u16 {
    use std::os::fd::AsRawFd;
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mtu`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            &mut mtu as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 && mtu as u32 > HEADERS + 8 {
        (mtu as u32 - HEADERS).min(MAX_BLKSIZE as u32) as u16
    } else {
        MAX_BLKSIZE
    }
}

/// One file being sent.
struct Transfer {
    sock: mio::net::UdpSocket,
    peer: SocketAddr,
    /// The request that started it, to recognise retransmissions.
    request: Bytes,
    name: String,
    file: File,
    size: u64,
    blksize: usize,
    window: u64,
    timeout: Duration,
    /// Blocks in the file, the last one short (possibly empty).
    total: u64,
    /// OACK sent and not yet acknowledged with ACK 0, kept as sent for
    /// retransmission.
    oack: Option<Bytes>,
    /// First block not yet acknowledged.
    base: u64,
    /// Next block to send.
    next: u64,
    retries: u32,
    /// Sending stopped on a full socket buffer; resume at the deadline.
    stalled: bool,
    deadline: Instant,
    started: Instant,
    /// This transfer's row on the status page.
    progress: crate::progress::ActiveTransfer,
    /// Scratch for the DATA packet being built. Not `Bytes`: a block is
    /// read from the file again when it must be resent, so no packet
    /// outlives its send, and one reused allocation serves them all.
    buf: Vec<u8>,
}

enum Step {
    Continue,
    Done,
}

impl Transfer {
    fn wait(&self) -> Duration {
        (self.timeout * 2u32.saturating_pow(self.retries)).min(MAX_WAIT)
    }

    /// Send from `next` to the end of the window starting at `base`.
    fn send_window(&mut self, now: Instant) -> io::Result<()> {
        let end = (self.base + self.window).min(self.total + 1);
        self.stalled = false;
        while self.next < end {
            let n = self.next;
            let off = (n - 1) * self.blksize as u64;
            let want = (self.size.saturating_sub(off)).min(self.blksize as u64) as usize;
            self.buf.clear();
            self.buf.extend_from_slice(&DATA.to_be_bytes());
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
            self.buf.resize(4 + want, 0);
            let mut got = 0;
            while got < want {
                match self
                    .file
                    .read_at(&mut self.buf[4 + got..], off + got as u64)
                {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.buf.truncate(4 + got);
            match self.sock.send(&self.buf) {
                Ok(_) => self.next += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled = true;
                    self.deadline = now + Duration::from_millis(2);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.deadline = now + self.wait();
        Ok(())
    }

    fn on_packet(&mut self, pkt: &[u8], now: Instant) -> io::Result<Step> {
        if pkt.len() < 4 {
            tracing::debug!("tftp: {}: short packet ignored", self.peer);
            return Ok(Step::Continue);
        }
        let op = u16::from_be_bytes([pkt[0], pkt[1]]);
        let arg = u16::from_be_bytes([pkt[2], pkt[3]]);
        match op {
            ACK => {
                if self.oack.is_some() {
                    if arg == 0 {
                        self.oack = None;
                        self.base = 1;
                        self.next = 1;
                        self.retries = 0;
                        self.send_window(now)?;
                    }
                    return Ok(Step::Continue);
                }
                // Map the 16-bit block number into [base-1, next-1].
                let last_acked = self.base - 1;
                let ahead = arg.wrapping_sub(last_acked as u16) as u64;
                let n = last_acked + ahead;
                if ahead == 0 || n >= self.next {
                    return Ok(Step::Continue);
                }
                if n == self.total {
                    let secs = now.duration_since(self.started).as_secs_f64();
                    tracing::info!(
                        "tftp: {} sent {} ({} bytes) in {secs:.2}s",
                        self.peer,
                        self.name,
                        self.size
                    );
                    self.progress.done();
                    crate::progress::file_served(
                        "tftp",
                        self.peer.ip(),
                        &self.name,
                        self.size,
                        200,
                    );
                    return Ok(Step::Done);
                }
                self.base = n + 1;
                self.next = n + 1;
                self.retries = 0;
                self.progress.set_sent(n * self.blksize as u64);
                self.send_window(now)?;
                Ok(Step::Continue)
            }
            ERROR => {
                let msg = String::from_utf8_lossy(&pkt[4..]);
                let msg = msg.trim_end_matches('\0');
                if self.oack.is_some() && arg == code::OPTIONS {
                    tracing::debug!(
                        "tftp: {} ended {} after the OACK (error 8: {msg})",
                        self.peer,
                        self.name
                    );
                    self.progress.cancel();
                } else {
                    tracing::info!(
                        "tftp: {} aborted {}: error {arg}: {msg}",
                        self.peer,
                        self.name
                    );
                    self.progress
                        .fail(&format!("client sent error {arg}: {msg}"));
                }
                Ok(Step::Done)
            }
            _ => {
                tracing::debug!(
                    "tftp: {}: unexpected opcode {op} during transfer",
                    self.peer
                );
                Ok(Step::Continue)
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) -> io::Result<Step> {
        if self.stalled {
            self.send_window(now)?;
            return Ok(Step::Continue);
        }
        self.retries += 1;
        if self.retries > MAX_RETRIES {
            tracing::warn!(
                "tftp: {} gave up on {} at block {} after {MAX_RETRIES} retransmissions",
                self.peer,
                self.name,
                self.base
            );
            self.progress.fail(&format!(
                "no ACK for block {} after {MAX_RETRIES} retransmissions",
                self.base
            ));
            return Ok(Step::Done);
        }
        if let Some(o) = &self.oack {
            self.sock.send(o)?;
            self.deadline = now + self.wait();
        } else {
            self.next = self.base;
            self.send_window(now)?;
        }
        Ok(Step::Continue)
    }
}

fn udp_socket(addr: SocketAddr, interface: Option<&str>) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(i) = interface {
        s.bind_device(Some(i.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("tftp: bind to interface {i}: {e}")))?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("tftp: bind {addr}: {e}")))?;
    Ok(s)
}

struct Server {
    cfg: TftpConfig,
    poll: mio::Poll,
    listener: mio::net::UdpSocket,
    transfers: HashMap<usize, Transfer>,
    next_token: usize,
}

const LISTENER: mio::Token = mio::Token(0);

impl Server {
    fn ephemeral(&self) -> SocketAddr {
        SocketAddr::new(self.cfg.bind.ip(), 0)
    }

    /// Errors for requests go out from a fresh port, like any reply.
    fn send_error(&self, peer: SocketAddr, err: &TftpError) {
        let pkt = encode_error(err.code, &err.msg);
        let sent = udp_socket(self.ephemeral(), self.cfg.interface.as_deref())
            .and_then(|s| s.send_to(&pkt, &peer.into()));
        if sent.is_err() {
            let _ = self.listener.send_to(&pkt, peer);
        }
    }

    fn on_request(&mut self, pkt: &[u8], peer: SocketAddr, now: Instant) {
        if pkt.len() >= 2 && u16::from_be_bytes([pkt[0], pkt[1]]) == ERROR {
            // Never answer an error with an error.
            tracing::debug!("tftp: {peer}: stray ERROR packet ignored");
            return;
        }
        let req = match parse_request(pkt) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!("tftp: {peer}: bad request: {e}");
                self.send_error(peer, &e);
                return;
            }
        };
        if let Some(&token) = self
            .transfers
            .iter()
            .find(|(_, t)| t.peer == peer)
            .map(|(k, _)| k)
        {
            // Whatever the client sent that transfer before this request
            // comes first: typically the ERROR 8 ending a `tsize` probe.
            let mut buf = vec![0u8; 65536];
            self.drain(token, &mut buf, now);
        }
        if let Some((&token, t)) = self.transfers.iter().find(|(_, t)| t.peer == peer) {
            if t.request == pkt {
                // A retransmitted request: the transfer already answers it.
                tracing::debug!("tftp: {peer}: repeated request ignored");
                return;
            }
            // A different request from the same port: the client started
            // over, so drop the old transfer and serve the new request.
            tracing::info!(
                "tftp: {peer}: new request replaces the transfer of {}",
                t.name
            );
            self.finish(token);
        }
        if req.kind == ReqKind::Write {
            tracing::info!(
                "tftp: {peer}: write of {:?} refused (read-only server)",
                req.filename
            );
            self.send_error(peer, &TftpError::new(code::ACCESS, "read-only server"));
            return;
        }
        let path = match resolve_path(&self.cfg.root, &req.filename) {
            Ok(p) => p,
            Err(e) => {
                let what = if e.code == code::ACCESS {
                    "refused"
                } else {
                    "failed"
                };
                tracing::info!("tftp: {peer}: read of {:?} {what}: {e}", req.filename);
                crate::progress::file_failed("tftp", peer.ip(), &req.filename, 0, &e.to_string());
                self.send_error(peer, &e);
                return;
            }
        };
        if self.transfers.len() >= MAX_TRANSFERS {
            tracing::warn!("tftp: {peer}: {MAX_TRANSFERS} transfers running, request refused");
            self.send_error(
                peer,
                &TftpError::new(code::UNDEFINED, "server busy, try again"),
            );
            return;
        }
        let req_name = req.filename.clone();
        match self.start(req, pkt, path, peer, now) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("tftp: {peer}: cannot start transfer: {e}");
                crate::progress::file_failed("tftp", peer.ip(), &req_name, 0, &e.to_string());
                let code = if e.kind() == io::ErrorKind::PermissionDenied {
                    code::ACCESS
                } else {
                    code::UNDEFINED
                };
                self.send_error(peer, &TftpError::new(code, e.to_string()));
            }
        }
    }

    fn start(
        &mut self,
        req: Request,
        raw: &[u8],
        path: PathBuf,
        peer: SocketAddr,
        now: Instant,
    ) -> io::Result<()> {
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        let sock = udp_socket(self.ephemeral(), self.cfg.interface.as_deref())?;
        sock.connect(&peer.into())?;
        let neg = negotiate(&req.options, size, path_max_blksize(&sock));
        let mut sock = mio::net::UdpSocket::from_std(sock.into());
        let token = self.next_token;
        self.next_token += 1;
        self.poll
            .registry()
            .register(&mut sock, mio::Token(token), mio::Interest::READABLE)?;
        tracing::info!(
            "tftp: {peer}: sending {:?} ({size} bytes, blksize {}, window {}{})",
            req.filename,
            neg.blksize,
            neg.windowsize,
            if neg.oack.is_empty() { "" } else { ", OACK" }
        );
        let blksize = neg.blksize as usize;
        let progress =
            crate::progress::ActiveTransfer::begin("tftp", peer.ip(), &req.filename, size);
        let mut t = Transfer {
            sock,
            peer,
            request: Bytes::copy_from_slice(raw),
            name: req.filename,
            file,
            size,
            blksize,
            window: neg.windowsize as u64,
            timeout: neg.timeout,
            total: size / blksize as u64 + 1,
            oack: None,
            base: 1,
            next: 1,
            retries: 0,
            stalled: false,
            deadline: now,
            started: now,
            progress,
            buf: Vec::with_capacity(4 + blksize),
        };
        if neg.oack.is_empty() {
            t.send_window(now)?;
        } else {
            let o = Bytes::from(encode_oack(&neg.oack));
            t.sock.send(&o)?;
            t.oack = Some(o);
            t.deadline = now + t.wait();
        }
        self.transfers.insert(token, t);
        Ok(())
    }

    fn finish(&mut self, token: usize) {
        if let Some(mut t) = self.transfers.remove(&token) {
            let _ = self.poll.registry().deregister(&mut t.sock);
        }
    }

    /// Handle every packet waiting on a transfer's socket.
    fn drain(&mut self, token: usize, buf: &mut [u8], now: Instant) {
        while let Some(t) = self.transfers.get_mut(&token) {
            let step = match t.sock.recv(buf) {
                Ok(n) => t.on_packet(&buf[..n], now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // e.g. ICMP port unreachable: the client is gone.
                Err(e) => Err(e),
            };
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Done) => {
                    self.finish(token);
                    break;
                }
                Err(e) => {
                    tracing::info!("tftp: {} transfer of {} ended: {e}", t.peer, t.name);
                    t.progress.fail(&e.to_string());
                    self.finish(token);
                    break;
                }
            }
        }
    }

    fn run(mut self) {
        let mut events = mio::Events::with_capacity(64);
        let mut buf = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            let timeout = self
                .transfers
                .values()
                .map(|t| t.deadline.saturating_duration_since(now))
                .min();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("tftp: poll failed, server stops: {e}");
                return;
            }
            let now = Instant::now();
            // Transfers first (on_request also drains a transfer of the
            // same client before deciding whether a request is a repeat).
            let mut listener_ready = false;
            for ev in events.iter() {
                if ev.token() == LISTENER {
                    listener_ready = true;
                    continue;
                }
                self.drain(ev.token().0, &mut buf, now);
            }
            while listener_ready {
                match self.listener.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        let pkt = buf[..n].to_vec();
                        self.on_request(&pkt, peer, now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            tracing::warn!("tftp: receive: {e}");
                        }
                        listener_ready = false;
                    }
                }
            }
            let now = Instant::now();
            let due: Vec<usize> = self
                .transfers
                .iter()
                .filter(|(_, t)| t.deadline <= now)
                .map(|(k, _)| *k)
                .collect();
            for token in due {
                let Some(t) = self.transfers.get_mut(&token) else {
                    continue;
                };
                match t.on_timeout(now) {
                    Ok(Step::Continue) => {}
                    Ok(Step::Done) => self.finish(token),
                    Err(e) => {
                        tracing::info!("tftp: {} transfer of {} ended: {e}", t.peer, t.name);
                        self.finish(token);
                    }
                }
            }
        }
    }
}

/// Start the TFTP sidecar: the request socket is bound before this
/// returns (the server is ready when it does); a thread then serves
/// transfers for the life of the process.
pub fn spawn(cfg: TftpConfig) -> io::Result<JoinHandle<()>> {
    let meta = std::fs::metadata(&cfg.root)
        .map_err(|e| io::Error::new(e.kind(), format!("tftp: root {}: {e}", cfg.root.display())))?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tftp: root {} is not a directory", cfg.root.display()),
        ));
    }
    let s = udp_socket(cfg.bind, cfg.interface.as_deref())?;
    let mut listener = mio::net::UdpSocket::from_std(s.into());
    let poll = mio::Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, mio::Interest::READABLE)?;
    tracing::info!("tftp: serving {} on {}", cfg.root.display(), cfg.bind);
    let server = Server {
        cfg,
        poll,
        listener,
        transfers: HashMap::new(),
        next_token: 1,
    };
    std::thread::Builder::new()
        .name("bootlun-tftp".into())
        .spawn(move || server.run())
}

/// Local address of a config's request socket, for logs and tests.
pub fn default_bind(server_ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(server_ip), 69)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn rrq(name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut p = RRQ.to_be_bytes().to_vec();
        for f in [name, mode]
            .into_iter()
            .chain(opts.iter().flat_map(|(a, b)| [*a, *b]))
        {
            p.extend_from_slice(f.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn parse_requests() {
        let r = parse_request(&rrq(
            "pxe/undionly.kpxe",
            "OCTET",
            &[("BlkSize", "1468"), ("tsize", "0")],
        ))
        .unwrap();
        assert_eq!(r.kind, ReqKind::Read);
        assert_eq!(r.filename, "pxe/undionly.kpxe");
        assert_eq!(r.mode, "octet");
        assert_eq!(
            r.options,
            vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "0".into())
            ]
        );
        let mut w = rrq("f", "octet", &[]);
        w[1] = 2;
        assert_eq!(parse_request(&w).unwrap().kind, ReqKind::Write);
        // Padding NUL tolerated.
        let mut p = rrq("f", "octet", &[]);
        p.push(0);
        assert!(parse_request(&p).is_ok());
        let ill = |p: &[u8]| parse_request(p).unwrap_err().code;
        assert_eq!(ill(&[]), code::ILLEGAL);
        assert_eq!(ill(&[0, 1]), code::ILLEGAL);
        assert_eq!(ill(&[0, 1, b'f', 0, b'o']), code::ILLEGAL);
        assert_eq!(ill(&rrq("", "octet", &[])), code::ILLEGAL);
        assert_eq!(ill(&rrq("f", "mail", &[])), code::ILLEGAL);
        assert_eq!(ill(&rrq("f", "netascii", &[])), code::UNDEFINED);
        assert_eq!(ill(&[0, 1, b'f', 0]), code::ILLEGAL);
        assert_eq!(
            ill(&[0, 1, b'f', 0, b'o', b'c', b't', b'e', b't', 0, b'x', 0]),
            code::ILLEGAL
        );
        assert_eq!(ill(&[0, 9, b'f', 0]), code::ILLEGAL);
        assert_eq!(ill(&[0, 3, 0, 1]), code::ILLEGAL);
    }

    #[test]
    fn negotiation() {
        let o = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let n = negotiate(
            &o(&[
                ("blksize", "1468"),
                ("tsize", "0"),
                ("timeout", "3"),
                ("windowsize", "8"),
            ]),
            12345,
            65464,
        );
        assert_eq!(
            (n.blksize, n.windowsize, n.timeout),
            (1468, 8, Duration::from_secs(3))
        );
        assert_eq!(
            n.oack,
            o(&[
                ("blksize", "1468"),
                ("tsize", "12345"),
                ("timeout", "3"),
                ("windowsize", "8")
            ])
        );
        let n = negotiate(&o(&[("blksize", "65464")]), 1, 1468);
        assert_eq!(n.oack, o(&[("blksize", "1468")]));
        let n = negotiate(&o(&[("blksize", "99999")]), 1, 65464);
        assert_eq!(n.blksize, 65464);
        let n = negotiate(
            &o(&[
                ("blksize", "7"),
                ("timeout", "0"),
                ("timeout2", "1"),
                ("windowsize", "0"),
                ("multicast", ""),
            ]),
            1,
            65464,
        );
        assert!(n.oack.is_empty());
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        let n = negotiate(&o(&[("windowsize", "65535"), ("blksize", "x")]), 1, 65464);
        assert_eq!(n.oack, o(&[("windowsize", "64")]));
        assert_eq!(negotiate(&[], 5, 100).oack.len(), 0);
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("bootlun-tftp-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn path_jail() {
        let d = TempDir::new("jail");
        let root = d.0.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.efi"), b"a").unwrap();
        std::fs::write(d.0.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(d.0.join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink("sub/a.efi", root.join("inside")).unwrap();
        let ok = |n: &str| resolve_path(&root, n).unwrap();
        let err = |n: &str| resolve_path(&root, n).unwrap_err().code;
        let a = root.join("sub/a.efi").canonicalize().unwrap();
        assert_eq!(ok("sub/a.efi"), a);
        assert_eq!(ok("/sub/a.efi"), a);
        assert_eq!(ok("sub\\a.efi"), a);
        assert_eq!(ok("./sub//a.efi"), a);
        assert_eq!(ok("inside"), a);
        assert_eq!(ok(&format!("{}/sub/a.efi", root.display())), a);
        assert_eq!(err("../secret"), code::ACCESS);
        assert_eq!(err("sub/../../secret"), code::ACCESS);
        assert_eq!(err("sub/../sub/a.efi"), code::ACCESS);
        assert_eq!(err("..\\secret"), code::ACCESS);
        assert_eq!(err("/etc/passwd"), code::ACCESS);
        assert_eq!(err("escape"), code::ACCESS);
        assert_eq!(err("missing"), code::NOT_FOUND);
        assert_eq!(err("sub"), code::NOT_FOUND);
        assert_eq!(err("/"), code::ACCESS);
    }

    /// Minimal client for the loopback tests.
    struct Client {
        sock: UdpSocket,
        server: SocketAddr,
    }

    #[derive(Debug)]
    enum Got {
        File(Vec<u8>, Vec<(String, String)>),
        Error(u16, String),
    }

    impl Client {
        fn new(server: SocketAddr) -> Client {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Client { sock, server }
        }

        fn recv(&self, buf: &mut [u8]) -> (usize, SocketAddr) {
            self.sock
                .recv_from(buf)
                .expect("no reply from the TFTP server")
        }

        /// Fetch with the given options; `drop_first_of_block` makes the
        /// client ignore the first copy of that block (a lost packet).
        fn get(&self, name: &str, opts: &[(&str, &str)], lose: Option<u64>) -> Got {
            self.sock
                .send_to(&rrq(name, "octet", opts), self.server)
                .unwrap();
            let mut buf = vec![0u8; 70000];
            let mut data = Vec::new();
            let mut oack = Vec::new();
            let mut blksize = 512usize;
            let mut window = 1u64;
            let mut expect: u64 = 1;
            let mut in_window = 0u64;
            let mut lost = false;
            let mut gap_acked = false;
            let mut tid = None;
            loop {
                let (n, from) = self.recv(&mut buf);
                if let Some(t) = tid {
                    assert_eq!(from, t, "packet from a different TID");
                }
                tid = Some(from);
                let p = &buf[..n];
                let op = u16::from_be_bytes([p[0], p[1]]);
                match op {
                    ERROR => {
                        let msg = String::from_utf8_lossy(&p[4..n - 1]).to_string();
                        return Got::Error(u16::from_be_bytes([p[2], p[3]]), msg);
                    }
                    OACK => {
                        let f: Vec<&[u8]> = p[2..n - 1].split(|b| *b == 0).collect();
                        for kv in f.chunks(2) {
                            let (k, v) = (
                                String::from_utf8_lossy(kv[0]).to_string(),
                                String::from_utf8_lossy(kv[1]).to_string(),
                            );
                            match k.as_str() {
                                "blksize" => blksize = v.parse().unwrap(),
                                "windowsize" => window = v.parse().unwrap(),
                                _ => {}
                            }
                            oack.push((k, v));
                        }
                        self.sock.send_to(&[0, 4, 0, 0], from).unwrap();
                    }
                    DATA => {
                        let blk = u16::from_be_bytes([p[2], p[3]]);
                        if blk != expect as u16 {
                            // A gap: acknowledge what arrived in order, once,
                            // so the server resends from there (RFC 7440).
                            if !gap_acked && blk != (expect - 1) as u16 {
                                let b = ((expect - 1) as u16).to_be_bytes();
                                self.sock.send_to(&[0, 4, b[0], b[1]], from).unwrap();
                                gap_acked = true;
                                in_window = 0;
                            }
                            continue;
                        }
                        if lose == Some(expect) && !lost {
                            lost = true;
                            continue;
                        }
                        gap_acked = false;
                        data.extend_from_slice(&p[4..]);
                        in_window += 1;
                        let last = p.len() - 4 < blksize;
                        if last || in_window == window {
                            self.sock.send_to(&[0, 4, p[2], p[3]], from).unwrap();
                            in_window = 0;
                        }
                        if last {
                            return Got::File(data, oack);
                        }
                        expect += 1;
                    }
                    _ => panic!("unexpected opcode {op}"),
                }
            }
        }
    }

    fn server(tag: &str) -> (TempDir, SocketAddr) {
        let d = TempDir::new(tag);
        // Port 0: let the kernel pick, then look it up through a probe.
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let cfg = TftpConfig {
            bind: addr,
            interface: None,
            root: d.0.clone(),
        };
        spawn(cfg).unwrap();
        (d, addr)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 511) as u8).collect()
    }

    #[test]
    fn loopback_transfers() {
        let (d, addr) = server("xfer");
        let small = pattern(5000);
        std::fs::write(d.0.join("small"), &small).unwrap();
        std::fs::write(d.0.join("exact"), pattern(1024)).unwrap();
        std::fs::write(d.0.join("empty"), b"").unwrap();
        let c = Client::new(addr);
        let file = |g: Got| match g {
            Got::File(d, o) => (d, o),
            Got::Error(c, m) => panic!("error {c}: {m}"),
        };
        // Plain RFC 1350.
        let (got, oack) = file(c.get("small", &[], None));
        assert_eq!(got, small);
        assert!(oack.is_empty());
        // Multiple of the block size: trailing empty block.
        assert_eq!(
            file(Client::new(addr).get("exact", &[], None)).0,
            pattern(1024)
        );
        assert_eq!(file(Client::new(addr).get("empty", &[], None)).0, b"");
        // Options, window, a lost block in the middle of a window.
        let opts = [
            ("blksize", "700"),
            ("tsize", "0"),
            ("windowsize", "4"),
            ("foo", "bar"),
        ];
        let (got, oack) = file(Client::new(addr).get("/small", &opts, Some(3)));
        assert_eq!(got, small);
        let want: Vec<(String, String)> =
            [("blksize", "700"), ("tsize", "5000"), ("windowsize", "4")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        assert_eq!(oack, want);
        // Lost first block: retransmission after the timeout.
        let (got, _) = file(Client::new(addr).get("small", &[("blksize", "65464")], Some(1)));
        assert_eq!(got, small);
        // Errors.
        let err = |g: Got| match g {
            Got::Error(c, _) => c,
            Got::File(..) => panic!("expected an error"),
        };
        assert_eq!(
            err(Client::new(addr).get("missing", &[], None)),
            code::NOT_FOUND
        );
        assert_eq!(
            err(Client::new(addr).get("../etc/passwd", &[], None)),
            code::ACCESS
        );
        assert_eq!(
            err(Client::new(addr).get("/etc/passwd", &[], None)),
            code::ACCESS
        );
        let c = Client::new(addr);
        let mut w = rrq("small", "octet", &[]);
        w[1] = 2;
        c.sock.send_to(&w, addr).unwrap();
        let mut buf = [0u8; 600];
        let (n, _) = c.recv(&mut buf);
        assert_eq!(&buf[..4], &[0, 5, 0, 2]);
        assert_eq!(buf[n - 1], 0);
        c.sock.send_to(&[0, 7, 1, 2, 3], addr).unwrap();
        let (_, _) = c.recv(&mut buf);
        assert_eq!(&buf[..4], &[0, 5, 0, 4]);
        c.sock
            .send_to(&rrq("small", "netascii", &[]), addr)
            .unwrap();
        let (_, _) = c.recv(&mut buf);
        assert_eq!(&buf[..4], &[0, 5, 0, 0]);
    }

    #[test]
    fn tsize_probe_then_error_8_then_real_fetch() {
        let (d, addr) = server("probe");
        std::fs::write(d.0.join("snponly.efi"), pattern(3000)).unwrap();
        let c = Client::new(addr);
        c.sock
            .send_to(
                &rrq(
                    "snponly.efi",
                    "octet",
                    &[("tsize", "0"), ("blksize", "1468")],
                ),
                addr,
            )
            .unwrap();
        let mut buf = [0u8; 600];
        let (n, tid) = c.recv(&mut buf);
        assert_eq!(&buf[..2], &[0, 6]);
        assert!(buf[..n].windows(5).any(|w| w == b"3000\0"));
        c.sock
            .send_to(&encode_error(code::OPTIONS, "tsize probe done"), tid)
            .unwrap();
        // The server must stay quiet on that transfer (no retransmitted
        // OACK) and serve the real request from the same client port.
        match c.get("snponly.efi", &[("blksize", "1468")], None) {
            Got::File(d, _) => assert_eq!(d, pattern(3000)),
            Got::Error(c, m) => panic!("error {c}: {m}"),
        }
    }

    #[test]
    fn restart_from_same_port_replaces_transfer() {
        let (d, addr) = server("restart");
        std::fs::write(d.0.join("f"), pattern(5000)).unwrap();
        let c = Client::new(addr);
        c.sock.send_to(&rrq("f", "octet", &[]), addr).unwrap();
        let mut buf = [0u8; 600];
        let (_, tid) = c.recv(&mut buf);
        assert_eq!(&buf[..4], &[0, 3, 0, 1]);
        // A retransmitted request changes nothing...
        c.sock.send_to(&rrq("f", "octet", &[]), addr).unwrap();
        c.sock.send_to(&[0, 4, 0, 1], tid).unwrap();
        let (_, from) = c.recv(&mut buf);
        assert_eq!((from, &buf[..4]), (tid, &[0u8, 3, 0, 2][..]));
        // ...but a different request from the same port is a new transfer.
        match c.get("f", &[("blksize", "1024")], None) {
            Got::File(got, _) => assert_eq!(got, pattern(5000)),
            Got::Error(c, m) => panic!("error {c}: {m}"),
        }
        // Stray errors to port 69 get no answer; the next request does.
        c.sock.send_to(&encode_error(0, "stray"), addr).unwrap();
        assert_eq!(err_code(&c, "missing"), code::NOT_FOUND);
    }

    fn err_code(c: &Client, name: &str) -> u16 {
        match c.get(name, &[], None) {
            Got::Error(code, _) => code,
            Got::File(..) => panic!("expected an error"),
        }
    }

    #[test]
    fn backoff_then_give_up() {
        let d = TempDir::new("giveup");
        std::fs::write(d.0.join("f"), pattern(2000)).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sock = udp_socket("127.0.0.1:0".parse().unwrap(), None).unwrap();
        sock.connect(&client.local_addr().unwrap().into()).unwrap();
        let now = Instant::now();
        let mut t = Transfer {
            sock: mio::net::UdpSocket::from_std(sock.into()),
            peer: client.local_addr().unwrap(),
            request: Bytes::new(),
            name: "f".into(),
            file: File::open(d.0.join("f")).unwrap(),
            size: 2000,
            blksize: 512,
            window: 2,
            timeout: Duration::from_secs(2),
            total: 4,
            oack: None,
            base: 1,
            next: 1,
            retries: 0,
            stalled: false,
            deadline: now,
            started: now,
            progress: crate::progress::ActiveTransfer::begin(
                "tftp",
                client.local_addr().unwrap().ip(),
                "f",
                2000,
            ),
            buf: Vec::new(),
        };
        let mut buf = [0u8; 600];
        let mut block = || {
            let n = client.recv(&mut buf).unwrap();
            assert!(n >= 4 && buf[..2] == [0, 3]);
            u16::from_be_bytes([buf[2], buf[3]])
        };
        t.send_window(now).unwrap();
        assert_eq!((block(), block()), (1, 2));
        assert_eq!(t.deadline - now, Duration::from_secs(2));
        // Each timeout resends the whole window and doubles the wait.
        for retry in 1..=MAX_RETRIES {
            assert!(matches!(t.on_timeout(now).unwrap(), Step::Continue));
            assert_eq!((block(), block()), (1, 2));
            assert_eq!(
                t.deadline - now,
                (Duration::from_secs(2) * 2u32.pow(retry)).min(MAX_WAIT)
            );
        }
        assert!(matches!(t.on_timeout(now).unwrap(), Step::Done));
        // An ACK inside the window moves it: block 3 and the final 4.
        let mut t2 = t;
        t2.retries = 0;
        t2.base = 1;
        t2.next = 3;
        assert!(matches!(
            t2.on_packet(&[0, 4, 0, 2], now).unwrap(),
            Step::Continue
        ));
        assert_eq!((block(), block()), (3, 4));
        assert!(
            matches!(t2.on_packet(&[0, 4, 0, 2], now).unwrap(), Step::Continue),
            "duplicate ACK"
        );
        assert!(matches!(
            t2.on_packet(&[0, 4, 0, 4], now).unwrap(),
            Step::Done
        ));
    }

    #[test]
    fn block_number_rollover() {
        let (d, addr) = server("roll");
        // 65536 blocks of 512 bytes and a bit: block numbers wrap to 0.
        let data = pattern(32 * 1024 * 1024 + 777);
        std::fs::write(d.0.join("big"), &data).unwrap();
        match Client::new(addr).get("big", &[("windowsize", "16")], None) {
            Got::File(got, _) => assert!(got == data, "rolled-over transfer differs"),
            Got::Error(c, m) => panic!("error {c}: {m}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_request_never_panics(pkt in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_request(&pkt);
        }

        #[test]
        fn parse_wellformed_options(
            name in "[a-zA-Z0-9_./-]{1,40}",
            opts in proptest::collection::vec(("[a-z]{1,10}", "[0-9]{0,6}"), 0..6),
        ) {
            let o: Vec<(&str, &str)> = opts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let r = parse_request(&rrq(&name, "octet", &o)).unwrap();
            proptest::prop_assert_eq!(r.filename, name);
            let neg = negotiate(&r.options, 1000, 1468);
            proptest::prop_assert!(neg.blksize >= 8 && neg.blksize <= 1468);
            proptest::prop_assert!(neg.windowsize >= 1 && neg.windowsize <= MAX_WINDOW);
        }

        #[test]
        fn resolve_never_escapes(name in "[a-z./\\\\]{1,30}") {
            let root = std::env::temp_dir();
            if let Ok(p) = resolve_path(&root, &name) {
                proptest::prop_assert!(p.starts_with(root.canonicalize().unwrap()));
            }
        }
    }
}
