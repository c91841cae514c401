//! The real engine and iSCSI target, in process, fed whole sessions: each
//! input logs in properly (with negotiated parameters taken from the
//! input), then sends a structure-aware sequence of PDUs (initiator
//! opcodes and a few invalid ones, tags and sequence numbers that are
//! right, stale or random, data segments consistent with the bytes sent
//! or not, Data-Out aimed at the R2Ts the target sent or elsewhere),
//! drains the answers with short timeouts, and closes.
//!
//! A panic on any engine thread aborts the process, so libFuzzer reports
//! it. Every 32 inputs, and when an input ends, a well-behaved client on a
//! second LUN (never addressed by the fuzzed PDUs) logs in, writes a
//! pattern and reads it back; a hang or a lost write fails the run.
#![no_main]

use arbitrary::Arbitrary;
use bootlun_engine::{open_backend, Engine, EngineConfig, LunSpec};
use bootlun_frontends::iscsi::negotiate::Limits;
use bootlun_frontends::iscsi::wire::{decode_lun, digest, digest_bytes};
use bootlun_frontends::iscsi::{IscsiService, Lun, TargetShared};
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const TARGET: &str = "iqn.2026-11.org.bootlun:fuzz";
const BLOCKS_LUN0: u64 = 16 * 2048; // 16 MiB of 512-byte blocks
/// LUN reserved for the health check.
const CHECK_LUN: u64 = 1;

struct Target {
    addr: SocketAddr,
    _engine: Engine,
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            prev(info);
            std::process::abort();
        }));
        let mut luns = Vec::new();
        for (i, spec) in ["ram:16M", "ram:1M"].iter().enumerate() {
            let spec = LunSpec::parse(spec).unwrap();
            let backend = open_backend(&spec, i).unwrap();
            luns.push(Lun::new(backend, TARGET, 32 << 20));
        }
        let buffer_size = 256 * 1024;
        let limits = Limits {
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: buffer_size * 16,
            first_burst_length: buffer_size,
            ..Limits::default()
        };
        let mut shared = TargetShared::new(TARGET.into(), luns, limits, 32);
        shared.login_timeout_secs = 5;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = EngineConfig {
            cores: vec![0],
            buffers: 32,
            buffer_size: buffer_size as usize,
            ..Default::default()
        };
        let engine = Engine::start(cfg, listener, Arc::new(IscsiService { shared: Arc::new(shared) })).unwrap();
        Target { addr: engine.local_addr, _engine: engine }
    })
}

// ----------------------------------------------------------------------
// A minimal initiator

struct Client {
    s: TcpStream,
    hd: bool,
    dd: bool,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    rx: Vec<u8>,
    closed: bool,
    /// R2Ts received: (ITT, TTT, offset, length).
    r2ts: Vec<(u32, u32, u32, u32)>,
    /// Outstanding writes by ITT: data bytes needed, ranges sent.
    writes: HashMap<u32, (u64, Vec<(u64, u64)>)>,
    /// ITTs reused while outstanding: not judged.
    ambiguous: HashSet<u32>,
    /// A header's data length differed from the bytes sent (or an AHS was
    /// claimed): the target's framing is no longer ours, writes are not
    /// judged.
    lied: bool,
}

/// Data bytes a write CDB moves at most.
fn write_len(cdb: &[u8]) -> Option<u64> {
    let be = |r: std::ops::Range<usize>| cdb[r].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
    match cdb[0] {
        0x2a | 0x2e => Some(be(7..9) * 512),
        0x8a => Some(be(10..14) * 512),
        _ => None,
    }
}

/// Whether to judge acknowledged writes (GOOD status only once every
/// byte was sent). `BOOTLUN_FUZZ_ACK=0` turns it off; `=lenient`
/// tolerates writes whose data was sent with overlaps (the target now
/// refuses those, so any hit is a regression).
fn ack_mode() -> u8 {
    static M: OnceLock<u8> = OnceLock::new();
    *M.get_or_init(|| match std::env::var("BOOTLUN_FUZZ_ACK").as_deref() {
        Ok("0") => 0,
        Ok("lenient") => 1,
        _ => 2,
    })
}

fn put_u32(b: &mut [u8; 48], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}

fn keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

