//! Whole connections driven in process: byte PDUs in, byte PDUs and disk
//! operations out, through a recording [`IoOps`] instead of a reactor. No
//! ring, no subprocess, no timing: every completion is delivered by the
//! test. Socket-free cases of `tests/hostile_writes.rs`,
//! `tests/pdu_sequences.rs` and `tests/session_reinstatement.rs` live here.

use super::*;
use crate::iscsi::negotiate::Limits;
use crate::iscsi::target::Lun;
use bootlun_engine::{open_backend, BlockBackend, LunSpec, PoolBuf, ReactorStats};
use std::collections::VecDeque;
use std::os::unix::net::UnixStream;

const IQN: &str = "iqn.2026-11.org.bootlun:target";
const DISK: usize = 1 << 20;

enum Op {
    Recv {
        ptr: *mut u8,
        len: usize,
        tag: u32,
    },
    RecvPool {
        ptr: *mut u8,
        len: usize,
        spill: Option<Spill>,
        tag: u32,
    },
    /// A receive straight into the mapped LU (`disk`).
    RecvMapped {
        ptr: *mut u8,
        len: usize,
        spill: Option<Spill>,
        tag: u32,
    },
    Disk {
        tag: u32,
        write: bool,
        ptr: *mut u8,
        len: usize,
        offset: u64,
    },
    Timeout {
        tag: u32,
    },
    Done {
        tag: u32,
        res: i32,
    },
}

/// Stands in for a reactor: records operations, keeps a RAM disk.
struct MockIo {
    pool: BufPool,
    stats: ReactorStats,
    ops: Vec<Op>,
    sent: Vec<u8>,
    disk: Vec<u8>,
    waits_for_buffers: bool,
    /// Complete each pool receive with at most this many bytes, as the
    /// reactor may (0: all of them).
    recv_pool_max: usize,
    recv_pools: usize,
    /// Length of every pool receive posted.
    recv_pool_lens: Vec<usize>,
    /// Offer `disk` as the LU's mapped memory for reads of 64 KiB and up,
    /// and for writes, as a memory-backed LU does.
    mapped: bool,
    disk_reads: usize,
    disk_writes: usize,
    /// Complete the next receive into the mapping with -EFAULT, as when
    /// the file shrank under it.
    mapped_fault: bool,
    /// Bytes written with `disk_write_now` (staged pieces of a placed write).
    written_now: usize,
    /// Bytes that direct receives took past their data (their spills).
    spilled: usize,
    /// `send` calls (each one `sendmsg`).
    sends: usize,
    /// The order of staging receives (`r`) and sends (`s`) posted.
    order: Vec<u8>,
    /// Direct receives the test completed short.
    short_direct: usize,
    /// Disk reads and writes finish on the spot, as the reactor's
    /// `preadv2`/`pwritev2` of a LU in memory do.
    inline_disk: bool,
}

impl IoOps for MockIo {
    fn pool(&self) -> &BufPool {
        &self.pool
    }
    fn pool_mut(&mut self) -> &mut BufPool {
        &mut self.pool
    }
    fn stats(&self) -> &ReactorStats {
        &self.stats
    }
    fn wait_for_buffers(&mut self) {
        self.waits_for_buffers = true;
    }
    unsafe fn recv(&mut self, _fd: RawFd, buf: *mut u8, len: u32, tag: u32) {
        self.order.push(b'r');
        self.ops.push(Op::Recv {
            ptr: buf,
            len: len as usize,
            tag,
        });
    }
    fn recv_pool(
        &mut self,
        _fd: RawFd,
        buf: &PoolBuf,
        off: u32,
        len: u32,
        spill: Option<Spill>,
        tag: u32,
    ) {
        self.recv_pools += 1;
        self.recv_pool_lens.push(len as usize);
        let ptr = self.pool.ptr(buf).wrapping_add(off as usize);
        self.ops.push(Op::RecvPool {
            ptr,
            len: len as usize,
            spill,
            tag,
        });
    }
    unsafe fn recv_mapped(
        &mut self,
        _fd: RawFd,
        dst: *mut u8,
        len: u32,
        spill: Option<Spill>,
        tag: u32,
    ) {
        if std::mem::take(&mut self.mapped_fault) {
            self.mapped = false;
            self.ops.push(Op::Done {
                tag,
                res: -libc::EFAULT,
            });
            return;
        }
        self.ops.push(Op::RecvMapped {
            ptr: dst,
            len: len as usize,
            spill,
            tag,
        });
    }
    unsafe fn send(&mut self, _fd: RawFd, iov: &[libc::iovec], tag: u32) {
        self.sends += 1;
        self.order.push(b's');
        let mut n = 0;
        for v in iov {
            // SAFETY: the connection keeps what the iovecs point at alive
            // until the completion, which comes after this copy.
            let b = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            self.sent.extend_from_slice(b);
            n += v.iov_len;
        }
        self.ops.push(Op::Done { tag, res: n as i32 });
    }
    fn disk_mapped(&mut self, _b: &dyn BlockBackend, offset: u64, len: u32) -> Option<*const u8> {
        let end = offset as usize + len as usize;
        (self.mapped && len >= 65536 && end <= self.disk.len())
            .then(|| self.disk[offset as usize..].as_ptr())
    }
    fn disk_mapped_mut(&mut self, _b: &dyn BlockBackend, offset: u64, len: u32) -> Option<*mut u8> {
        let end = offset as usize + len as usize;
        (self.mapped && end <= self.disk.len()).then(|| self.disk[offset as usize..].as_mut_ptr())
    }
    fn disk_write_now(
        &mut self,
        _b: &dyn BlockBackend,
        data: &[u8],
        offset: u64,
    ) -> std::io::Result<()> {
        let o = offset as usize;
        self.disk[o..o + data.len()].copy_from_slice(data);
        self.written_now += data.len();
        Ok(())
    }
    fn disk_read(
        &mut self,
        _b: &dyn BlockBackend,
        buf: &PoolBuf,
        len: u32,
        offset: u64,
        tag: u32,
    ) -> Issued {
        self.disk_reads += 1;
        let ptr = self.pool.ptr(buf);
        if self.inline_disk {
            let o = offset as usize;
            // SAFETY: `len` bytes of a pool buffer the task holds.
            let b = unsafe { std::slice::from_raw_parts_mut(ptr, len as usize) };
            b.copy_from_slice(&self.disk[o..o + len as usize]);
            return Issued::Done(len as i32);
        }
        self.ops.push(Op::Disk {
            tag,
            write: false,
            ptr,
            len: len as usize,
            offset,
        });
        Issued::Pending
    }
    fn disk_write(
        &mut self,
        _b: &dyn BlockBackend,
        buf: &PoolBuf,
        len: u32,
        offset: u64,
        _fua: bool,
        tag: u32,
    ) -> Issued {
        self.disk_writes += 1;
        let ptr = self.pool.ptr(buf);
        if self.inline_disk {
            let o = offset as usize;
            // SAFETY: `len` bytes of a pool buffer the task holds.
            let b = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
            self.disk[o..o + len as usize].copy_from_slice(b);
            return Issued::Done(len as i32);
        }
        self.ops.push(Op::Disk {
            tag,
            write: true,
            ptr,
            len: len as usize,
            offset,
        });
        Issued::Pending
    }
    fn disk_flush(&mut self, _b: &dyn BlockBackend, _tag: u32) -> Issued {
        Issued::Done(0)
    }
    fn timeout(&mut self, _after: Duration, tag: u32) {
        self.ops.push(Op::Timeout { tag });
    }
    fn cancel_timeout(&mut self, timer_tag: u32, tag: u32) {
        if let Some(p) = self
            .ops
            .iter()
            .position(|o| matches!(o, Op::Timeout { tag } if *tag == timer_tag))
        {
            self.ops.remove(p);
            self.ops.push(Op::Done {
                tag: timer_tag,
                res: -libc::ECANCELED,
            });
        }
        self.ops.push(Op::Done { tag, res: 0 });
    }
}

