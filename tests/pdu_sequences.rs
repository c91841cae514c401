//! Hostile PDU sequences against a running target, deterministic.
//!
//! A seeded xorshift generator builds a bounded number of sessions. Each
//! one logs in properly on a fresh connection, first writes a known
//! pattern with a well-formed WRITE (acknowledged data), then sends up to
//! `MAX_PDUS` hostile PDUs: random initiator opcodes and invalid ones,
//! random flags, tags, sequence numbers, LUNs and offsets, data segment
//! lengths that match the bytes sent or deliberately do not; or a write
//! scenario gone wrong (Data-Out with the wrong TTT, overlapping or
//! out-of-range offsets, bursts longer than the R2T, repeated F bits,
//! Data-Out for unknown ITTs, ABORT TASK / LUN RESET / Logout in the middle
//! of a transfer, NOP-Out with data, garbage Text). The connection is
//! drained with short read timeouts, never waited on without bound, and
//! closed.
//!
//! After every hostile session a good session reads the acknowledged
//! pattern back, writes a new one (large enough to need an R2T) and reads
//! it back; between batches a fresh client logs in and gets TEST UNIT
//! READY answered and the process must still run; at the end the log must
//! not contain `panicked`.
//!
//! The run is bounded by counts, not sleeps. `PDU_SEQ_SEED` and
//! `PDU_SEQ_SESSIONS` override the seed and the number of sessions to
//! reproduce a failure; every failure names the seed and the session.
//! `PDU_SEQ_ARGS` adds `bootlun serve` arguments (e.g. small buffers);
//! `PDU_SEQ_VERBOSE` prints the target's log.
//!
//! Hostile PDUs never address LUN 1: it holds the acknowledged patterns.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

const SEED: u64 = 0x5eed_b007_1a2b_3c4d;
const SESSIONS: usize = 600;
const MAX_PDUS: usize = 50;
/// Sessions between two TEST UNIT READY checks by a fresh client.
const BATCH: usize = 25;
/// LUN holding the patterns; never addressed by hostile PDUs.
const DATA_LUN: u32 = 1;
/// Blocks of the data LUN (`ram:4M`).
const DATA_LUN_BLOCKS: u32 = 8192;