static CONN_COUNTER: AtomicU64 = AtomicU64::new(1);

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the target");
        s.set_nodelay(true).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        Client {
            s,
            hd: false,
            dd: false,
            itt: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            rx: Vec::new(),
            closed: false,
            r2ts: Vec::new(),
            writes: HashMap::new(),
            ambiguous: HashSet::new(),
            lied: false,
        }
    }

    fn track(&mut self, bhs: &[u8; 48], dsl: u32, sent: usize) {
        if dsl as usize != sent || bhs[4] != 0 {
            self.lied = true;
        }
        let itt = u32_at(bhs, 16);
        match bhs[0] & 0x3f {
            0x01 => {
                if self.writes.contains_key(&itt) {
                    self.ambiguous.insert(itt);
                }
                if let Some(wanted) = write_len(&bhs[32..48]) {
                    let xfer = wanted.min(u64::from(u32_at(bhs, 20)));
                    let ranges = if dsl > 0 { vec![(0, u64::from(dsl))] } else { Vec::new() };
                    self.writes.insert(itt, (xfer - xfer % 512, ranges));
                }
            }
            0x05 => {
                if let Some(w) = self.writes.get_mut(&itt) {
                    let off = u64::from(u32_at(bhs, 40));
                    w.1.push((off, off + u64::from(dsl)));
                }
            }
            _ => {}
        }
    }

    /// A SCSI Response for `itt`: GOOD for a write means all its data was
    /// sent.
    fn judge(&mut self, itt: u32, good: bool) {
        let Some((need, ranges)) = self.writes.remove(&itt) else { return };
        if !good || self.lied || self.ambiguous.contains(&itt) || ack_mode() == 0 {
            return;
        }
        let mut r: Vec<(u64, u64)> =
            ranges.iter().map(|&(a, b)| (a.min(need), b.min(need))).filter(|(a, b)| a < b).collect();
        let with_overlaps: u64 = r.iter().map(|(a, b)| b - a).sum();
        r.sort();
        let (mut covered, mut end) = (0u64, 0u64);
        for (a, b) in r {
            let a = a.max(end);
            if b > a {
                covered += b - a;
                end = b;
            }
        }
        if covered < need && (with_overlaps < need || ack_mode() == 2) {
            panic!(
                "GOOD status for write ITT {itt:#x} with {covered} of its {need} data bytes sent \
                 ({with_overlaps} counting overlaps): acknowledged data never received"
            );
        }
    }

    /// Send one PDU. `dsl` is what the header claims; `data` what follows
    /// (padded to 4). Digests are added when negotiated, and spoiled when
    /// `bad_digest`.
    fn send(&mut self, mut bhs: [u8; 48], dsl: u32, data: &[u8], bad_digest: bool) {
        if self.closed {
            return;
        }
        self.track(&bhs, dsl, data.len());
        bhs[5] = (dsl >> 16) as u8;
        bhs[6] = (dsl >> 8) as u8;
        bhs[7] = dsl as u8;
        let mut buf = Vec::with_capacity(48 + data.len() + 12);
        buf.extend_from_slice(&bhs);
        if self.hd {
            let mut c = digest(&[&bhs]);
            if bad_digest {
                c ^= 1;
            }
            buf.extend_from_slice(&digest_bytes(c));
        }
        if !data.is_empty() {
            buf.extend_from_slice(data);
            let pad = (4 - data.len() % 4) % 4;
            buf.extend(std::iter::repeat_n(0u8, pad));
            if self.dd {
                let mut c = digest(&[&buf[buf.len() - data.len() - pad..]]);
                if bad_digest {
                    c ^= 2;
                }
                buf.extend_from_slice(&digest_bytes(c));
            }
        }
        if self.s.write_all(&buf).is_err() {
            self.closed = true;
        }
    }

    /// Read whatever arrives within `wait`, parsing PDUs as they complete.
    /// Returns the PDUs (header, data).
    fn pump(&mut self, wait: Duration) -> Vec<([u8; 48], Vec<u8>)> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        let deadline = Instant::now() + wait;
        let mut chunk = [0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.s.set_read_timeout(Some(left.max(Duration::from_micros(100)))).unwrap();
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
            let before = out.len();
            self.parse_rx(&mut out);
            if out.len() > before {
                // Return as soon as something came.
                break;
            }
        }
        self.parse_rx(&mut out);
        out
    }

    fn parse_rx(&mut self, out: &mut Vec<([u8; 48], Vec<u8>)>) {
        loop {
            if self.rx.len() < 48 {
                return;
            }
            let ahs = self.rx[4] as usize * 4;
            let dsl = u32::from_be_bytes([0, self.rx[5], self.rx[6], self.rx[7]]) as usize;
            let hlen = 48 + ahs + if self.hd { 4 } else { 0 };
            let padded = dsl.div_ceil(4) * 4;
            let total = hlen + padded + if self.dd && dsl > 0 { 4 } else { 0 };
            if self.rx.len() < total {
                return;
            }
            let bhs: [u8; 48] = self.rx[..48].try_into().unwrap();
            let data = self.rx[hlen..hlen + dsl].to_vec();
            self.rx.drain(..total);
            if bhs[0] & 0x3f == 0x31 {
                self.r2ts.push((u32_at(&bhs, 16), u32_at(&bhs, 20), u32_at(&bhs, 40), u32_at(&bhs, 44)));
                if self.r2ts.len() > 64 {
                    self.r2ts.remove(0);
                }
            }
            // StatSN tracking for responses that carry it.
            let op = bhs[0] & 0x3f;
            if op == 0x21 {
                self.judge(u32_at(&bhs, 16), bhs[2] == 0 && bhs[3] == 0);
            }
            if matches!(op, 0x21 | 0x22 | 0x24 | 0x26 | 0x3f) || (op == 0x25 && bhs[1] & 1 != 0) {
                self.exp_stat_sn = u32_at(&bhs, 24).wrapping_add(1);
            }
            out.push((bhs, data));
        }
    }

    /// A full login; false when the target refused or did not answer.
    fn login(&mut self, op: &[(&str, String)]) -> Result<(), String> {
        let n = CONN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let isid = [0x80, 0, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8];
        let stage = |this: &mut Client, csg: u8, nsg: u8, text: Vec<u8>| -> Result<[u8; 48], String> {
            let mut b = [0u8; 48];
            b[0] = 0x43;
            b[1] = 0x80 | (csg << 2) | nsg;
            b[8..14].copy_from_slice(&isid);
            put_u32(&mut b, 16, this.itt);
            put_u32(&mut b, 24, this.cmd_sn);
            put_u32(&mut b, 28, this.exp_stat_sn);
            let len = text.len() as u32;
            this.send(b, len, &text, false);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !this.closed {
                for (h, _) in this.pump(Duration::from_millis(200)) {
                    if h[0] & 0x3f != 0x23 {
                        return Err(format!("login: got opcode {:#x}", h[0] & 0x3f));
                    }
                    if h[36] != 0 {
                        return Err(format!("login refused: {:02x}{:02x}", h[36], h[37]));
                    }
                    this.exp_stat_sn = u32_at(&h, 24).wrapping_add(1);
                    return Ok(h);
                }
            }
            Err(format!("no login response (closed: {})", this.closed))
        };
        let sec = keys(&[
            ("InitiatorName", "iqn.2026-11.org.bootlun:fuzz-initiator"),
            ("SessionType", "Normal"),
            ("TargetName", TARGET),
            ("AuthMethod", "None"),
        ]);
        let h = stage(self, 0, 1, sec)?;
        if h[1] & 0x83 != 0x81 {
            return Err(format!("security stage answered flags {:#x}", h[1]));
        }
        let pairs: Vec<(&str, &str)> = op.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let h = stage(self, 1, 3, keys(&pairs))?;
        if h[1] & 0x83 != 0x83 {
            return Err(format!("operational stage answered flags {:#x}", h[1]));
        }
        self.cmd_sn = u32_at(&h, 28);
        self.itt = self.itt.wrapping_add(1);
        Ok(())
    }
}