fn shared(buffers_luns: usize) -> Arc<TargetShared> {
    let luns = (0..buffers_luns)
        .map(|i| {
            let b = open_backend(&LunSpec::parse("null:1M").unwrap(), i).unwrap();
            Lun::new(b, IQN, 1 << 20)
        })
        .collect();
    Arc::new(TargetShared::new(IQN.into(), luns, Limits::default(), 16))
}

/// One connection and the initiator's side of it.
struct H {
    conn: Conn,
    io: MockIo,
    inbox: VecDeque<u8>,
    /// `send` only queues bytes; the test pumps them in one go.
    batch: bool,
    /// Staging receives completed.
    staged_recvs: usize,
    _peer: UnixStream,
    /// Leave disk operations in flight.
    hold_disk: bool,
    itt: u32,
    cmd_sn: u32,
    /// Nonzero: cut the byte stream at random (the state of a xorshift
    /// sequence). A staging receive completes with any part of what has
    /// arrived; a direct receive, once its data is there, either with
    /// any part of it and no spill or with all of it and any part of what
    /// follows in the spill, as a TCP receive may.
    chop: u64,
}

impl H {
    fn new(sh: Arc<TargetShared>, buffers: usize, buf_size: usize) -> H {
        let (a, b) = UnixStream::pair().unwrap();
        let conn = Conn::with_socket(sh, a.into(), "127.0.0.1:1".parse().unwrap(), None, 0);
        let io = MockIo {
            pool: BufPool::new(buffers, buf_size).unwrap(),
            stats: ReactorStats::default(),
            ops: Vec::new(),
            sent: Vec::new(),
            disk: vec![0; DISK],
            waits_for_buffers: false,
            recv_pool_max: 0,
            recv_pools: 0,
            recv_pool_lens: Vec::new(),
            mapped: false,
            disk_reads: 0,
            disk_writes: 0,
            mapped_fault: false,
            written_now: 0,
            spilled: 0,
            sends: 0,
            order: Vec::new(),
            short_direct: 0,
            inline_disk: false,
        };
        let mut h = H {
            conn,
            io,
            inbox: VecDeque::new(),
            batch: false,
            staged_recvs: 0,
            _peer: b,
            hold_disk: false,
            itt: 1,
            cmd_sn: 0,
            chop: 0,
        };
        h.conn.on_start(&mut h.io);
        h.pump();
        h
    }