// ----------------------------------------------------------------------
// Deterministic generator

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// xorshift64*.
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn u8(&mut self) -> u8 {
        self.next() as u8
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

// ----------------------------------------------------------------------
// PDU helpers

fn put32(b: &mut [u8; BHS_LEN], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn set_dsl(b: &mut [u8; BHS_LEN], len: u32) {
    b[5] = (len >> 16) as u8;
    b[6] = (len >> 8) as u8;
    b[7] = len as u8;
}

fn lun_bytes(lun: u32) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        l[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        l[1] = lun as u8;
    }
    l
}

/// The LUN number a LUN field addresses (single level, peripheral or flat).
fn decode_lun(l: &[u8]) -> Option<u32> {
    match l[0] >> 6 {
        0 | 1 => Some((u32::from(l[0] & 0x3f) << 8) | u32::from(l[1])),
        _ => None,
    }
}

/// A hostile connection: raw writes and a buffered, never-blocking reader.
struct Hostile {
    c: IscsiConn,
    rx: Vec<u8>,
    closed: bool,
    /// R2Ts seen: (ITT, TTT, offset, length).
    r2ts: Vec<(u32, u32, u32, u32)>,
    pdus_in: usize,
    /// Data bytes each outstanding write still needs, and the ranges of
    /// its data sent so far (immediate and Data-Out), by ITT.
    writes: std::collections::HashMap<u32, Pending>,
    /// ITTs used twice while outstanding: not judged.
    ambiguous: std::collections::HashSet<u32>,
    /// A header claimed a different data length than was sent: the
    /// target's view of the stream is no longer ours, writes are not judged.
    lied: bool,
    /// GOOD status for writes whose data was not all sent.
    violations: Vec<Violation>,
}

struct Pending {
    need: u32,
    ranges: Vec<(u64, u64)>,
}

struct Violation {
    itt: u32,
    need: u32,
    covered: u64,
}

/// Data bytes a write CDB moves at most, if it is one this test builds.
fn write_len(cdb: &[u8]) -> Option<u64> {
    let be = |r: std::ops::Range<usize>| cdb[r].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
    match cdb[0] {
        0x2a | 0x2e => Some(be(7..9) * 512),
        0x8a => Some(be(10..14) * 512),
        _ => None,
    }
}

impl Hostile {
    fn new(c: IscsiConn) -> Hostile {
        Hostile {
            c,
            rx: Vec::new(),
            closed: false,
            r2ts: Vec::new(),
            pdus_in: 0,
            writes: Default::default(),
            ambiguous: Default::default(),
            lied: false,
            violations: Vec::new(),
        }
    }

    /// Bookkeeping for the acknowledged-data check.
    fn track(&mut self, bhs: &[u8; BHS_LEN], sent: usize) {
        let claim = ((bhs[5] as usize) << 16) | ((bhs[6] as usize) << 8) | bhs[7] as usize;
        if claim != sent || bhs[4] != 0 {
            self.lied = true;
        }
        let u = |o: usize| u32::from_be_bytes(bhs[o..o + 4].try_into().unwrap());
        let itt = u(16);
        match bhs[0] & 0x3f {
            0x01 => {
                if self.writes.contains_key(&itt) {
                    self.ambiguous.insert(itt);
                }
                if let Some(wanted) = write_len(&bhs[32..48]) {
                    let xfer = wanted.min(u64::from(u(20)));
                    let need = (xfer - xfer % 512) as u32;
                    let ranges = if claim > 0 {
                        vec![(0, claim as u64)]
                    } else {
                        Vec::new()
                    };
                    self.writes.insert(itt, Pending { need, ranges });
                }
            }
            0x05 => {
                if let Some(w) = self.writes.get_mut(&itt) {
                    let off = u64::from(u(40));
                    w.ranges.push((off, off + claim as u64));
                }
            }
            _ => {}
        }
    }

    /// A SCSI Response arrived for `itt`.
    fn judge(&mut self, itt: u32, good: bool) {
        let Some(w) = self.writes.remove(&itt) else {
            return;
        };
        if !good || self.lied || self.ambiguous.contains(&itt) {
            return;
        }
        let need = u64::from(w.need);
        let mut r: Vec<(u64, u64)> = w
            .ranges
            .iter()
            .map(|&(a, b)| (a.min(need), b.min(need)))
            .filter(|(a, b)| a < b)
            .collect();
        r.sort();
        let mut covered = 0u64;
        let mut end = 0u64;
        for (a, b) in r {
            let a = a.max(end);
            if b > a {
                covered += b - a;
                end = b;
            }
        }
        if covered < need {
            self.violations.push(Violation {
                itt,
                need: w.need,
                covered,
            });
        }
    }

    fn send(&mut self, bhs: &[u8; BHS_LEN], data: &[u8]) {
        if self.closed {
            return;
        }
        self.track(bhs, data.len());
        let mut buf = Vec::with_capacity(BHS_LEN + data.len() + 3);
        buf.extend_from_slice(bhs);
        buf.extend_from_slice(data);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
        if self.c.stream.write_all(&buf).is_err() {
            self.closed = true;
        }
    }

    /// Read what arrives within `wait` (returns early once a PDU is
    /// complete) and parse whole PDUs.
    fn drain(&mut self, wait: Duration) -> Vec<[u8; BHS_LEN]> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        let deadline = Instant::now() + wait;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.c
                .set_read_timeout(left.max(Duration::from_micros(200)));
            match self.c.stream.read(&mut chunk) {
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
            self.parse(&mut out);
            if out.len() > before {
                break;
            }
        }
        self.parse(&mut out);
        out
    }

    fn parse(&mut self, out: &mut Vec<[u8; BHS_LEN]>) {
        while self.rx.len() >= BHS_LEN {
            let ahs = self.rx[4] as usize * 4;
            let dsl =
                ((self.rx[5] as usize) << 16) | ((self.rx[6] as usize) << 8) | self.rx[7] as usize;
            let total = BHS_LEN + ahs + dsl.div_ceil(4) * 4;
            if self.rx.len() < total {
                return;
            }
            let bhs: [u8; BHS_LEN] = self.rx[..BHS_LEN].try_into().unwrap();
            self.rx.drain(..total);
            let u = |o: usize| u32::from_be_bytes(bhs[o..o + 4].try_into().unwrap());
            let op = bhs[0] & 0x3f;
            if op == OP_R2T {
                self.r2ts.push((u(16), u(20), u(40), u(44)));
            }
            if op == OP_SCSI_RSP {
                self.judge(u(16), bhs[2] == 0 && bhs[3] == 0);
            }
            if matches!(op, 0x21 | 0x22 | 0x24 | 0x26 | 0x3f)
                || (op == OP_DATA_IN && bhs[1] & 1 != 0)
            {
                self.c.exp_statsn = u(24).wrapping_add(1);
            }
            self.pdus_in += 1;
            out.push(bhs);
        }
    }

    /// Wait (bounded) for an R2T for `itt`.
    fn wait_r2t(&mut self, itt: u32, limit: Duration) -> Option<(u32, u32, u32, u32)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && !self.closed {
            if let Some(r) = self.r2ts.iter().rev().find(|r| r.0 == itt) {
                return Some(*r);
            }
            self.drain(Duration::from_millis(20));
        }
        self.r2ts.iter().rev().find(|r| r.0 == itt).copied()
    }

    fn next_itt(&mut self) -> u32 {
        self.c.itt = self.c.itt.wrapping_add(1);
        if self.c.itt == u32::MAX {
            self.c.itt = 1;
        }
        self.c.itt
    }

    fn next_cmdsn(&mut self) -> u32 {
        let v = self.c.cmdsn;
        self.c.cmdsn = v.wrapping_add(1);
        v
    }

    fn scsi_write10(
        &mut self,
        lun_field: [u8; 8],
        lba: u32,
        blocks: u16,
        edtl: u32,
        immediate: &[u8],
    ) -> u32 {
        let itt = self.next_itt();
        let mut b = [0u8; BHS_LEN];
        b[0] = OP_SCSI_CMD;
        b[1] = 0x80 | 0x20 | 0x01;
        b[8..16].copy_from_slice(&lun_field);
        put32(&mut b, 16, itt);
        put32(&mut b, 20, edtl);
        put32(&mut b, 24, self.next_cmdsn());
        put32(&mut b, 28, self.c.exp_statsn);
        b[32] = 0x2a;
        b[34..38].copy_from_slice(&lba.to_be_bytes());
        b[39..41].copy_from_slice(&blocks.to_be_bytes());
        set_dsl(&mut b, immediate.len() as u32);
        self.send(&b, immediate);
        itt
    }

    #[allow(clippy::too_many_arguments)]
    fn data_out(
        &mut self,
        lun_field: [u8; 8],
        itt: u32,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        fin: bool,
        data: &[u8],
    ) {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x05;
        b[1] = if fin { 0x80 } else { 0 };
        b[8..16].copy_from_slice(&lun_field);
        put32(&mut b, 16, itt);
        put32(&mut b, 20, ttt);
        put32(&mut b, 28, self.c.exp_statsn);
        put32(&mut b, 36, data_sn);
        put32(&mut b, 40, offset);
        set_dsl(&mut b, data.len() as u32);
        self.send(&b, data);
    }

    fn tmf(&mut self, function: u8, lun_field: [u8; 8], referenced: u32, immediate: bool) {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x02 | if immediate { 0x40 } else { 0 };
        b[1] = 0x80 | function;
        b[8..16].copy_from_slice(&lun_field);
        let itt = self.next_itt();
        put32(&mut b, 16, itt);
        put32(&mut b, 20, referenced);
        let sn = if immediate {
            self.c.cmdsn
        } else {
            self.next_cmdsn()
        };
        put32(&mut b, 24, sn);
        put32(&mut b, 28, self.c.exp_statsn);
        self.send(&b, &[]);
    }

    fn logout(&mut self, reason: u8) {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x46;
        b[1] = 0x80 | reason;
        let itt = self.next_itt();
        put32(&mut b, 16, itt);
        put32(&mut b, 24, self.c.cmdsn);
        put32(&mut b, 28, self.c.exp_statsn);
        self.send(&b, &[]);
    }

    fn nop_with_data(&mut self, data: &[u8]) {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x40;
        b[1] = 0x80;
        let itt = self.next_itt();
        put32(&mut b, 16, itt);
        put32(&mut b, 20, u32::MAX);
        put32(&mut b, 24, self.c.cmdsn);
        put32(&mut b, 28, self.c.exp_statsn);
        set_dsl(&mut b, data.len() as u32);
        self.send(&b, data);
    }

    fn text(&mut self, data: &[u8], flags: u8, ttt: u32) {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x44;
        b[1] = flags;
        let itt = self.next_itt();
        put32(&mut b, 16, itt);
        put32(&mut b, 20, ttt);
        put32(&mut b, 24, self.c.cmdsn);
        put32(&mut b, 28, self.c.exp_statsn);
        set_dsl(&mut b, data.len() as u32);
        self.send(&b, data);
    }
}