/// The well-behaved client: log in, write a pattern to the check LUN,
/// read it back.
fn health_check(round: u64) {
    let t = target();
    let mut c = Client::connect(t.addr);
    let op = vec![
        ("HeaderDigest", "None".to_string()),
        ("DataDigest", "None".to_string()),
        ("InitialR2T", "Yes".to_string()),
        ("ImmediateData", "Yes".to_string()),
        ("MaxRecvDataSegmentLength", "262144".to_string()),
    ];
    if let Err(e) = c.login(&op) {
        panic!("health check: a good login failed: {e}");
    }
    let lba = (round % 1024) as u32 * 2;
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i as u64 ^ round).wrapping_mul(31) as u8).collect();
    // WRITE(10), 2 blocks, all immediate.
    let mut b = [0u8; 48];
    b[0] = 0x01;
    b[1] = 0x80 | 0x20 | 0x01;
    b[8..16].copy_from_slice(&(CHECK_LUN << 48).to_be_bytes());
    put_u32(&mut b, 16, c.itt);
    put_u32(&mut b, 20, 1024);
    put_u32(&mut b, 24, c.cmd_sn);
    put_u32(&mut b, 28, c.exp_stat_sn);
    b[32] = 0x2a;
    b[34..38].copy_from_slice(&lba.to_be_bytes());
    b[40] = 2;
    c.send(b, 1024, &pattern, false);
    let itt = c.itt;
    let status = wait_status(&mut c, itt).unwrap_or_else(|e| panic!("health check write: {e}"));
    assert_eq!(status.0, 0, "health check write status {:#x}", status.0);
    c.itt += 1;
    c.cmd_sn = c.cmd_sn.wrapping_add(1);
    // READ(10), 2 blocks.
    b[1] = 0x80 | 0x40 | 0x01;
    put_u32(&mut b, 16, c.itt);
    put_u32(&mut b, 24, c.cmd_sn);
    put_u32(&mut b, 28, c.exp_stat_sn);
    b[32] = 0x28;
    c.send(b, 0, &[], false);
    let itt = c.itt;
    let (st, data) = wait_status(&mut c, itt).unwrap_or_else(|e| panic!("health check read: {e}"));
    assert_eq!(st, 0, "health check read status");
    assert!(data == pattern, "health check: the pattern written at LBA {lba} did not read back");
}