    /// Deliver every completion that can happen now (receives only while
    /// there are bytes to give).
    fn pump(&mut self) {
        loop {
            let ops = std::mem::take(&mut self.io.ops);
            let mut progress = false;
            for op in ops {
                match op {
                    Op::Recv { ptr, len, tag } if !self.inbox.is_empty() => {
                        let mut n = len.min(self.inbox.len());
                        if self.chop != 0 {
                            n = 1 + self.rand() as usize % n;
                        }
                        for i in 0..n {
                            // SAFETY: the connection gave `len` bytes at `ptr`.
                            unsafe { *ptr.add(i) = self.inbox.pop_front().unwrap() };
                        }
                        self.staged_recvs += 1;
                        self.conn.on_complete(&mut self.io, tag, n as i32);
                        progress = true;
                    }
                    Op::RecvPool {
                        ptr,
                        len,
                        spill,
                        tag,
                    }
                    | Op::RecvMapped {
                        ptr,
                        len,
                        spill,
                        tag,
                    } if self.inbox.len() >= len => {
                        let (len, spill) = match self.io.recv_pool_max {
                            0 => (len, spill),
                            m if m >= len => (len, spill),
                            m => (m, None),
                        };
                        let (len, spill) = if self.chop != 0 && self.rand().is_multiple_of(4) {
                            self.io.short_direct += 1;
                            (1 + self.rand() as usize % len, None)
                        } else {
                            (len, spill)
                        };
                        let spill_max = match (self.chop, spill) {
                            (0, _) | (_, None) => usize::MAX,
                            (_, Some(sp)) => {
                                let room = (sp.len() as usize).min(self.inbox.len() - len);
                                self.rand() as usize % (room + 1)
                            }
                        };
                        for i in 0..len {
                            // SAFETY: inside the task's pool buffer.
                            unsafe { *ptr.add(i) = self.inbox.pop_front().unwrap() };
                        }
                        // What follows the data, as far as it has arrived
                        // and fits, goes on into the spill.
                        let mut extra = 0;
                        if let Some(sp) = spill {
                            extra = (sp.len() as usize).min(self.inbox.len()).min(spill_max);
                            self.io.spilled += extra;
                            for i in 0..extra {
                                // SAFETY: the spill's constructor keeps it
                                // valid until this completion.
                                unsafe { *sp.ptr().add(i) = self.inbox.pop_front().unwrap() };
                            }
                        }
                        self.conn
                            .on_complete(&mut self.io, tag, (len + extra) as i32);
                        progress = true;
                    }
                    Op::Disk {
                        tag,
                        write,
                        ptr,
                        len,
                        offset,
                    } if !self.hold_disk => {
                        let o = offset as usize;
                        let d = &mut self.io.disk[o..o + len];
                        // SAFETY: `len` bytes of a pool buffer the task holds.
                        let b = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                        if write {
                            d.copy_from_slice(b);
                        } else {
                            b.copy_from_slice(d);
                        }
                        self.conn.on_complete(&mut self.io, tag, len as i32);
                        progress = true;
                    }
                    Op::Done { tag, res } => {
                        self.conn.on_complete(&mut self.io, tag, res);
                        progress = true;
                    }
                    other => self.io.ops.push(other),
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// The next number of the `chop` sequence.
    fn rand(&mut self) -> u64 {
        let mut x = self.chop;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.chop = x;
        x
    }

    fn send(&mut self, bhs: &[u8; BHS_LEN], data: &[u8]) {
        let mut b = *bhs;
        b[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        self.inbox.extend(b);
        if self.conn.hd {
            self.inbox.extend(crc32c::crc32c(&b).to_le_bytes());
        }
        self.inbox.extend(data);
        let pad = vec![0; pad_len(data.len())];
        self.inbox.extend(&pad);
        if self.conn.dd && !data.is_empty() {
            let crc = crc32c::crc32c_append(crc32c::crc32c(data), &pad);
            self.inbox.extend(crc.to_le_bytes());
        }
        if !self.batch {
            self.pump();
        }
    }

    /// The target's PDUs sent so far: (header, data).
    fn take_pdus(&mut self) -> Vec<([u8; BHS_LEN], Vec<u8>)> {
        let mut out = Vec::new();
        let s = std::mem::take(&mut self.io.sent);
        let mut p = 0;
        while p + BHS_LEN <= s.len() {
            let h: [u8; BHS_LEN] = s[p..p + BHS_LEN].try_into().unwrap();
            p += BHS_LEN;
            // Digests start after the login (whose last response is
            // already in `sent` when they are switched on).
            let digests = h[0] & 0x3f != 0x23;
            if self.conn.hd && digests {
                let got = u32::from_le_bytes(s[p..p + 4].try_into().unwrap());
                assert_eq!(got, crc32c::crc32c(&h), "header digest");
                p += 4;
            }
            let dsl = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
            let d = s[p..p + dsl].to_vec();
            p += dsl + pad_len(dsl);
            if self.conn.dd && digests && dsl > 0 {
                p += 4;
            }
            out.push((h, d));
        }
        out
    }

    fn login(
        &mut self,
        initiator: &str,
        isid_last: u8,
        extra: &[(&str, &str)],
    ) -> Vec<([u8; BHS_LEN], Vec<u8>)> {
        let mut text = String::new();
        let keys = [
            ("InitiatorName", initiator),
            ("SessionType", "Normal"),
            ("TargetName", IQN),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
        ];
        let given = |k: &str| extra.iter().any(|(e, _)| *e == k);
        for (k, v) in keys.iter().filter(|(k, _)| !given(k)).chain(extra) {
            text.push_str(&format!("{k}={v}\0"));
        }
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x43;
        b[1] = 0x80 | (1 << 2) | 3; // Operational -> full feature
        b[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, isid_last]);
        b[16..20].copy_from_slice(&0u32.to_be_bytes());
        self.send(&b, text.as_bytes());
        self.take_pdus()
    }

    fn logged_in(&mut self, extra: &[(&str, &str)]) {
        let r = self.login("iqn.2026-11.org.test:i", 1, extra);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0[0] & 0x3f, 0x23);
        assert_eq!((r[0].0[36], r[0].0[37]), (0, 0), "login failed");
        assert_eq!(r[0].0[1] & 0x83, 0x83, "not in full feature phase");
    }

    fn cmd(&mut self, cdb: &[u8], read: u32, write: u32, imm: &[u8]) -> u32 {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x01;
        b[1] = 0x80 | if read > 0 { 0x40 } else { 0 } | if write > 0 { 0x20 } else { 0 };
        let itt = self.itt;
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[20..24].copy_from_slice(&read.max(write).to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        self.itt += 1;
        self.cmd_sn += 1;
        self.send(&b, imm);
        itt
    }

    fn data_out(&mut self, itt: u32, ttt: u32, data_sn: u32, off: u32, fin: bool, data: &[u8]) {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x05;
        b[1] = if fin { 0x80 } else { 0 };
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[20..24].copy_from_slice(&ttt.to_be_bytes());
        b[36..40].copy_from_slice(&data_sn.to_be_bytes());
        b[40..44].copy_from_slice(&off.to_be_bytes());
        self.send(&b, data);
    }
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x2a;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

/// (opcode, SCSI status or reject reason, TTT/offset/len of an R2T).
fn summary(p: &[([u8; BHS_LEN], Vec<u8>)]) -> Vec<(u8, u8)> {
    p.iter().map(|(h, _)| (h[0] & 0x3f, h[3])).collect()
}

const R2T: u8 = 0x31;
const RSP: u8 = 0x21;
const DATA_IN: u8 = 0x25;

#[test]
fn login_write_read_round_trip() {
    let mut h = H::new(shared(1), 8, 64 * 1024);
    h.logged_in(&[]);
    // 16 blocks: 4 KiB immediate, the rest by R2T (InitialR2T=Yes).
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    let itt = h.cmd(&write10(4, 16), 0, 8192, &data[..4096]);
    let p = h.take_pdus();
    assert_eq!(summary(&p), vec![(R2T, 0)]);
    let (ttt, off, len) = (
        be32(&p[0].0[20..]),
        be32(&p[0].0[40..]),
        be32(&p[0].0[44..]),
    );
    assert_eq!((off, len), (4096, 4096));
    h.data_out(itt, ttt, 0, off, true, &data[4096..]);
    let p = h.take_pdus();
    assert_eq!(summary(&p), vec![(RSP, 0)]);
    assert_eq!(&h.io.disk[4 * 512..4 * 512 + 8192], &data[..]);
    // Read it back: Data-In with the status in the last PDU.
    h.cmd(&read10(4, 16), 8192, 0, &[]);
    let p = h.take_pdus();
    let got: Vec<u8> = p.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(got, data);
    let last = &p.last().unwrap().0;
    assert_eq!((last[0] & 0x3f, last[1] & 0x81), (0x25, 0x81));
    assert!(h.conn.tasks.is_empty());
    assert_eq!(h.io.pool.available(), 8);
}

#[test]
fn reads_of_a_mapped_lu_are_sent_from_the_mapping_without_a_buffer() {
    let mut h = H::new(shared(1), 8, 64 * 1024);
    h.io.mapped = true;
    h.logged_in(&[]);
    let data: Vec<u8> = (0..196608u32).map(|i| (i * 13 + i / 512) as u8).collect();
    h.io.disk[512..512 + data.len()].copy_from_slice(&data);
    // 192 KiB from block 1: three 64 KiB chunks, each sent in place.
    h.cmd(&read10(1, 384), 196608, 0, &[]);
    let p = h.take_pdus();
    let got: Vec<u8> = p.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(got, data);
    let last = &p.last().unwrap().0;
    assert_eq!((last[0] & 0x3f, last[1] & 0x81), (0x25, 0x81));
    assert_eq!(h.io.disk_reads, 0, "a mapped read went through a buffer");
    assert!(h.conn.tasks.is_empty());
    assert_eq!(h.io.pool.available(), 8);
    // Below 64 KiB the LU is read into a buffer, as before.
    h.cmd(&read10(1, 8), 4096, 0, &[]);
    let p = h.take_pdus();
    assert_eq!(
        p.iter().flat_map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        data[..4096]
    );
    assert_eq!(h.io.disk_reads, 1);
}

#[test]
fn writes_to_a_mapped_lu_are_received_into_the_mapping_without_a_buffer() {
    let mut h = immediate_data_session();
    h.io.mapped = true;
    // 192 KiB at block 1: 100 KiB immediate (the first 64 KiB staged, the
    // rest received into the mapping), unsolicited Data-Out up to the
    // first burst, then R2T-driven Data-Out.
    let data: Vec<u8> = (0..196608u32).map(|i| (i * 7 + i / 509) as u8).collect();
    let itt = h.cmd(&write10(1, 384), 0, 196608, &data[..102400]);
    assert_eq!(h.io.pool.available(), 8, "a placed write took a buffer");
    h.data_out(itt, RESERVED_TAG, 0, 102400, true, &data[102400..131072]);
    let mut sent = 131072;
    for _ in 0..8 {
        let p = h.take_pdus();
        if p.iter().any(|(b, _)| b[0] & 0x3f == RSP) {
            assert_eq!(summary(&p).last(), Some(&(RSP, 0)));
            break;
        }
        let r = p.iter().find(|(b, _)| b[0] & 0x3f == R2T).expect("an R2T");
        let (ttt, off, len) = (be32(&r.0[20..]), be32(&r.0[40..]), be32(&r.0[44..]));
        assert_eq!(off, sent);
        let end = (off + len) as usize;
        h.data_out(itt, ttt, 0, off, true, &data[off as usize..end]);
        sent = end as u32;
    }
    assert_eq!(sent, 196608);
    assert_eq!(&h.io.disk[512..512 + data.len()], &data[..]);
    assert_eq!(
        h.io.disk_writes, 0,
        "a placed write went through a disk write"
    );
    assert!(h.io.written_now > 0 && h.io.written_now < 102400);
    assert!(h.io.stats.mapped_writes.load(Relaxed) >= 2);
    assert!(h.conn.tasks.is_empty());
    // Small writes keep the buffer path.
    h.cmd(&write10(1, 8), 0, 4096, &data[..4096]);
    assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
    assert_eq!(h.io.disk_writes, 1);
    session_still_works(&mut h);
}

#[test]
fn a_placed_write_that_faults_is_finished_with_copies() {
    let mut h = immediate_data_session();
    h.io.mapped = true;
    h.io.mapped_fault = true;
    // The receive into the mapping fails (a shrunk file): the rest of the
    // segment comes through staging and is written as it arrives.
    let data: Vec<u8> = (0..131072u32).map(|i| (i * 3 + i / 511) as u8).collect();
    h.cmd(&write10(0, 256), 0, 131072, &data);
    assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
    assert_eq!(&h.io.disk[..data.len()], &data[..]);
    assert_eq!(h.io.written_now, data.len());
    session_still_works(&mut h);
}

#[test]
fn large_writes_span_several_chunks_and_bursts() {
    // 8 KiB buffers: a 40 KiB write goes in five chunks.
    let mut h = H::new(shared(1), 8, 8192);
    h.logged_in(&[("MaxBurstLength", "16384")]);
    let data: Vec<u8> = (0..40960u32).map(|i| (i / 3) as u8).collect();
    let itt = h.cmd(&write10(0, 80), 0, 40960, &[]);
    let mut sent = 0;
    for _ in 0..20 {
        let p = h.take_pdus();
        if p.iter().any(|(b, _)| b[0] & 0x3f == RSP) {
            assert_eq!(summary(&p).last(), Some(&(RSP, 0)));
            break;
        }
        assert_eq!(summary(&p), vec![(R2T, 0)]);
        let (ttt, off, len) = (
            be32(&p[0].0[20..]),
            be32(&p[0].0[40..]),
            be32(&p[0].0[44..]),
        );
        assert_eq!(off, sent);
        h.data_out(
            itt,
            ttt,
            0,
            off,
            true,
            &data[off as usize..(off + len) as usize],
        );
        sent += len;
    }
    assert_eq!(sent, 40960);
    assert_eq!(&h.io.disk[..40960], &data[..]);
}

/// Logged in with 128 KiB buffers and up to 128 KiB of immediate data.
fn immediate_data_session() -> H {
    immediate_data_session_with(false)
}

/// The same, with header and data digests if `digests`.
fn immediate_data_session_with(digests: bool) -> H {
    let mut h = H::new(shared(1), 8, 128 * 1024);
    let d = if digests { "CRC32C" } else { "None" };
    h.logged_in(&[
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("FirstBurstLength", "131072"),
        ("MaxBurstLength", "262144"),
        ("HeaderDigest", d),
        ("DataDigest", d),
    ]);
    assert_eq!((h.conn.hd, h.conn.dd), (digests, digests));
    h
}

#[test]
fn a_small_answer_goes_to_the_ring_before_the_next_receive_and_a_large_one_after() {
    let mut h = immediate_data_session();
    h.io.inline_disk = true;
    // A 4 KiB write answered in the completion that brought it: the
    // response first, so that its segment acknowledges the write and the
    // receive after it has no ACK of its own to send.
    let data = vec![7u8; 4096];
    h.io.order.clear();
    h.cmd(&write10(0, 8), 0, 4096, &data);
    assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
    assert_eq!(String::from_utf8_lossy(&h.io.order), "sr");
    // 128 KiB of Data-In: the receive first.
    h.io.mapped = true;
    h.io.order.clear();
    h.cmd(&read10(0, 256), 131072, 0, &[]);
    let p = h.take_pdus();
    assert_eq!(summary(&p), vec![(DATA_IN, 0)]);
    assert_eq!(p[0].1.len(), 131072);
    assert_eq!(String::from_utf8_lossy(&h.io.order), "rs");
    assert_eq!(&h.io.disk[..4096], &data[..]);
    session_still_works(&mut h);
}

#[test]
fn a_direct_receive_that_completes_short_is_posted_again_for_the_rest() {
    let mut h = immediate_data_session();
    // 100 KiB of immediate data: the staging receive takes the first
    // 64 KiB, the rest goes straight into the task's buffer, 10000 bytes
    // per completion.
    h.io.recv_pool_max = 10000;
    let data: Vec<u8> = (0..102400u32).map(|i| (i % 251) as u8).collect();
    h.cmd(&write10(0, 200), 0, 102400, &data);
    let p = h.take_pdus();
    assert_eq!(summary(&p), vec![(RSP, 0)]);
    assert!(h.io.recv_pools >= 3, "{} direct receives", h.io.recv_pools);
    assert_eq!(&h.io.disk[..102400], &data[..]);
    session_still_works(&mut h);
}

#[test]
fn after_a_large_segment_the_next_one_lands_in_its_buffer_from_the_first_byte() {
    let mut h = immediate_data_session();
    let a: Vec<u8> = (0..102400u32).map(|i| (i % 253) as u8).collect();
    h.cmd(&write10(0, 200), 0, 102400, &a);
    assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
    // The receive waiting now takes one header, no more.
    let waiting: Vec<usize> =
        h.io.ops
            .iter()
            .filter_map(|o| match o {
                Op::Recv { len, .. } => Some(*len),
                _ => None,
            })
            .collect();
    assert_eq!(waiting, vec![BHS_LEN]);
    // So all of the next command's 100 KiB goes straight into its buffer.
    let b: Vec<u8> = (0..102400u32).map(|i| (i % 241) as u8).collect();
    h.io.recv_pool_lens.clear();
    h.cmd(&write10(200, 200), 0, 102400, &b);
    assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
    assert_eq!(h.io.recv_pool_lens, vec![102400]);
    assert_eq!(&h.io.disk[..102400], &a[..]);
    assert_eq!(&h.io.disk[102400..204800], &b[..]);
    session_still_works(&mut h);
}

#[test]
fn back_to_back_large_segments_take_one_receive_each() {
    for (mapped, digests) in [(false, false), (true, false), (false, true)] {
        let mut h = immediate_data_session_with(digests);
        h.io.mapped = mapped;
        let seg = |k: u32| -> Vec<u8> { (0..102400u32).map(|i| (i * k % 251) as u8).collect() };
        h.cmd(&write10(0, 200), 0, 102400, &seg(3));
        assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
        // Two more large writes and a small one, all queued on the socket
        // before the target looks.
        h.batch = true;
        h.cmd(&write10(200, 200), 0, 102400, &seg(5));
        h.cmd(&write10(400, 200), 0, 102400, &seg(7));
        h.cmd(&write10(600, 1), 0, 512, &[0x77; 512]);
        h.batch = false;
        let (staged, spilled) = (h.staged_recvs, h.io.spilled);
        h.io.recv_pool_lens.clear();
        h.pump();
        assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0); 3]);
        // Each large segment's receive brought the next header with it:
        // the only staging receives are the one that was waiting for the
        // first header and the one for the small write's data.
        // (With digests, each spill is the data digest, the next header
        // and its digest.)
        let per = if digests { BHS_LEN + 8 } else { BHS_LEN };
        assert_eq!(h.io.spilled - spilled, 2 * per, "{mapped} {digests}");
        assert_eq!(h.staged_recvs - staged, 2, "{mapped} {digests}");
        if !mapped {
            assert_eq!(h.io.recv_pool_lens, vec![102400, 102400]);
        }
        assert_eq!(&h.io.disk[102400..204800], &seg(5)[..]);
        assert_eq!(&h.io.disk[204800..307200], &seg(7)[..]);
        assert!(h.io.disk[307200..307712].iter().all(|&b| b == 0x77));
        session_still_works(&mut h);
    }
}

#[test]
fn commands_that_arrive_together_are_answered_in_one_send() {
    // Buffers for all sixteen at once.
    let mut h = H::new(shared(1), 32, 64 * 1024);
    h.logged_in(&[("InitialR2T", "No"), ("ImmediateData", "Yes")]);
    h.io.inline_disk = true;
    // Eight 4 KiB writes and eight 4 KiB reads in one receive.
    h.batch = true;
    for i in 0..8 {
        h.cmd(&write10(i * 8, 8), 0, 4096, &[i as u8 + 1; 4096]);
    }
    for i in 0..8 {
        h.cmd(&read10(i * 8, 8), 4096, 0, &[]);
    }
    h.batch = false;
    let sends = h.io.sends;
    h.pump();
    let p = h.take_pdus();
    assert_eq!(p.len(), 16, "{:?}", summary(&p));
    assert_eq!(h.io.sends - sends, 1, "one sendmsg for all sixteen");
    for (i, (_, d)) in p[8..].iter().enumerate() {
        assert_eq!(d, &vec![i as u8 + 1; 4096]);
    }
}

/// The sense key, ASC and ASCQ of a CHECK CONDITION response's data.
fn sense_of(data: &[u8]) -> (u8, u8, u8) {
    assert!(data.len() >= 2 + 14, "no sense data");
    (data[2 + 2] & 0x0f, data[2 + 12], data[2 + 13])
}

/// ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR.
const CRC_ERROR: (u8, u8, u8) = (0x0b, 0x47, 0x05);

/// After a refused Data-Out the session goes on: a write and a read of
/// the same blocks work.
fn session_still_works(h: &mut H) {
    assert!(
        !h.conn.closing && !h.conn.close_after_send,
        "connection closed"
    );
    h.cmd(&write10(64, 1), 0, 512, &[0x5a; 512]);
    assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
    assert!(h.io.disk[64 * 512..65 * 512].iter().all(|&b| b == 0x5a));
}

#[test]
fn unsolicited_data_over_immediate_data_is_not_acknowledged() {
    let mut h = H::new(shared(1), 8, 64 * 1024);
    h.logged_in(&[("InitialR2T", "No")]);
    let itt = h.cmd(&write10(0, 8), 0, 4096, &[0xAA; 2048]);
    // The same first 2 KiB again as unsolicited Data-Out, then the rest
    // of the burst.
    h.data_out(itt, RESERVED_TAG, 0, 0, false, &[0xBB; 2048]);
    assert!(h.take_pdus().is_empty(), "the burst is not over yet");
    h.data_out(itt, RESERVED_TAG, 1, 2048, true, &[0xBB; 2048]);
    let p = h.take_pdus();
    assert_eq!(
        summary(&p),
        vec![(RSP, 2)],
        "no GOOD for data counted twice"
    );
    assert_eq!(sense_of(&p[0].1), CRC_ERROR);
    assert!(h.io.disk[..4096].iter().all(|&b| b == 0), "nothing written");
    session_still_works(&mut h);
}

#[test]
fn a_repeated_part_of_an_r2t_burst_is_not_counted_twice() {
    let mut h = H::new(shared(1), 8, 64 * 1024);
    h.logged_in(&[]);
    let itt = h.cmd(&write10(0, 8), 0, 4096, &[]);
    let p = h.take_pdus();
    let ttt = be32(&p[0].0[20..]);
    h.data_out(itt, ttt, 0, 0, false, &[1; 2048]);
    h.data_out(itt, ttt, 1, 0, true, &[2; 2048]);
    let p = h.take_pdus();
    assert_eq!(summary(&p), vec![(RSP, 2)]);
    assert_eq!(sense_of(&p[0].1), CRC_ERROR);
    assert!(h.io.disk[..4096].iter().all(|&b| b == 0));
    session_still_works(&mut h);
}

#[test]
fn a_data_sn_gap_ends_the_task_with_check_condition() {
    // RFC 7143 7.8: a DataSN gap stands for a lost PDU; at ERL 0 the
    // task ends with CHECK CONDITION after the burst, the session stays.
    let mut h = H::new(shared(1), 8, 64 * 1024);
    h.logged_in(&[]);
    let itt = h.cmd(&write10(0, 8), 0, 4096, &[]);
    let ttt = be32(&h.take_pdus()[0].0[20..]);
    h.data_out(itt, ttt, 0, 0, false, &[1; 1024]);
    h.data_out(itt, ttt, 2, 1024, true, &[1; 3072]);
    let p = h.take_pdus();
    assert_eq!(summary(&p), vec![(RSP, 2)]);
    assert_eq!(sense_of(&p[0].1), CRC_ERROR);
    assert!(h.io.disk[..4096].iter().all(|&b| b == 0));
    session_still_works(&mut h);
}

#[test]
fn bad_data_sn_values_each_end_their_task() {
    // What libiscsi's iSCSIDataSnInvalid sends: 0 twice, 27, -1, and
    // (1, 0) reversed.
    let cases: [&[u32]; 4] = [&[0, 0], &[27], &[u32::MAX], &[1, 0]];
    for sns in cases {
        let mut h = H::new(shared(1), 8, 64 * 1024);
        h.logged_in(&[]);
        let n = sns.len() as u32;
        let itt = h.cmd(&write10(100, n as u16), 0, 512 * n, &[]);
        let ttt = be32(&h.take_pdus()[0].0[20..]);
        for (i, &sn) in sns.iter().enumerate() {
            let last = i + 1 == sns.len();
            h.data_out(itt, ttt, sn, 512 * i as u32, last, &[7; 512]);
            if !last {
                // (1, 0): nothing is answered before the burst ends.
                let p = h.take_pdus();
                assert!(p.is_empty() || sns[0] == 0, "{sns:?}: {:?}", summary(&p));
            }
        }
        let p = h.take_pdus();
        assert_eq!(summary(&p), vec![(RSP, 2)], "{sns:?}");
        assert_eq!(sense_of(&p[0].1), CRC_ERROR, "{sns:?}");
        assert!(h.io.disk[100 * 512..(100 + n as usize) * 512]
            .iter()
            .all(|&b| b == 0));
        session_still_works(&mut h);
    }
}

#[test]
fn writes_that_never_send_data_do_not_take_every_buffer() {
    // 16 buffers: one connection may hold 4.
    let mut h = H::new(shared(1), 16, 64 * 1024);
    h.logged_in(&[]);
    for i in 0..10 {
        h.cmd(&write10(i * 8, 8), 0, 4096, &[]);
    }
    let r2ts = summary(&h.take_pdus())
        .iter()
        .filter(|p| p.0 == R2T)
        .count();
    assert_eq!(r2ts, 4, "only as many writes as the buffer limit start");
    assert_eq!(h.io.pool.available(), 12);
}

fn abort(h: &mut H, itt: u32) -> Option<u8> {
    let mut t = [0u8; BHS_LEN];
    t[0] = 0x42; // immediate Task Management
    t[1] = 0x81; // ABORT TASK
    t[16..20].copy_from_slice(&0x1000u32.to_be_bytes());
    t[20..24].copy_from_slice(&itt.to_be_bytes());
    t[24..28].copy_from_slice(&h.cmd_sn.to_be_bytes());
    h.send(&t, &[]);
    let p = h.take_pdus();
    assert!(
        p.iter().all(|(b, _)| b[0] & 0x3f != RSP),
        "status for an aborted task"
    );
    p.iter()
        .find(|(b, _)| b[0] & 0x3f == 0x22)
        .map(|(b, _)| b[2])
}

#[test]
fn abort_in_every_state_returns_the_buffers() {
    // 16 buffers: this connection may hold 4.
    let mut h = H::new(shared(1), 16, 64 * 1024);
    h.logged_in(&[]);
    // Waiting for its Data-Out (buffer held, R2T out).
    let waiting_data = h.cmd(&write10(0, 8), 0, 4096, &[]);
    // Its disk read in flight.
    h.hold_disk = true;
    let reading = h.cmd(&read10(0, 8), 4096, 0, &[]);
    // Half its data in, then parked writes for lack of buffers.
    let half = h.cmd(&write10(8, 8), 0, 4096, &[]);
    let p = h.take_pdus();
    let ttt = be32(&p.last().unwrap().0[20..]);
    h.data_out(half, ttt, 0, 0, false, &[5; 2048]);
    h.cmd(&write10(16, 8), 0, 4096, &[]);
    let parked = h.cmd(&write10(24, 8), 0, 4096, &[]);
    h.take_pdus();
    assert_eq!(h.io.pool.available(), 12);
    for itt in [waiting_data, reading, half, parked] {
        assert_eq!(abort(&mut h, itt), Some(0), "ABORT TASK {itt}");
    }
    // Unknown now: already gone.
    assert_eq!(abort(&mut h, parked), Some(1));
    // The read's buffer is held until its disk I/O ends.
    assert!(h.io.pool.available() < 16);
    h.hold_disk = false;
    h.pump();
    // The remaining write got a buffer and its R2T; abort it too.
    let left = h.conn.tasks.active_where(|_| true);
    assert_eq!(left.len(), 1);
    let itt = h.conn.tasks.get(left[0]).unwrap().itt;
    assert_eq!(abort(&mut h, itt), Some(0));
    h.pump();
    assert!(h.conn.tasks.is_empty());
    assert_eq!(h.io.pool.available(), 16);
    // Late Data-Out for an aborted task is dropped quietly.
    h.data_out(half, ttt, 1, 2048, true, &[5; 2048]);
    assert!(h.take_pdus().is_empty());
    assert!(h.io.disk[8 * 512..16 * 512].iter().all(|&b| b == 0));
}

#[test]
fn commands_outside_the_cmd_sn_window_are_ignored() {
    let mut h = H::new(shared(1), 8, 64 * 1024);
    h.logged_in(&[]);
    h.cmd_sn = 1000;
    h.cmd(&[0x00, 0, 0, 0, 0, 0], 0, 0, &[]); // TEST UNIT READY
    assert!(h.take_pdus().is_empty());
    h.cmd_sn = 0;
    h.cmd(&[0x00, 0, 0, 0, 0, 0], 0, 0, &[]);
    let p = h.take_pdus();
    assert_eq!(summary(&p), vec![(RSP, 0)]);
    // Exactly one past the MaxCmdSN just advertised is dropped without
    // an answer too (RFC 7143 3.2.2.1); the window is still usable.
    let max = be32(&p[0].0[32..]);
    h.cmd_sn = max.wrapping_add(1);
    h.cmd(&[0x00, 0, 0, 0, 0, 0], 0, 0, &[]);
    assert!(h.take_pdus().is_empty(), "CmdSN MaxCmdSN+1 was answered");
    h.cmd_sn = 1;
    h.cmd(&[0x00, 0, 0, 0, 0, 0], 0, 0, &[]);
    assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
}

#[test]
fn hostile_bytes_never_panic() {
    // A small deterministic generator: random PDUs after a good login.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200 {
        let mut h = H::new(shared(2), 8, 16 * 1024);
        if round % 4 != 0 {
            h.logged_in(&[("InitialR2T", if round % 2 == 0 { "Yes" } else { "No" })]);
        }
        for _ in 0..30 {
            let mut b = [0u8; BHS_LEN];
            for v in b.iter_mut() {
                *v = rnd() as u8;
            }
            b[0] = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x1c][rnd() as usize % 9];
            b[4] = 0; // no AHS
            let dsl = (rnd() % 9000) as usize;
            let data = vec![rnd() as u8; dsl];
            h.send(&b, &data);
            h.take_pdus();
            if h.conn.closing {
                break;
            }
        }
        h.conn.on_shutdown(&mut h.io);
        h.pump();
        assert!(h.conn.is_finished() || !h.io.ops.is_empty());
    }
}