// ----------------------------------------------------------------------
// Well-behaved I/O

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    r.bytes(len)
}

/// Wait for the SCSI status of `itt`, answering NOP-In pings; Data-In is
/// collected. R2Ts for `itt` are handed to `on_r2t`.
fn wait_status(
    c: &mut IscsiConn,
    itt: u32,
    mut on_r2t: impl FnMut(&mut IscsiConn, u32, u32, u32) -> Result<(), String>,
) -> Result<(u8, Vec<u8>), String> {
    let mut data = Vec::new();
    for _ in 0..100_000 {
        let p = c
            .recv_pdu()
            .map_err(|e| format!("waiting for status of ITT {itt:#x}: {e:?}"))?;
        match p.opcode() {
            OP_R2T if p.u32_at(16) == itt => on_r2t(c, p.u32_at(20), p.u32_at(40), p.u32_at(44))?,
            OP_DATA_IN if p.u32_at(16) == itt => {
                data.extend_from_slice(&p.data);
                if p.bhs[1] & 1 != 0 {
                    c.exp_statsn = p.u32_at(24).wrapping_add(1);
                    return Ok((p.bhs[3], data));
                }
            }
            OP_SCSI_RSP if p.u32_at(16) == itt => {
                c.exp_statsn = p.u32_at(24).wrapping_add(1);
                if p.bhs[2] != 0 {
                    return Err(format!("iSCSI response {:#x}", p.bhs[2]));
                }
                return Ok((p.bhs[3], data));
            }
            OP_NOP_IN => {}
            op => {
                return Err(format!(
                    "unexpected opcode {op:#04x} (ITT {:#x})",
                    p.u32_at(16)
                ))
            }
        }
    }
    Err("too many PDUs".into())
}