/// Collect Data-In and status for `itt`.
fn wait_status(c: &mut Client, itt: u32) -> Result<(u8, Vec<u8>), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut data = Vec::new();
    while Instant::now() < deadline {
        if c.closed {
            return Err("connection closed".into());
        }
        for (h, d) in c.pump(Duration::from_millis(100)) {
            let op = h[0] & 0x3f;
            if u32_at(&h, 16) != itt {
                continue;
            }
            match op {
                0x25 => {
                    data.extend_from_slice(&d);
                    if h[1] & 1 != 0 {
                        return Ok((h[3], data));
                    }
                }
                0x21 => return Ok((h[3], data)),
                _ => return Err(format!("unexpected opcode {op:#x}")),
            }
        }
    }
    Err("no status within 10 s: the target hung".into())
}

// ----------------------------------------------------------------------
// Input structure

#[derive(Arbitrary, Debug)]
struct Session {
    hd: bool,
    dd: bool,
    initial_r2t: bool,
    immediate_data: bool,
    first_burst: u8,
    max_burst: u8,
    mrdsl: u8,
    pdus: Vec<Pdu>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Tag {
    Next,
    LastCmd,
    Reserved,
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SnSel {
    Right,
    Same,
    Behind(u8),
    Ahead(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum LunSel {
    Zero,
    Missing,
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone)]
enum Cdb {
    Write10 { lba: u16, blocks: u8, fua: bool },
    Read10 { lba: u16, blocks: u8 },
    Write16 { lba: u64, blocks: u32 },
    Read16 { lba: u64, blocks: u32 },
    Verify10 { lba: u16, blocks: u8, bytchk: u8 },
    WriteVerify10 { lba: u16, blocks: u8 },
    Sync,
    TestUnitReady,
    Inquiry(u16),
    ReportLuns(u32),
    Raw([u8; 16]),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum DataLen {
    /// DataSegmentLength matches the bytes sent.
    Exact(u16),
    /// Exactly the expected transfer length / the R2T's length.
    Natural,
    /// The header claims `claim`, `sent` bytes follow (out of sync).
    Lie { claim: u32, sent: u16 },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Offset {
    /// The offset of the matching R2T (or 0), plus a delta.
    R2t(i16),
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Nop { ping: bool, ttt: Tag },
    Scsi { cdb: Cdb, r: bool, w: bool, edtl: Option<u32>, attr: u8, ahs: u8 },
    Tmf { function: u8, referenced: Tag },
    Text { text: Vec<u8>, cont: bool, ttt: Tag },
    /// `data_sn: None` numbers Data-Out per (ITT, TTT) from 0, as an
    /// initiator would.
    DataOut { ttt: Option<Tag>, offset: Offset, data_sn: Option<u32>, fin: bool, r2t_pick: u8 },
    Logout { reason: u8 },
    Snack,
    Login,
    Other(u8),
}

#[derive(Arbitrary, Debug, Clone)]
struct Pdu {
    op: Op,
    immediate: bool,
    itt: Tag,
    cmd_sn: SnSel,
    lun: LunSel,
    len: DataLen,
    fill: u8,
    bad_digest: bool,
    /// Wait briefly for answers (R2Ts) after this PDU.
    wait: bool,
}

fn lun_field(sel: LunSel) -> u64 {
    let raw = match sel {
        LunSel::Zero => 0,
        LunSel::Missing => 7 << 48,
        LunSel::Raw(r) => r,
    };
    // Never touch the health check's LUN.
    if decode_lun(raw) == CHECK_LUN {
        0
    } else {
        raw
    }
}

fn cdb_bytes(c: &Cdb) -> ([u8; 16], u32) {
    let mut b = [0u8; 16];
    let mut xfer = 0u32;
    match c {
        Cdb::Write10 { lba, blocks, .. } | Cdb::WriteVerify10 { lba, blocks } => {
            let fua = matches!(c, Cdb::Write10 { fua: true, .. });
            b[0] = if matches!(c, Cdb::WriteVerify10 { .. }) { 0x2e } else { 0x2a };
            b[1] = if fua { 0x08 } else { 0 };
            b[2..6].copy_from_slice(&u32::from(*lba).to_be_bytes());
            b[8] = *blocks;
            xfer = u32::from(*blocks) * 512;
        }
        Cdb::Read10 { lba, blocks } => {
            b[0] = 0x28;
            b[2..6].copy_from_slice(&u32::from(*lba).to_be_bytes());
            b[8] = *blocks;
            xfer = u32::from(*blocks) * 512;
        }
        Cdb::Write16 { lba, blocks } | Cdb::Read16 { lba, blocks } => {
            b[0] = if matches!(c, Cdb::Write16 { .. }) { 0x8a } else { 0x88 };
            let lba = lba % (BLOCKS_LUN0 + 64);
            let blocks = blocks % 2048;
            b[2..10].copy_from_slice(&lba.to_be_bytes());
            b[10..14].copy_from_slice(&blocks.to_be_bytes());
            xfer = blocks * 512;
        }
        Cdb::Verify10 { lba, blocks, bytchk } => {
            b[0] = 0x2f;
            b[1] = (bytchk & 3) << 1;
            b[2..6].copy_from_slice(&u32::from(*lba).to_be_bytes());
            b[8] = *blocks;
            xfer = u32::from(*blocks) * 512;
        }
        Cdb::Sync => b[0] = 0x35,
        Cdb::TestUnitReady => {}
        Cdb::Inquiry(n) => {
            b[0] = 0x12;
            b[3..5].copy_from_slice(&n.to_be_bytes());
            xfer = u32::from(*n);
        }
        Cdb::ReportLuns(n) => {
            b[0] = 0xa0;
            b[6..10].copy_from_slice(&n.to_be_bytes());
            xfer = *n;
        }
        Cdb::Raw(r) => b = *r,
    }
    (b, xfer)
}

struct State {
    last_cmd_itt: u32,
    /// (ITT, expected transfer length) of write commands sent.
    writes: Vec<(u32, u32)>,
    /// Next DataSN by (ITT, TTT).
    data_sns: HashMap<(u32, u32), u32>,
}

fn tag(c: &mut Client, st: &State, t: Tag) -> u32 {
    match t {
        Tag::Next => {
            c.itt = c.itt.wrapping_add(1);
            if c.itt == u32::MAX {
                c.itt = 1;
            }
            c.itt
        }
        Tag::LastCmd => st.last_cmd_itt,
        Tag::Reserved => u32::MAX,
        Tag::Raw(v) => v,
    }
}

fn cmd_sn(c: &mut Client, sel: SnSel, immediate: bool) -> u32 {
    match sel {
        SnSel::Right => {
            let v = c.cmd_sn;
            if !immediate {
                c.cmd_sn = c.cmd_sn.wrapping_add(1);
            }
            v
        }
        SnSel::Same => c.cmd_sn.wrapping_sub(1),
        SnSel::Behind(n) => c.cmd_sn.wrapping_sub(u32::from(n) + 1),
        SnSel::Ahead(n) => c.cmd_sn.wrapping_add(u32::from(n) + 1),
        SnSel::Raw(v) => v,
    }
}

fn send_pdu(c: &mut Client, st: &mut State, p: &Pdu, max_len: u32) {
    let mut b = [0u8; 48];
    let mut natural = 0u32;
    let imm = if p.immediate { 0x40 } else { 0 };
    b[8..16].copy_from_slice(&lun_field(p.lun).to_be_bytes());
    let mut text: Option<Vec<u8>> = None;
    match &p.op {
        Op::Nop { ping, ttt } => {
            b[0] = imm;
            b[1] = 0x80;
            let itt = if *ping { tag(c, st, p.itt) } else { u32::MAX };
            put_u32(&mut b, 16, itt);
            put_u32(&mut b, 20, tag(c, st, *ttt));
            put_u32(&mut b, 24, cmd_sn(c, p.cmd_sn, true));
        }
        Op::Scsi { cdb, r, w, edtl, attr, ahs } => {
            let (bytes, xfer) = cdb_bytes(cdb);
            b[0] = imm | 0x01;
            b[1] = 0x80 | if *r { 0x40 } else { 0 } | if *w { 0x20 } else { 0 } | (attr & 7);
            if *ahs > 250 {
                b[4] = ahs & 3;
            }
            let itt = tag(c, st, p.itt);
            st.last_cmd_itt = itt;
            let edtl = edtl.map(|e| e % (1 << 22)).unwrap_or(xfer);
            put_u32(&mut b, 16, itt);
            put_u32(&mut b, 20, edtl);
            put_u32(&mut b, 24, cmd_sn(c, p.cmd_sn, p.immediate));
            b[32..48].copy_from_slice(&bytes);
            if *w {
                st.writes.push((itt, edtl));
                natural = edtl;
            }
        }
        Op::Tmf { function, referenced } => {
            b[0] = imm | 0x02;
            b[1] = 0x80 | (function % 10);
            put_u32(&mut b, 16, tag(c, st, p.itt));
            put_u32(&mut b, 20, tag(c, st, *referenced));
            put_u32(&mut b, 24, cmd_sn(c, p.cmd_sn, p.immediate));
        }
        Op::Text { text: t, cont, ttt } => {
            b[0] = imm | 0x04;
            b[1] = if *cont { 0x40 } else { 0x80 };
            put_u32(&mut b, 16, tag(c, st, p.itt));
            put_u32(&mut b, 20, tag(c, st, *ttt));
            put_u32(&mut b, 24, cmd_sn(c, p.cmd_sn, p.immediate));
            let mut t = t.clone();
            if t.len() % 3 == 0 {
                t.splice(0..0, b"SendTargets=All\0".iter().copied());
            }
            natural = t.len() as u32;
            text = Some(t);
        }
        Op::DataOut { ttt, offset, data_sn, fin, r2t_pick } => {
            b[0] = 0x05;
            b[1] = if *fin { 0x80 } else { 0 };
            // Aim at an R2T the target sent, or at an earlier write.
            let r2t = if c.r2ts.is_empty() {
                None
            } else {
                Some(c.r2ts[*r2t_pick as usize % c.r2ts.len()])
            };
            let (itt, r_ttt, r_off, r_len) = match (r2t, p.itt) {
                (Some(r), Tag::Next | Tag::LastCmd) => r,
                (_, t) => {
                    let itt = match t {
                        Tag::LastCmd | Tag::Next => st
                            .writes
                            .get(*r2t_pick as usize % st.writes.len().max(1))
                            .map(|w| w.0)
                            .unwrap_or(st.last_cmd_itt),
                        t => tag(c, st, t),
                    };
                    (itt, u32::MAX, 0, st.writes.iter().find(|w| w.0 == itt).map(|w| w.1).unwrap_or(512))
                }
            };
            put_u32(&mut b, 16, itt);
            put_u32(&mut b, 20, match ttt {
                None => r_ttt,
                Some(t) => tag(c, st, *t),
            });
            put_u32(&mut b, 28, c.exp_stat_sn);
            let key = (itt, u32_at(&b, 20));
            let next = st.data_sns.entry(key).or_insert(0);
            put_u32(&mut b, 36, data_sn.unwrap_or(*next));
            *next = next.wrapping_add(1);
            let off = match offset {
                Offset::R2t(d) => r_off.wrapping_add(*d as i32 as u32),
                Offset::Raw(v) => *v,
            };
            put_u32(&mut b, 40, off);
            natural = r_len;
        }
        Op::Logout { reason } => {
            b[0] = imm | 0x06;
            b[1] = 0x80 | (reason & 3);
            put_u32(&mut b, 16, tag(c, st, p.itt));
            put_u32(&mut b, 24, cmd_sn(c, p.cmd_sn, p.immediate));
        }
        Op::Snack => {
            b[0] = 0x10;
            b[1] = 0x80;
            put_u32(&mut b, 16, tag(c, st, p.itt));
        }
        Op::Login => {
            b[0] = 0x43;
            b[1] = 0x87;
            put_u32(&mut b, 16, tag(c, st, p.itt));
        }
        Op::Other(v) => {
            // Target opcodes and undefined ones.
            let ops = [0x07, 0x0f, 0x1c, 0x1d, 0x1e, 0x20, 0x21, 0x25, 0x31, 0x3f];
            b[0] = ops[*v as usize % ops.len()] | imm;
            b[1] = v & 0x80;
            put_u32(&mut b, 16, tag(c, st, p.itt));
        }
    }
    if !matches!(p.op, Op::DataOut { .. }) {
        put_u32(&mut b, 28, c.exp_stat_sn);
    }
    let (claim, sent) = match p.len {
        DataLen::Exact(n) => (u32::from(n) % (max_len + 1), None),
        DataLen::Natural => (natural.min(max_len), None),
        DataLen::Lie { claim, sent } => (claim & 0xff_ffff, Some(u32::from(sent))),
    };
    let sent = sent.unwrap_or(claim) as usize;
    let data: Vec<u8> = match text {
        Some(mut t) => {
            t.resize(sent, 0);
            t
        }
        None => vec![p.fill; sent],
    };
    c.send(b, claim, &data, p.bad_digest);
}

static INPUTS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|s: Session| {
    let t = target();
    let n = INPUTS.fetch_add(1, Ordering::Relaxed);
    if n % 32 == 0 {
        health_check(n);
    }
    let mut c = Client::connect(t.addr);
    let bursts = [512u32, 4096, 65536, 262144, 1 << 20];
    let first = bursts[s.first_burst as usize % 4];
    let max = bursts[s.max_burst as usize % bursts.len()].max(first);
    let mrdsl = [512u32, 8192, 65536, 262144][s.mrdsl as usize % 4];
    let yn = |b: bool| if b { "Yes" } else { "No" }.to_string();
    let dg = |b: bool| if b { "CRC32C" } else { "None" }.to_string();
    let op = vec![
        ("HeaderDigest", dg(s.hd)),
        ("DataDigest", dg(s.dd)),
        ("MaxRecvDataSegmentLength", mrdsl.to_string()),
        ("InitialR2T", yn(s.initial_r2t)),
        ("ImmediateData", yn(s.immediate_data)),
        ("FirstBurstLength", first.to_string()),
        ("MaxBurstLength", max.to_string()),
        ("ErrorRecoveryLevel", "0".to_string()),
    ];
    if let Err(e) = c.login(&op) {
        panic!("a valid login failed: {e}");
    }
    c.hd = s.hd;
    c.dd = s.dd;
    let mut st = State { last_cmd_itt: 0, writes: Vec::new(), data_sns: HashMap::new() };
    // What the target declared is at least 8192 (ours: 256 KiB); stay
    // below that for the data lengths so most PDUs are not refused
    // outright, except when lying on purpose.
    for p in s.pdus.iter().take(48) {
        if c.closed {
            break;
        }
        send_pdu(&mut c, &mut st, p, 256 * 1024);
        let wait = if p.wait { Duration::from_millis(5) } else { Duration::ZERO };
        c.pump(wait.max(Duration::from_micros(200)));
    }
    // Drain briefly, then close.
    let _ = c.pump(Duration::from_millis(10));
    drop(c);
});