#[test]
fn reinstatement_closes_the_old_connection_first() {
    let sh = shared(1);
    let mut old = H::new(sh.clone(), 8, 64 * 1024);
    old.logged_in(&[]);
    let mut new = H::new(sh.clone(), 8, 64 * 1024);
    let r = new.login("iqn.2026-11.org.test:i", 1, &[]);
    // The final response waits for the old session to end.
    assert!(r.is_empty());
    assert!(new
        .io
        .ops
        .iter()
        .any(|o| matches!(o, Op::Timeout { tag } if *tag == TAG_REINSTATE_TIMER)));
    // The old connection sees its socket shut down and goes away.
    old.conn.on_shutdown(&mut old.io);
    old.pump();
    drop(old);
    // The poll timer fires: now the login completes.
    new.io
        .ops
        .retain(|o| !matches!(o, Op::Timeout { tag } if *tag == TAG_REINSTATE_TIMER));
    new.conn
        .on_complete(&mut new.io, TAG_REINSTATE_TIMER, -libc::ETIME);
    new.pump();
    let r = new.take_pdus();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0[36], r[0].0[37]), (0, 0));
    // Another ISID is a separate session: no waiting.
    let mut other = H::new(sh, 8, 64 * 1024);
    assert_eq!(other.login("iqn.2026-11.org.test:i", 2, &[]).len(), 1);
}