/// WRITE(10) of `data` at `lba` of `lun`: the first burst as immediate
/// data, the rest on R2Ts. Returns the SCSI status.
fn good_write(c: &mut IscsiConn, lun: u32, lba: u32, data: &[u8]) -> Result<u8, String> {
    assert_eq!(data.len() % 512, 0);
    let blocks = (data.len() / 512) as u16;
    let cdb = [
        0x2a,
        0,
        (lba >> 24) as u8,
        (lba >> 16) as u8,
        (lba >> 8) as u8,
        lba as u8,
        0,
        (blocks >> 8) as u8,
        blocks as u8,
        0,
    ];
    let first = data.len().min(65536).min(c.target_mrdsl as usize);
    let bhs = c.scsi_bhs(lun, &cdb, 0, data.len() as u32);
    let itt = c.itt;
    c.send_pdu(bhs, &data[..first])
        .map_err(|e| format!("sending WRITE: {e}"))?;
    c.itt = c.itt.wrapping_add(1);
    c.cmdsn = c.cmdsn.wrapping_add(1);
    let mrdsl = c.target_mrdsl as usize;
    let lun_field = lun_bytes(lun);
    let (st, _) = wait_status(c, itt, |c, ttt, off, len| {
        let (off, len) = (off as usize, len as usize);
        if off + len > data.len() {
            return Err(format!("R2T {off}+{len} beyond {} bytes", data.len()));
        }
        let mut sent = 0;
        let mut sn = 0u32;
        while sent < len {
            let n = (len - sent).min(mrdsl);
            let mut b = [0u8; BHS_LEN];
            b[0] = 0x05;
            b[1] = if sent + n == len { 0x80 } else { 0 };
            b[8..16].copy_from_slice(&lun_field);
            put32(&mut b, 16, itt);
            put32(&mut b, 20, ttt);
            put32(&mut b, 28, c.exp_statsn);
            put32(&mut b, 36, sn);
            put32(&mut b, 40, (off + sent) as u32);
            c.send_pdu(b, &data[off + sent..off + sent + n])
                .map_err(|e| format!("Data-Out: {e}"))?;
            sent += n;
            sn += 1;
        }
        Ok(())
    })?;
    Ok(st)
}

fn good_read(c: &mut IscsiConn, lun: u32, lba: u32, blocks: u16) -> Result<(u8, Vec<u8>), String> {
    let cdb = [
        0x28,
        0,
        (lba >> 24) as u8,
        (lba >> 16) as u8,
        (lba >> 8) as u8,
        lba as u8,
        0,
        (blocks >> 8) as u8,
        blocks as u8,
        0,
    ];
    let len = u32::from(blocks) * 512;
    let bhs = c.scsi_bhs(lun, &cdb, len, 0);
    let itt = c.itt;
    c.send_pdu(bhs, &[])
        .map_err(|e| format!("sending READ: {e}"))?;
    c.itt = c.itt.wrapping_add(1);
    c.cmdsn = c.cmdsn.wrapping_add(1);
    wait_status(c, itt, |_, _, _, _| Err("R2T for a READ".into()))
}

/// Retry over unit attentions (bounded).
fn with_retries<T>(mut f: impl FnMut() -> Result<(u8, T), String>) -> Result<T, String> {
    let mut last = 0;
    for _ in 0..4 {
        let (st, v) = f()?;
        if st == 0 {
            return Ok(v);
        }
        last = st;
    }
    Err(format!("status {last:#x} four times"))
}

// ----------------------------------------------------------------------
// The hostile part

/// Where each session keeps its acknowledged pattern on the data LUN.
fn session_lba(i: usize) -> u32 {
    ((i as u32) * 16) % (DATA_LUN_BLOCKS - 16)
}

/// A LUN field for a hostile PDU: LUN 0, a missing LUN, or random bytes,
/// but never the data LUN.
fn hostile_lun(r: &mut Rng) -> [u8; 8] {
    let l = match r.below(10) {
        0..=6 => lun_bytes(0),
        7 => lun_bytes(9),
        _ => r.bytes(8).try_into().unwrap(),
    };
    if decode_lun(&l) == Some(DATA_LUN) {
        lun_bytes(0)
    } else {
        l
    }
}

fn hostile_cdb(r: &mut Rng) -> ([u8; 16], u32) {
    let mut cdb = [0u8; 16];
    let lba = r.below(60_000) as u32;
    let blocks = 1 + r.below(128) as u16;
    let xfer = u32::from(blocks) * 512;
    match r.below(10) {
        0 | 1 => {
            cdb[0] = 0x2a;
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
            (cdb, xfer)
        }
        2 | 3 => {
            cdb[0] = 0x28;
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
            (cdb, xfer)
        }
        4 => {
            cdb[0] = r.pick(&[0x2e, 0x2f, 0x35, 0x34]);
            cdb[1] = r.u8() & 0x06;
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
            (cdb, xfer)
        }
        5 => {
            // Out of range and overflowing lengths.
            cdb[0] = r.pick(&[0x88, 0x8a]);
            cdb[2..10].copy_from_slice(&r.next().to_be_bytes());
            cdb[10..14].copy_from_slice(&r.u32().to_be_bytes());
            (cdb, r.u32() % (1 << 20))
        }
        6 => {
            cdb[0] = r.pick(&[0x12, 0xa0, 0x1a, 0x5a, 0x9e, 0x25, 0x03, 0xa3, 0x00]);
            cdb[1] = r.u8() & r.pick(&[0, 1, 0x10, 0xff]);
            for b in cdb[2..10].iter_mut() {
                *b = r.u8();
            }
            (cdb, u32::from(r.u8()) * 16)
        }
        _ => {
            let raw: [u8; 16] = r.bytes(16).try_into().unwrap();
            (raw, r.u32() % 70_000)
        }
    }
}

