//! The command path allocates nothing: the real engine and iSCSI target run
//! in this process under a counting global allocator, a client logs in and
//! warms up, and then 10,000 READ(10) and WRITE(10) commands (4 KiB,
//! immediate data for the writes, each write read back and compared) must
//! leave the allocation count where it was. The client itself reads and
//! writes fixed buffers, so every allocation counted would be the
//! target's.

mod common;

use bootlun_engine::{open_backend, Engine, EngineConfig, LunSpec};
use bootlun_frontends::iscsi::negotiate::Limits;
use bootlun_frontends::iscsi::{IscsiService, Lun, TargetShared};
use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the
// counter is a plain atomic and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TARGET: &str = "iqn.2026-11.org.bootlun:noalloc";
const BLOCK: usize = 4096;

fn start_target() -> Engine {
    let spec = LunSpec::parse("ram:16M").unwrap();
    let backend = open_backend(&spec, 0).unwrap();
    let luns = vec![Lun::new(backend, TARGET, 1 << 20)];
    let limits = Limits {
        max_recv_data_segment_length: 256 * 1024,
        max_burst_length: 1 << 20,
        first_burst_length: 256 * 1024,
        ..Limits::default()
    };
    let shared = TargetShared::new(TARGET.into(), luns, limits, 32);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = EngineConfig {
        cores: vec![0],
        buffers: 32,
        buffer_size: 256 * 1024,
        ..Default::default()
    };
    Engine::start(
        cfg,
        listener,
        Arc::new(IscsiService {
            shared: Arc::new(shared),
        }),
    )
    .unwrap()
}

/// Buffers the client reuses for every command.
struct Bufs {
    bhs: [u8; 48],
    data: Vec<u8>,
    pattern: Vec<u8>,
}

/// One command at depth 1: WRITE(10) of `pattern` (as immediate data) or
/// READ(10) into `data`, then the target's answers until status. Returns
/// the SCSI status.
fn command(conn: &mut IscsiConn, b: &mut Bufs, write: bool, lba: u32) -> u8 {
    let blocks = (BLOCK / 512) as u16;
    let mut cdb = [0u8; 10];
    cdb[0] = if write { 0x2A } else { 0x28 };
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    let len = BLOCK as u32;
    let mut h = if write {
        conn.scsi_bhs(0, &cdb, 0, len)
    } else {
        conn.scsi_bhs(0, &cdb, len, 0)
    };
    if write {
        h[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    }
    conn.stream.write_all(&h).unwrap();
    if write {
        conn.stream.write_all(&b.pattern).unwrap();
    }
    conn.itt = conn.itt.wrapping_add(1);
    conn.cmdsn = conn.cmdsn.wrapping_add(1);
    let mut got = 0usize;
    loop {
        conn.stream.read_exact(&mut b.bhs).unwrap();
        let dsl = u32::from_be_bytes([0, b.bhs[5], b.bhs[6], b.bhs[7]]) as usize;
        let padded = dsl.div_ceil(4) * 4;
        assert!(
            b.bhs[4] == 0 && padded <= b.data.len() - got,
            "unexpected PDU"
        );
        conn.stream
            .read_exact(&mut b.data[got..got + padded])
            .unwrap();
        let stat_sn = u32::from_be_bytes(b.bhs[24..28].try_into().unwrap());
        match b.bhs[0] & 0x3F {
            // Data-In; the S bit carries the status.
            0x25 => {
                got += dsl;
                if b.bhs[1] & 0x01 != 0 {
                    conn.exp_statsn = stat_sn.wrapping_add(1);
                    assert_eq!(got, BLOCK, "Data-In length");
                    return b.bhs[3];
                }
            }
            // SCSI Response.
            0x21 => {
                conn.exp_statsn = stat_sn.wrapping_add(1);
                return b.bhs[3];
            }
            op => panic!("unexpected opcode {op:#x} during I/O"),
        }
    }
}

fn run(conn: &mut IscsiConn, b: &mut Bufs, pairs: u32) {
    for i in 0..pairs {
        let lba = (i % 256) * (BLOCK as u32 / 512);
        b.pattern[0..4].copy_from_slice(&i.to_le_bytes());
        assert_eq!(command(conn, b, true, lba), 0, "WRITE status");
        assert_eq!(command(conn, b, false, lba), 0, "READ status");
        assert!(
            b.data[..BLOCK] == b.pattern[..],
            "read back what was written"
        );
    }
}

#[test]
fn ten_thousand_reads_and_writes_allocate_nothing() {
    let at_start = ALLOCS.load(Relaxed);
    let engine = start_target();
    assert!(
        ALLOCS.load(Relaxed) > at_start,
        "the counting allocator sees the target's allocations"
    );
    let mut conn = IscsiConn::connect(engine.local_addr);
    conn.login(&initiator_name("noalloc"), TARGET).unwrap();
    let mut b = Bufs {
        bhs: [0; 48],
        data: vec![0; 256 * 1024],
        pattern: (0..BLOCK).map(|i| (i * 7 + 3) as u8).collect(),
    };
    // Warm-up: buffers, queues and tables reach their working size.
    run(&mut conn, &mut b, 1_000);
    let before = ALLOCS.load(Relaxed);
    run(&mut conn, &mut b, 5_000);
    let after = ALLOCS.load(Relaxed);
    println!(
        "{} allocations during 10,000 commands (5,000 WRITE + 5,000 READ)",
        after - before
    );
    assert_eq!(after, before, "the command path allocated");
    conn.logout();
    drop(engine);
}
