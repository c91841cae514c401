//! A LUN on tmpfs is mapped: its large reads are sent from the mapping and
//! its large writes are received into it. When the backing file shrinks
//! while it is served, reads past the new end must still answer (zeros, as
//! a copying read returns), the data before it must still read back,
//! writes past it must still land and read back, and the target must keep
//! running: never a crash on a page that is gone.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

fn read10(c: &mut IscsiConn, lba: u32, blocks: u16) -> Result<ScsiResult, String> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    c.scsi_command(0, &cdb, blocks as u32 * 512)
}

fn write10(c: &mut IscsiConn, lba: u32, data: &[u8]) -> Result<ScsiResult, String> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&((data.len() / 512) as u16).to_be_bytes());
    c.scsi_write(0, &cdb, data)
}

fn session(addr: SocketAddr) -> IscsiConn {
    let mut c = IscsiConn::connect(addr);
    c.set_read_timeout(Duration::from_secs(30));
    c.login(&initiator_name("mapped-shrink"), DEFAULT_IQN)
        .expect("login");
    c
}

#[test]
fn a_tmpfs_lun_that_shrinks_while_served_reads_zeros_past_its_new_end_and_takes_writes() {
    let shm = std::path::Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm (a tmpfs) is needed for this test");
    // On tmpfs, and removed however the test ends.
    let dir = TempDir::new_in(shm, "shrink");
    let img = dir.join("lun.img");
    let data = pseudo_random_bytes(16 << 20, 0x5eed_0006);
    std::fs::write(&img, &data).unwrap();
    let mut server = Server::start(&[img.to_str().unwrap()], &[]);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();

    // 1 MiB at 8 MiB: sent in place.
    let mut c = session(addr);
    let r = read10(&mut c, 16384, 2048).expect("read before the shrink");
    assert_eq!(r.status, 0);
    assert!(r.data == data[8 << 20..9 << 20], "data read back differs");
    // 256 KiB at 4 MiB: received in place, and read back.
    let w = pseudo_random_bytes(256 << 10, 0x5eed_0007);
    let r = write10(&mut c, 8192, &w).expect("write before the shrink");
    assert_eq!(
        r.status, 0,
        "write before the shrink: sense {:02x?}",
        r.sense
    );
    let r = read10(&mut c, 8192, 512).expect("read of the write");
    assert!(r.data == w, "written data read back differs");

    // The file drops to 1 MiB under the target.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();

    // First a write at 6 MiB, past the new end: its receive into the
    // mapping faults (the first touch of a page that is gone), and it
    // still lands, with copies, and reads back. The file grows to end
    // with it.
    let w = pseudo_random_bytes(256 << 10, 0x5eed_0008);
    let r = match write10(&mut c, 12288, &w) {
        Ok(r) => r,
        Err(e) => panic!("write after the shrink: {e}\n{}", server.output()),
    };
    assert_eq!(
        r.status, 0,
        "write after the shrink: sense {:02x?}",
        r.sense
    );
    let r = read10(&mut c, 12288, 512).expect("read of the write after the shrink");
    assert!(
        r.data == w,
        "data written after the shrink reads back differently"
    );

    // A read past the end: zeros now. A connection that was mid-send when the
    // pages went away may be closed (half a PDU cannot be taken back);
    // a new session must then get the answer.
    let r = match read10(&mut c, 16384, 2048) {
        Ok(r) => r,
        Err(e) => {
            println!("first read after the shrink: {e}; new session");
            c = session(addr);
            read10(&mut c, 16384, 2048).expect("read after the shrink")
        }
    };
    assert_eq!(r.status, 0);
    assert_eq!(r.data.len(), 1 << 20);
    assert!(
        r.data.iter().all(|&b| b == 0),
        "past the new end: not zeros"
    );
    // What is left of the file still reads back.
    let r = read10(&mut c, 0, 2048).expect("read of the first MiB");
    assert!(r.data == data[..1 << 20], "the first MiB differs");

    assert!(server.is_running(), "{}", server.output());
    assert_eq!(server.stop().code(), Some(0), "{}", server.output());
    let out = server.output();
    assert!(
        summary_count(&out, "reads in place ") >= 2,
        "the reads before the shrink were not sent in place:\n{out}"
    );
    assert!(
        summary_count(&out, "writes in place ") >= 1,
        "the writes were not received in place:\n{out}"
    );
    // The write after the shrink came first: the fault was its receive's.
    assert!(
        out.contains("the backing file shrank"),
        "no receive into the mapping faulted after the shrink:\n{out}"
    );
}