/// A plausible PDU: a command with consistent lengths and the right
/// CmdSN, the Data-Out an outstanding R2T asks for, a ping, a task
/// management request or a SendTargets. Keeps the session alive so the
/// hostile PDUs land in deeper states.
fn sane_pdu(h: &mut Hostile, r: &mut Rng, last_cmd: &mut u32) {
    let lun0 = lun_bytes(0);
    match r.below(8) {
        0..=2 => {
            let lba = r.below(60_000) as u32;
            let blocks = 1 + r.below(64) as u16;
            let len = u32::from(blocks) * 512;
            let imm = (r.below(u64::from(len.min(h.c.target_mrdsl).min(65536)) / 512 + 1) * 512)
                .min(u64::from(len)) as usize;
            let imm = if r.chance(50) { imm } else { 0 };
            let fill = r.u8();
            *last_cmd = h.scsi_write10(lun0, lba, blocks, len, &vec![fill; imm]);
        }
        3 => {
            let itt = h.next_itt();
            let mut b = [0u8; BHS_LEN];
            b[0] = OP_SCSI_CMD;
            b[1] = 0x80 | 0x40 | 0x01;
            b[8..16].copy_from_slice(&lun0);
            let blocks = 1 + r.below(256) as u16;
            put32(&mut b, 16, itt);
            put32(&mut b, 20, u32::from(blocks) * 512);
            put32(&mut b, 24, h.next_cmdsn());
            put32(&mut b, 28, h.c.exp_statsn);
            b[32] = 0x28;
            b[34..38].copy_from_slice(&(r.below(60_000) as u32).to_be_bytes());
            b[39..41].copy_from_slice(&blocks.to_be_bytes());
            h.send(&b, &[]);
            *last_cmd = itt;
        }
        4 | 5 => {
            // Answer the most recent R2T, whole or in part.
            if let Some((itt, ttt, off, len)) = h.r2ts.pop() {
                let mrdsl = h.c.target_mrdsl;
                let mut sent = 0;
                let mut sn = 0;
                let part = r.chance(20);
                while sent < len {
                    let n = (len - sent).min(mrdsl);
                    let fin = sent + n == len;
                    h.data_out(
                        lun0,
                        itt,
                        ttt,
                        sn,
                        off + sent,
                        fin,
                        &vec![r.u8(); n as usize],
                    );
                    sent += n;
                    sn += 1;
                    if part {
                        break;
                    }
                }
            } else {
                h.nop_with_data(&[]);
            }
        }
        6 => {
            let n = r.below(64) as usize;
            h.nop_with_data(&r.bytes(n));
        }
        _ => {
            let f = r.pick(&[1u8, 1, 2, 5, 4, 8, 3]);
            let referenced = if r.chance(70) { *last_cmd } else { r.u32() };
            h.tmf(f, lun0, referenced, r.chance(50));
        }
    }
}

