//! Synced writes survive the target being killed.
//!
//! An initiator streams writes to a file LUN, each one made durable
//! before it counts: alternately WRITE(10) with FUA, and a plain WRITE(10)
//! followed by SYNCHRONIZE CACHE(10). The target gets SIGKILL in the
//! middle of the stream (no chance to flush anything on its way out), is
//! started again on the same file, and every write acknowledged before
//! the kill must read back.
//!
//! SIGKILL ends the process, not the machine: the kernel keeps what is in
//! its page cache, so this catches writes acknowledged before they were
//! handed to the kernel at all (queued, reordered, acknowledged early),
//! not a missing fdatasync. The backend's flush path (FUA as RWF_DSYNC,
//! SYNCHRONIZE CACHE as fdatasync) is what makes the caching mode page's
//! WCE=1 honest; the test checks that the page says so.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const OP_SCSI_RSP: u8 = 0x21;
const OP_NOP_IN: u8 = 0x20;
const OP_NOP_OUT: u8 = 0x00;
const BLOCK: usize = 4096;
/// Blocks the stream cycles over (the LUN has room for many more).
const SLOTS: u32 = 1024;
/// Writes acknowledged before the kill.
const ACKED_BEFORE_KILL: usize = 300;

fn addr(server: &Server) -> SocketAddr {
    format!("127.0.0.1:{}", server.port()).parse().unwrap()
}

/// The content of write number `n`: every 8 bytes carry `n` and the slot,
/// so a block from another write (or none) is told apart.
fn pattern(n: u64, slot: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOCK);
    while b.len() < BLOCK {
        b.extend_from_slice(&(n as u32).to_le_bytes());
        b.extend_from_slice(&slot.to_le_bytes());
    }
    b
}

/// Waits for the SCSI Response of the command just sent, answering the
/// target's NOP-In pings. `Err` when the connection breaks.
fn response(c: &mut IscsiConn) -> Result<u8, String> {
    for _ in 0..1000 {
        let p = c.recv_pdu().map_err(|e| format!("{e:?}"))?;
        match p.opcode() {
            OP_SCSI_RSP => {
                c.exp_statsn = p.u32_at(24).wrapping_add(1);
                return Ok(p.bhs[3]);
            }
            OP_NOP_IN if p.u32_at(20) != 0xffff_ffff => {
                let mut b = [0u8; 48];
                b[0] = 0x40 | OP_NOP_OUT;
                b[1] = 0x80;
                b[16..20].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                b[20..24].copy_from_slice(&p.bhs[20..24]);
                b[24..28].copy_from_slice(&c.cmdsn.to_be_bytes());
                b[28..32].copy_from_slice(&c.exp_statsn.to_be_bytes());
                c.send_pdu(b, &[]).map_err(|e| format!("NOP-Out: {e}"))?;
            }
            OP_NOP_IN => {}
            op => return Err(format!("unexpected opcode {op:#04x}")),
        }
    }
    Err("no response".into())
}

/// One command with `data` as immediate data (4 KiB fits the
/// FirstBurstLength the test client negotiates).
fn command(c: &mut IscsiConn, cdb: &[u8], data: &[u8]) -> Result<u8, String> {
    let bhs = c.scsi_bhs(0, cdb, 0, data.len() as u32);
    c.send_pdu(bhs, data).map_err(|e| format!("send: {e}"))?;
    c.itt = c.itt.wrapping_add(1);
    c.cmdsn = c.cmdsn.wrapping_add(1);
    response(c)
}

/// READ(10) or WRITE(10) of slot `slot` (`BLOCK` bytes in blocks of
/// `bs`).
fn rw10(opcode: u8, slot: u32, bs: u32, fua: bool) -> [u8; 10] {
    let per = BLOCK as u32 / bs;
    let mut cdb = [0u8; 10];
    cdb[0] = opcode;
    cdb[1] = if fua { 0x08 } else { 0 };
    cdb[2..6].copy_from_slice(&(slot * per).to_be_bytes());
    cdb[7..9].copy_from_slice(&(per as u16).to_be_bytes());
    cdb
}