/// Send a task management request `function` for LUN 0 and return the
/// PDUs answered.
fn tmf(h: &mut H, function: u8) -> Vec<([u8; BHS_LEN], Vec<u8>)> {
    let mut t = [0u8; BHS_LEN];
    t[0] = 0x42; // immediate Task Management
    t[1] = 0x80 | function;
    t[16..20].copy_from_slice(&0x2000u32.to_be_bytes());
    t[20..24].copy_from_slice(&RESERVED_TAG.to_be_bytes());
    t[24..28].copy_from_slice(&h.cmd_sn.to_be_bytes());
    h.send(&t, &[]);
    let p = h.take_pdus();
    assert_eq!(summary(&p), vec![(0x22, 0)]);
    assert_eq!(p[0].0[2], 0, "function {function} not complete");
    p
}

const TUR: [u8; 6] = [0; 6];
const UA_RESET: (u8, u8, u8) = (0x06, 0x29, 0x03);

/// Two sessions of one initiator (multipath: same name, two ISIDs) on
/// one target, both logged in and past their first command.
fn two_paths() -> (H, H) {
    let sh = shared(1);
    let mut a = H::new(sh.clone(), 8, 64 * 1024);
    let mut b = H::new(sh, 8, 64 * 1024);
    let r = a.login("iqn.2026-11.org.test:i", 1, &[]);
    assert_eq!((r[0].0[36], r[0].0[37]), (0, 0));
    let r = b.login("iqn.2026-11.org.test:i", 2, &[]);
    assert_eq!((r[0].0[36], r[0].0[37]), (0, 0));
    for h in [&mut a, &mut b] {
        h.cmd(&TUR, 0, 0, &[]);
        assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
    }
    (a, b)
}