/// One random PDU of the initiator set (or an invalid opcode), with the
/// data segment length consistent with the bytes sent or not.
fn random_pdu(h: &mut Hostile, r: &mut Rng, last_cmd: &mut u32) {
    let mut b = [0u8; BHS_LEN];
    let ops = [
        0x00u8, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x07, 0x1f, 0x21, 0x31, 0x3f, 0x2a,
    ];
    let op = ops[r.below(ops.len() as u64) as usize];
    b[0] = op | if r.chance(30) { 0x40 } else { 0 };
    b[1] = if r.chance(70) { 0x80 } else { 0 } | (r.u8() & if r.chance(50) { 0x7f } else { 0x07 });
    if r.chance(3) {
        b[4] = r.u8() % 4;
    }
    b[8..16].copy_from_slice(&hostile_lun(r));
    let itt = match r.below(5) {
        0 => *last_cmd,
        1 => u32::MAX,
        2 => r.u32(),
        _ => h.next_itt(),
    };
    put32(&mut b, 16, itt);
    let ttt = match r.below(4) {
        0 => u32::MAX,
        1 => h.r2ts.last().map(|x| x.1).unwrap_or(0),
        2 => *last_cmd,
        _ => r.u32(),
    };
    put32(&mut b, 20, ttt);
    let sn = match r.below(6) {
        0 => r.u32(),
        1 => h.c.cmdsn.wrapping_sub(1 + r.below(4) as u32),
        2 => h.c.cmdsn.wrapping_add(1 + r.below(1000) as u32),
        _ if b[0] & 0x40 != 0 => h.c.cmdsn,
        _ => h.next_cmdsn(),
    };
    put32(&mut b, 24, sn);
    put32(
        &mut b,
        28,
        if r.chance(80) {
            h.c.exp_statsn
        } else {
            r.u32()
        },
    );
    let mut natural = 0u32;
    match op {
        0x01 => {
            let (cdb, xfer) = hostile_cdb(r);
            b[32..48].copy_from_slice(&cdb);
            let edtl = if r.chance(80) {
                xfer
            } else {
                r.u32() % (1 << 21)
            };
            put32(&mut b, 20, edtl);
            if cdb[0] == 0x2a || cdb[0] == 0x8a || cdb[0] == 0x2e {
                b[1] |= 0x20;
                natural = edtl.min(65536);
            } else if r.chance(10) {
                b[1] |= 0x20;
            }
            *last_cmd = itt;
        }
        0x05 => {
            let (ritt, rttt, roff, rlen) =
                h.r2ts
                    .last()
                    .copied()
                    .unwrap_or((*last_cmd, u32::MAX, 0, 4096));
            if r.chance(60) {
                put32(&mut b, 16, ritt);
                put32(&mut b, 20, rttt);
            }
            put32(&mut b, 36, if r.chance(70) { 0 } else { r.u32() % 4 });
            let off = match r.below(4) {
                0 => r.u32(),
                1 => roff.wrapping_add(512 * r.below(8) as u32),
                _ => roff,
            };
            put32(&mut b, 40, off);
            natural = rlen.min(h.c.target_mrdsl);
        }
        0x04 => natural = r.below(300) as u32,
        0x00 => {
            natural = if r.chance(30) {
                r.below(2000) as u32
            } else {
                0
            }
        }
        _ => {}
    }
    let mrdsl = h.c.target_mrdsl;
    let (claim, sent) = match r.below(10) {
        0..=5 => (natural, natural),
        6 => {
            let n = r.below(u64::from(mrdsl) + 1) as u32;
            (n, n)
        }
        7 => (natural, natural / 2),
        8 => (r.u32() & 0xff_ffff, r.below(600) as u32),
        _ => (mrdsl + 1 + r.below(1000) as u32, 0),
    };
    set_dsl(&mut b, claim);
    let data = if op == 0x04 && r.chance(50) {
        let mut t = b"SendTargets=All\0".to_vec();
        t.resize(sent as usize, r.u8());
        t
    } else {
        vec![r.u8(); sent as usize]
    };
    h.send(&b, &data);
}