const SYNC_CACHE10: [u8; 10] = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Streams synced writes until the connection breaks; records each write
/// in `acked` (slot -> write number) once it is durable.
/// Tells `ready` once `ACKED_BEFORE_KILL` writes are durable.
fn stream(
    mut c: IscsiConn,
    bs: u32,
    acked: Arc<Mutex<BTreeMap<u32, u64>>>,
    count: Arc<AtomicUsize>,
    ready: mpsc::Sender<()>,
) {
    for n in 0u64.. {
        let slot = (n % SLOTS as u64) as u32;
        let data = pattern(n, slot);
        let fua = n % 2 == 0;
        let st = match command(&mut c, &rw10(0x2a, slot, bs, fua), &data) {
            Ok(st) => st,
            Err(_) => return,
        };
        assert_eq!(st, 0, "write {n} failed with status {st:#x}");
        if !fua {
            match command(&mut c, &SYNC_CACHE10, &[]) {
                Ok(st) => assert_eq!(st, 0, "SYNCHRONIZE CACHE failed with {st:#x}"),
                Err(_) => return,
            }
        }
        acked.lock().unwrap().insert(slot, n);
        if count.fetch_add(1, Ordering::SeqCst) + 1 == ACKED_BEFORE_KILL {
            let _ = ready.send(());
        }
    }
}

#[test]
fn synced_writes_survive_sigkill() {
    let dir = TempDir::new("durability");
    let disk = dir.join("disk.img");
    sparse_file(&disk, 64 << 20);
    let spec = disk.to_str().unwrap().to_string();

    let mut server = Server::start(&[&spec], &[]);
    let mut c = IscsiConn::connect(addr(&server));
    c.login(&initiator_name("durability"), DEFAULT_IQN).unwrap();
    c.test_unit_ready(0).unwrap();
    let (_, bs) = c.read_capacity16(0).unwrap();
    assert!(
        bs as usize <= BLOCK && BLOCK.is_multiple_of(bs as usize),
        "block size {bs}"
    );

    // The caching mode page reports a write cache (WCE=1), which the
    // backend flushes on FUA and SYNCHRONIZE CACHE.
    let r = c
        .scsi_command(0, &[0x1a, 0x08, 0x08, 0, 255, 0], 255)
        .unwrap();
    assert_eq!(r.status, 0, "MODE SENSE(6) caching page");
    let page = &r.data[4 + r.data[3] as usize..];
    assert_eq!(
        page[0] & 0x3f,
        0x08,
        "caching page expected: {:02x?}",
        r.data
    );
    assert_eq!(page[2] & 0x04, 0x04, "WCE is off but the backend caches");

    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let writer = {
        let (acked, count) = (acked.clone(), count.clone());
        std::thread::spawn(move || stream(c, bs, acked, count, tx))
    };
    // The writer drops its sender if it stops early.
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        panic!(
            "only {} synced writes acknowledged (writer stopped or 120 s passed)",
            count.load(Ordering::SeqCst)
        );
    }
    // Mid-stream: writes are in flight while the process dies.
    let st = server.stop_with(libc::SIGKILL);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    writer.join().expect("writer panicked");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ACKED_BEFORE_KILL.min(SLOTS as usize));

    // Same file, new process: every acknowledged write is there.
    let mut server = Server::start(&[&spec], &[]);
    let mut c = IscsiConn::connect(addr(&server));
    c.login(&initiator_name("durability-check"), DEFAULT_IQN)
        .unwrap();
    c.test_unit_ready(0).unwrap();
    let mut lost = Vec::new();
    for (&slot, &n) in &acked {
        let r = c
            .scsi_command(0, &rw10(0x28, slot, bs, false), BLOCK as u32)
            .unwrap();
        assert_eq!(r.status, 0, "READ(10) of block {slot}");
        // A later write to the slot may have landed unacknowledged: the
        // block holds write `n` or a newer one of the same slot.
        let got = u32::from_le_bytes(r.data[..4].try_into().unwrap()) as u64;
        let whole = r.data == pattern(got, slot);
        if !whole || got < n || !(got - n).is_multiple_of(SLOTS as u64) {
            lost.push((slot, n, got));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes missing after SIGKILL (slot, wanted, found): {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    eprintln!(
        "{} synced writes acknowledged before SIGKILL, all found after restart",
        acked.len()
    );
    server.stop();
}