#[test]
fn lu_reset_aborts_and_raises_unit_attention_on_every_session() {
    let (mut a, mut b) = two_paths();
    // A has a write waiting for its data when B resets the LU.
    let w = a.cmd(&write10(0, 8), 0, 4096, &[]);
    let ttt = be32(&a.take_pdus()[0].0[20..]);
    tmf(&mut b, 5); // LOGICAL UNIT RESET
                    // A's task was aborted by the reset: its data is dropped, no status.
    a.data_out(w, ttt, 0, 0, true, &[9; 4096]);
    let p = a.take_pdus();
    assert!(
        p.is_empty(),
        "status for a task aborted by a reset: {:?}",
        summary(&p)
    );
    assert!(
        a.io.disk[..4096].iter().all(|&x| x == 0),
        "aborted write reached the disk"
    );
    // Both sessions, the resetting one included, see the unit attention
    // once; INQUIRY does not consume it.
    for h in [&mut a, &mut b] {
        h.cmd(&[0x12, 0, 0, 0, 36, 0], 36, 0, &[]);
        let p = h.take_pdus();
        // Data-In with status, GOOD.
        assert_eq!(summary(&p).last(), Some(&(0x25, 0)), "INQUIRY");
        h.cmd(&TUR, 0, 0, &[]);
        let p = h.take_pdus();
        assert_eq!(summary(&p), vec![(RSP, 2)]);
        assert_eq!(sense_of(&p[0].1), UA_RESET);
        h.cmd(&TUR, 0, 0, &[]);
        assert_eq!(summary(&h.take_pdus()), vec![(RSP, 0)]);
    }
}