/// A write whose data phase goes wrong. Returns a short description.
fn write_scenario(h: &mut Hostile, r: &mut Rng) -> &'static str {
    let lun0 = lun_bytes(0);
    let lba = r.below(60_000) as u32;
    let blocks = [8u16, 64, 128, 256, 512][r.below(5) as usize];
    let len = u32::from(blocks) * 512;
    let imm = if r.chance(70) {
        len.min(65536).min(h.c.target_mrdsl) as usize / 2
    } else {
        0
    };
    let fill = r.u8();
    let itt = h.scsi_write10(lun0, lba, blocks, len, &vec![fill; imm]);
    let Some((_, ttt, off, rlen)) = h.wait_r2t(itt, Duration::from_millis(500)) else {
        return "no R2T";
    };
    let mrdsl = h.c.target_mrdsl;
    let chunk = rlen.min(mrdsl).min(8192);
    match r.below(14) {
        0 => {
            h.data_out(
                lun0,
                itt,
                ttt ^ 0x5a5a,
                0,
                off,
                true,
                &vec![fill; chunk as usize],
            );
            "wrong TTT"
        }
        1 => {
            h.data_out(lun0, itt, ttt, 0, off, false, &vec![fill; chunk as usize]);
            h.data_out(lun0, itt, ttt, 1, off, true, &vec![fill; chunk as usize]);
            h.data_out(
                lun0,
                itt,
                ttt,
                2,
                off + chunk / 2,
                true,
                &vec![fill; chunk as usize],
            );
            "overlapping offsets"
        }
        2 => {
            h.data_out(
                lun0,
                itt,
                ttt,
                0,
                off.wrapping_sub(512),
                true,
                &vec![fill; chunk as usize],
            );
            "offset before the R2T"
        }
        3 => {
            let n = (rlen + 512).min(mrdsl);
            h.data_out(lun0, itt, ttt, 0, off, true, &vec![fill; n as usize]);
            if n <= rlen {
                h.data_out(lun0, itt, ttt, 1, off + n, true, &vec![fill; 1024]);
            }
            "burst beyond the R2T"
        }
        4 => {
            for sn in 0..4 {
                h.data_out(lun0, itt, ttt, sn, off, true, &vec![fill; 512]);
            }
            "repeated F bits"
        }
        5 => {
            h.data_out(
                lun0,
                itt ^ 0x8000_0000,
                ttt,
                0,
                off,
                true,
                &vec![fill; chunk as usize],
            );
            h.data_out(lun0, r.u32(), u32::MAX, 0, 0, true, &vec![fill; 512]);
            "Data-Out for unknown ITTs"
        }
        6 => {
            h.data_out(lun0, itt, ttt, 0, off, false, &vec![fill; chunk as usize]);
            h.tmf(1, lun0, itt, r.chance(50));
            h.data_out(
                lun0,
                itt,
                ttt,
                1,
                off + chunk,
                true,
                &vec![fill; chunk as usize],
            );
            "ABORT TASK mid-transfer"
        }
        7 => {
            h.data_out(lun0, itt, ttt, 0, off, false, &vec![fill; chunk as usize]);
            h.tmf(r.pick(&[5, 2, 4, 6, 7]), lun0, 0, r.chance(50));
            h.data_out(
                lun0,
                itt,
                ttt,
                1,
                off + chunk,
                true,
                &vec![fill; chunk as usize],
            );
            "LUN RESET (or task set / target reset) mid-transfer"
        }
        8 => {
            h.data_out(lun0, itt, ttt, 0, off, false, &vec![fill; chunk as usize]);
            h.logout(r.below(3) as u8);
            h.data_out(
                lun0,
                itt,
                ttt,
                1,
                off + chunk,
                true,
                &vec![fill; chunk as usize],
            );
            "Logout mid-transfer"
        }
        9 => {
            let n = 1 + r.below(4000) as usize;
            h.nop_with_data(&r.bytes(n));
            h.data_out(
                lun0,
                itt,
                ttt,
                0,
                off,
                true,
                &vec![fill; rlen.min(mrdsl) as usize],
            );
            "NOP-Out with data mid-transfer"
        }
        10 => {
            let n = r.below(500) as usize;
            let mut t = r.bytes(n);
            if r.chance(50) {
                t.extend_from_slice(b"SendTargets=\xff\xfe=\0X=");
            }
            let flags = r.pick(&[0x80, 0x40, 0xc0, 0x00]);
            let ttt = if r.chance(50) { u32::MAX } else { r.u32() };
            h.text(&t, flags, ttt);
            "Text garbage mid-transfer"
        }
        11 => {
            // Unsolicited Data-Out (reserved TTT) overlapping the
            // immediate data, then the solicited burst with a DataSN gap.
            h.data_out(lun0, itt, u32::MAX, 0, 0, false, &vec![fill; 512]);
            h.data_out(lun0, itt, ttt, 3, off, true, &vec![fill; chunk as usize]);
            "unsolicited Data-Out and a DataSN gap"
        }
        _ => {
            // The whole burst, correct, but each Data-Out's header goes
            // out before its data (the target receives the data straight
            // into the task's buffer), sometimes cut short by a close.
            let n = rlen.min(mrdsl);
            let mut b = [0u8; BHS_LEN];
            b[0] = 0x05;
            b[1] = 0x80;
            b[8..16].copy_from_slice(&lun0);
            put32(&mut b, 16, itt);
            put32(&mut b, 20, ttt);
            put32(&mut b, 28, h.c.exp_statsn);
            put32(&mut b, 40, off);
            set_dsl(&mut b, n);
            h.track(&b, n as usize);
            if h.c.stream.write_all(&b).is_err() {
                h.closed = true;
                return "split Data-Out";
            }
            h.drain(Duration::from_millis(2));
            let data = vec![fill; n as usize];
            let cut = if r.chance(30) {
                n as usize / 3
            } else {
                n as usize
            };
            if h.c.stream.write_all(&data[..cut]).is_err() {
                h.closed = true;
            }
            if cut < n as usize {
                h.closed = true;
                let _ = h.c.stream.shutdown(Shutdown::Both);
                return "split Data-Out, then close mid-data";
            }
            "split Data-Out"
        }
    }
}

// ----------------------------------------------------------------------
// The test

struct Ctx {
    server: Server,
    seed: u64,
}

impl Ctx {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "seed {:#x}: {what}\n--- target output (tail) ---\n{}",
            self.seed,
            tail(&self.server.output(), 60)
        );
    }

    fn login(&self, tag: &str) -> IscsiConn {
        let mut c = IscsiConn::connect(self.server.addr);
        if let Err(e) = c.login(&initiator_name(tag), &self.server.iqn) {
            self.fail(&format!("{tag}: a well-behaved login failed: {e}"));
        }
        c
    }

    /// A fresh client gets TEST UNIT READY answered; the process runs.
    fn still_serving(&mut self, when: &str) {
        if !self.server.is_running() {
            self.fail(&format!("{when}: the target process exited"));
        }
        let mut c = self.login("tur");
        if let Err(e) = c.test_unit_ready(self.server.lun(0)) {
            self.fail(&format!("{when}: TEST UNIT READY: {e}"));
        }
        c.logout();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Known target bugs whose exact case is skipped until they are fixed:
/// (seed, session index). Empty when none are open.
const KNOWN_BAD: &[(u64, usize)] = &[];

#[test]
fn hostile_pdu_sequences() {
    if target_kind() != TargetKind::Bootlun {
        println!("SKIPPED: bootlun-only (needs two LUNs and its log)");
        return;
    }
    let seed = std::env::var("PDU_SEQ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(SEED);
    let sessions = std::env::var("PDU_SEQ_SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SESSIONS);
    // Extra `bootlun serve` arguments, e.g. "--buffer-size 64K --buffers 8"
    // to exercise chunking and buffer waits.
    let extra = std::env::var("PDU_SEQ_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let server = Server::start(&["ram:64M", "ram:4M"], &extra);
    let mut ctx = Ctx { server, seed };
    let data_lun = ctx.server.lun(DATA_LUN);
    let started = Instant::now();
    let mut kinds: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let (mut pdus_out, mut pdus_in, mut closed_by_target) = (0usize, 0usize, 0usize);
    // Writes acknowledged without all their data, by the known overlap bug.

    for i in 0..sessions {
        if KNOWN_BAD.contains(&(seed, i)) {
            println!("session {i}: skipped (known target bug, see KNOWN_BAD)");
            continue;
        }
        let mut r = Rng::new(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let what = |s: &str| {
            format!(
                "session {i}: {s} (reproduce: PDU_SEQ_SEED={seed:x} PDU_SEQ_SESSIONS={})",
                i + 1
            )
        };

        // Hostile session, starting with an acknowledged write.
        let mut c = ctx.login(&format!("hostile-{i}"));
        let lba = session_lba(i);
        let acked = pattern(seed ^ i as u64, 8 * 512);
        match with_retries(|| good_write(&mut c, data_lun, lba, &acked).map(|s| (s, ()))) {
            Ok(()) => {}
            Err(e) => ctx.fail(&what(&format!("acknowledged write: {e}"))),
        }
        let mut h = Hostile::new(c);
        let mut last_cmd = 0u32;
        let n = 1 + r.below(MAX_PDUS as u64) as usize;
        let scenario = r.chance(40);
        // Percentage of random (mostly hostile) PDUs among plausible ones.
        let hostility = r.pick(&[3u64, 10, 25, 60]);
        for k in 0..n {
            if h.closed {
                break;
            }
            if scenario && (k == 0 || r.chance(10)) {
                *kinds.entry(write_scenario(&mut h, &mut r)).or_default() += 1;
            } else if r.chance(hostility) {
                random_pdu(&mut h, &mut r, &mut last_cmd);
            } else {
                sane_pdu(&mut h, &mut r, &mut last_cmd);
            }
            pdus_out += 1;
            h.drain(Duration::from_micros(if r.chance(10) { 5000 } else { 300 }));
        }
        h.drain(Duration::from_millis(20));
        if h.closed {
            closed_by_target += 1;
        }
        pdus_in += h.pdus_in;
        // The first violation fails the run.
        if let Some(v) = h.violations.first() {
            ctx.fail(&what(&format!(
                "GOOD status for write ITT {:#x} with {} of its {} data bytes sent: acknowledged data never received",
                v.itt, v.covered, v.need
            )));
        }
        let _ = h.c.stream.shutdown(Shutdown::Both);
        drop(h);

        // Good session: the acknowledged pattern is intact; a new pattern
        // (which needs an R2T) writes and reads back.
        let mut g = ctx.login(&format!("good-{i}"));
        match with_retries(|| good_read(&mut g, data_lun, lba, 8)) {
            Ok(d) if d == acked => {}
            Ok(d) => ctx.fail(&what(&format!(
                "acknowledged data at LBA {lba} of LUN {data_lun} changed ({} bytes read, first difference at {:?})",
                d.len(),
                d.iter().zip(&acked).position(|(a, b)| a != b)
            ))),
            Err(e) => ctx.fail(&what(&format!("reading the acknowledged pattern: {e}"))),
        }
        let glba = (session_lba(i) + 8) % (DATA_LUN_BLOCKS - 256);
        let fresh = pattern(seed ^ !(i as u64), 256 * 512);
        if let Err(e) = with_retries(|| good_write(&mut g, data_lun, glba, &fresh).map(|s| (s, ())))
        {
            ctx.fail(&what(&format!("good write: {e}")));
        }
        match with_retries(|| good_read(&mut g, data_lun, glba, 256)) {
            Ok(d) if d == fresh => {}
            Ok(_) => ctx.fail(&what(&format!(
                "good write at LBA {glba} did not read back"
            ))),
            Err(e) => ctx.fail(&what(&format!("good read: {e}"))),
        }
        g.logout();

        if (i + 1) % BATCH == 0 {
            ctx.still_serving(&what("after the batch"));
        }
    }
    ctx.still_serving("at the end");
    let log = ctx.server.output();
    if std::env::var_os("PDU_SEQ_VERBOSE").is_some() {
        println!("--- target output ---\n{log}");
    }
    if log.contains("panicked") {
        ctx.fail("the target log contains 'panicked'");
    }
    println!(
        "{sessions} hostile sessions, {pdus_out} hostile PDUs sent, {pdus_in} PDUs received, {closed_by_target} closed by the target, {:?}; write scenarios: {kinds:?}",
        started.elapsed()
    );
}