#[test]
fn a_placed_write_aborted_by_a_reset_stores_nothing() {
    let (mut a, mut b) = two_paths();
    a.io.mapped = true;
    // A 64 KiB write, received in place, waits for its data when B resets
    // the LU: the data that then comes must not reach the medium.
    let w = a.cmd(&write10(0, 128), 0, 65536, &[]);
    let p = a.take_pdus();
    assert_eq!(summary(&p), vec![(R2T, 0)]);
    let (ttt, len) = (be32(&p[0].0[20..]), be32(&p[0].0[44..]) as usize);
    assert!(len >= 16384, "R2T for {len} bytes");
    tmf(&mut b, 5); // LOGICAL UNIT RESET
    a.data_out(w, ttt, 0, 0, true, &vec![9; len]);
    assert!(a.take_pdus().is_empty(), "status for an aborted write");
    assert!(
        a.io.disk[..len].iter().all(|&x| x == 0),
        "aborted write reached the medium"
    );
}

#[test]
fn clear_task_set_reaches_other_sessions_abort_task_set_does_not() {
    let (mut a, mut b) = two_paths();
    let w = a.cmd(&write10(0, 8), 0, 4096, &[]);
    let ttt = be32(&a.take_pdus()[0].0[20..]);
    // ABORT TASK SET acts on the sender's tasks only.
    tmf(&mut b, 2); // ABORT TASK SET
    a.data_out(w, ttt, 0, 0, true, &[9; 4096]);
    assert_eq!(summary(&a.take_pdus()), vec![(RSP, 0)]);
    // CLEAR TASK SET ends every session's tasks; the others get
    // COMMANDS CLEARED BY ANOTHER INITIATOR, the sender nothing.
    let w = a.cmd(&write10(0, 8), 0, 4096, &[]);
    let ttt = be32(&a.take_pdus()[0].0[20..]);
    tmf(&mut b, 4); // CLEAR TASK SET
    a.data_out(w, ttt, 0, 0, true, &[7; 4096]);
    let p = a.take_pdus();
    assert!(p.is_empty(), "status for a cleared task: {:?}", summary(&p));
    a.cmd(&TUR, 0, 0, &[]);
    let p = a.take_pdus();
    assert_eq!(summary(&p), vec![(RSP, 2)]);
    assert_eq!(sense_of(&p[0].1), (0x06, 0x2f, 0x00));
    b.cmd(&TUR, 0, 0, &[]);
    assert_eq!(summary(&b.take_pdus()), vec![(RSP, 0)]);
}

#[test]
fn target_warm_reset_raises_unit_attention_on_every_lun_and_session() {
    let sh = shared(2);
    let mut a = H::new(sh.clone(), 8, 64 * 1024);
    let mut b = H::new(sh, 8, 64 * 1024);
    a.login("iqn.2026-11.org.test:a", 1, &[]);
    b.login("iqn.2026-11.org.test:b", 1, &[]);
    for h in [&mut a, &mut b] {
        h.cmd(&TUR, 0, 0, &[]);
        h.take_pdus();
    }
    tmf(&mut a, 6); // TARGET WARM RESET
    for h in [&mut a, &mut b] {
        h.cmd(&TUR, 0, 0, &[]);
        let p = h.take_pdus();
        assert_eq!(sense_of(&p[0].1), UA_RESET);
    }
}

impl H {
    /// Fire the keepalive timer once (one interval went by).
    fn nop_tick(&mut self) {
        let at = self
            .io
            .ops
            .iter()
            .position(|o| matches!(o, Op::Timeout { tag } if *tag == TAG_NOP_TIMER))
            .expect("keepalive timer not armed");
        self.io.ops.remove(at);
        self.conn
            .on_complete(&mut self.io, TAG_NOP_TIMER, -libc::ETIME);
        self.pump();
    }
}

#[test]
fn an_idle_connection_is_pinged_and_closed_when_nothing_comes_back() {
    let mut h = H::new(shared(1), 8, 64 * 1024);
    h.logged_in(&[]);
    // Traffic (the login) during the interval: no ping.
    h.nop_tick();
    assert!(h.take_pdus().is_empty());
    h.nop_tick();
    let p = h.take_pdus();
    assert_eq!(summary(&p), vec![(0x20, 0)], "ping after a silent interval");
    let ttt = be32(&p[0].0[20..]);
    assert_ne!(ttt, RESERVED_TAG, "the ping asks for an answer");
    assert_eq!(be32(&p[0].0[16..]), RESERVED_TAG);
    // The initiator answers: no close, and the next silent interval pings
    // again.
    let mut nop = [0u8; BHS_LEN];
    nop[0] = 0x40; // immediate NOP-Out
    nop[1] = 0x80;
    nop[16..20].copy_from_slice(&RESERVED_TAG.to_be_bytes());
    nop[20..24].copy_from_slice(&ttt.to_be_bytes());
    nop[24..28].copy_from_slice(&h.cmd_sn.to_be_bytes());
    h.send(&nop, &[]);
    assert!(h.take_pdus().is_empty(), "no answer to a ping reply");
    h.nop_tick();
    assert!(h.take_pdus().is_empty(), "answered: not pinged again yet");
    assert!(!h.conn.closing);
    h.nop_tick();
    assert_eq!(summary(&h.take_pdus()), vec![(0x20, 0)]);
    // Then silence for the timeout (15 s, ticks of 5 s): closed.
    for _ in 0..2 {
        h.nop_tick();
        assert!(!h.conn.closing);
    }
    h.nop_tick();
    assert!(h.conn.closing, "a dead connection stays open");
    assert!(
        !h.io
            .ops
            .iter()
            .any(|o| matches!(o, Op::Timeout { tag } if *tag == TAG_NOP_TIMER)),
        "keepalive timer still armed after close"
    );
}

#[test]
fn logins_beyond_max_sessions_are_refused_with_out_of_resources() {
    let mut sh = TargetShared::new(
        IQN.into(),
        vec![Lun::new(
            open_backend(&LunSpec::parse("null:1M").unwrap(), 0).unwrap(),
            IQN,
            1 << 20,
        )],
        Limits::default(),
        16,
    );
    sh.max_sessions = 1;
    let sh = Arc::new(sh);
    let mut a = H::new(sh.clone(), 8, 64 * 1024);
    a.logged_in(&[]);
    let mut b = H::new(sh.clone(), 8, 64 * 1024);
    let r = b.login("iqn.2026-11.org.test:other", 1, &[]);
    assert_eq!((r[0].0[36], r[0].0[37]), (3, 2), "out of resources");
    // Reinstating the session held is still allowed (it does not add
    // one): the old connection is shut down and the new one waits.
    let mut c = H::new(sh, 8, 64 * 1024);
    let r = c.login("iqn.2026-11.org.test:i", 1, &[]);
    assert!(r.is_empty(), "reinstatement waits for the old connection");
}

#[test]
fn target_cold_reset_ends_every_session() {
    use std::io::Read;
    let (mut a, b) = two_paths();
    b._peer.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!((&b._peer).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "B's connection is up"
    );
    let p = tmf(&mut a, 7); // TARGET COLD RESET
    assert_eq!(p.len(), 1);
    assert!(
        a.conn.closing || a.conn.close_after_send,
        "the sender's connection ends too"
    );
    // B's socket was shut down: its peer sees end of file.
    assert_eq!((&b._peer).read(&mut byte).unwrap(), 0);
}

#[test]
fn request_sense_reports_and_clears_the_unit_attention() {
    let (mut a, mut b) = two_paths();
    tmf(&mut b, 5); // LOGICAL UNIT RESET
                    // Fixed format: key, ASC, ASCQ at 2, 12, 13; GOOD status.
    a.cmd(&[0x03, 0, 0, 0, 18, 0], 18, 0, &[]);
    let p = a.take_pdus();
    assert_eq!(summary(&p).last(), Some(&(0x25, 0)));
    let d = &p[0].1;
    assert_eq!(
        (d[0] & 0x7f, d[2] & 0x0f, d[12], d[13]),
        (0x70, 0x06, 0x29, 0x03)
    );
    a.cmd(&TUR, 0, 0, &[]);
    assert_eq!(summary(&a.take_pdus()), vec![(RSP, 0)], "cleared");
    // Descriptor format on request.
    b.cmd(&[0x03, 0x01, 0, 0, 252, 0], 252, 0, &[]);
    let p = b.take_pdus();
    let d = &p[0].1;
    assert_eq!(
        (d[0] & 0x7f, d[1] & 0x0f, d[2], d[3]),
        (0x72, 0x06, 0x29, 0x03)
    );
}

/// A command of `writes_land_whole_however_the_stream_is_cut` in flight.
struct InFlight {
    itt: u32,
    /// Byte offset on the disk.
    at: usize,
    /// What a write sends, or what a read must return.
    data: Vec<u8>,
    /// A read's data so far; None for a write.
    read: Option<Vec<u8>>,
}

/// Writes of every size and shape, several at once and among reads, with
/// the byte stream cut at random (see `H::chop`): immediate data of any
/// length, the rest of the first burst as unsolicited Data-Out in pieces
/// of any size, the rest by R2T; with and without digests, into buffers
/// and into the mapping. Every command is answered GOOD, every write lands
/// exactly where it should, every read returns what the disk held; no task
/// or buffer is left behind.
#[test]
fn writes_land_whole_however_the_stream_is_cut() {
    const REGION: usize = 256 * 1024;
    const FIRST_BURST: usize = 128 * 1024;
    // What the cases went through, summed: R2Ts answered, bytes taken in
    // spills, receives into the mapping, direct receives cut short.
    let (mut r2ts, mut spilled, mut mapped, mut short) = (0, 0, 0, 0);
    for seed in 1..=40u64 {
        let mut h = immediate_data_session_with(seed % 3 == 0);
        h.io.mapped = seed % 2 == 0;
        h.chop = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut model = vec![0u8; DISK];
        // Data-Out PDUs for `data[from..to]`, in pieces of any size.
        let data_outs = |h: &mut H, itt: u32, ttt: u32, data: &[u8], from: usize, to: usize| {
            let (mut off, mut sn) = (from, 0);
            while off < to {
                let n = (1 + h.rand() as usize % (to - off)).min(64 * 1024);
                let fin = off + n == to;
                h.data_out(itt, ttt, sn, off as u32, fin, &data[off..off + n]);
                off += n;
                sn += 1;
            }
        };
        for round in 0..3 {
            h.batch = true;
            let mut open: Vec<InFlight> = Vec::new();
            for r in 0..DISK / REGION {
                let blocks = 1 + h.rand() as usize % (REGION / 512);
                let len = blocks * 512;
                let at = r * REGION + h.rand() as usize % (REGION / 512 - blocks + 1) * 512;
                if h.rand().is_multiple_of(3) {
                    // A read of a region no write touches this round.
                    let cdb = read10((at / 512) as u32, blocks as u16);
                    let itt = h.cmd(&cdb, len as u32, 0, &[]);
                    let data = model[at..at + len].to_vec();
                    open.push(InFlight {
                        itt,
                        at,
                        data,
                        read: Some(vec![0; len]),
                    });
                    continue;
                }
                let (k, salt) = (h.rand() | 1, h.rand());
                let data: Vec<u8> = (0..len as u64)
                    .map(|i| ((i * k + salt) % 251) as u8)
                    .collect();
                let unsolicited = len.min(FIRST_BURST);
                let imm = h.rand() as usize % (unsolicited + 1);
                let cdb = write10((at / 512) as u32, blocks as u16);
                let itt = h.cmd(&cdb, 0, len as u32, &data[..imm]);
                data_outs(&mut h, itt, RESERVED_TAG, &data, imm, unsolicited);
                open.push(InFlight {
                    itt,
                    at,
                    data,
                    read: None,
                });
            }
            h.pump();
            for _ in 0..64 {
                if open.is_empty() {
                    break;
                }
                for (b, d) in h.take_pdus() {
                    let itt = be32(&b[16..]);
                    let i = open
                        .iter()
                        .position(|o| o.itt == itt)
                        .expect("a PDU for a command in flight");
                    let op = b[0] & 0x3f;
                    if op == DATA_IN {
                        let off = be32(&b[40..]) as usize;
                        let got = open[i].read.as_mut().expect("Data-In for a write");
                        got[off..off + d.len()].copy_from_slice(&d);
                    }
                    match op {
                        RSP | DATA_IN if op == RSP || b[1] & 0x01 != 0 => {
                            assert_eq!(b[3], 0, "seed {seed} round {round}: not GOOD");
                            let InFlight { at, data, read, .. } = open.remove(i);
                            match read {
                                Some(got) => assert!(got == data, "seed {seed}: read differs"),
                                None => model[at..at + data.len()].copy_from_slice(&data),
                            }
                        }
                        DATA_IN => {}
                        R2T => {
                            let (ttt, off, len) = (be32(&b[20..]), be32(&b[40..]), be32(&b[44..]));
                            let data = open[i].data.clone();
                            let (from, to) = (off as usize, (off + len) as usize);
                            r2ts += 1;
                            data_outs(&mut h, itt, ttt, &data, from, to);
                        }
                        op => panic!("seed {seed}: unexpected opcode {op:#x}"),
                    }
                }
                h.pump();
            }
            assert!(
                open.is_empty(),
                "seed {seed} round {round}: commands never answered"
            );
            assert!(
                h.io.disk == model,
                "seed {seed} round {round}: the disk differs"
            );
        }
        // And each region reads back as written.
        h.batch = false;
        for r in 0..DISK / REGION {
            let cdb = read10((r * REGION / 512) as u32, (REGION / 512) as u16);
            h.cmd(&cdb, REGION as u32, 0, &[]);
            let got: Vec<u8> = h.take_pdus().into_iter().flat_map(|(_, d)| d).collect();
            assert!(
                got == model[r * REGION..(r + 1) * REGION],
                "seed {seed}: read back differs"
            );
        }
        assert!(h.conn.tasks.is_empty(), "seed {seed}: tasks left");
        assert_eq!(h.io.pool.available(), 8, "seed {seed}: buffers left");
        assert!(!h.conn.closing, "seed {seed}: connection closed");
        spilled += h.io.spilled;
        mapped += h.io.stats.mapped_writes.load(Relaxed);
        short += h.io.short_direct;
    }
    assert!(
        r2ts > 20 && spilled > 0 && mapped > 20 && short > 20,
        "{r2ts} {spilled} {mapped} {short}"
    );
}
