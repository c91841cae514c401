//! Hostile write traffic must never get data acknowledged that was not
//! received, and one connection must not starve others of I/O buffers.
//!
//! * Data sent twice (an unsolicited Data-Out over the immediate data, or
//!   a repeated part of an R2T burst) used to count twice, so a write was
//!   answered GOOD with stale bytes on disk. Data must come in order, each
//!   byte once: anything else gets a Reject or a closed connection.
//! * A connection opening hundreds of WRITEs and never sending their data
//!   used to hold every buffer of its reactor, so other initiators' READs
//!   never completed.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

const OP_DATA_OUT: u8 = 0x05;
const OP_R2T: u8 = 0x31;
const OP_SCSI_RSP: u8 = 0x21;

fn addr(server: &Server) -> SocketAddr {
    format!("127.0.0.1:{}", server.port()).parse().unwrap()
}

fn write10_cdb(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x2a;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, fin: bool, exp_statsn: u32) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = OP_DATA_OUT;
    b[1] = if fin { 0x80 } else { 0 };
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..24].copy_from_slice(&ttt.to_be_bytes());
    b[28..32].copy_from_slice(&exp_statsn.to_be_bytes());
    b[36..40].copy_from_slice(&data_sn.to_be_bytes());
    b[40..44].copy_from_slice(&offset.to_be_bytes());
    b
}

/// Starts WRITE(10) of 8 blocks at `lba` with `imm` bytes of 0xAA as
/// immediate data; returns its ITT.
fn start_write(c: &mut IscsiConn, lba: u32, imm: usize) -> u32 {
    let bhs = c.scsi_bhs(0, &write10_cdb(lba, 8), 0, 4096);
    let itt = c.itt;
    c.send_pdu(bhs, &vec![0xAA; imm]).unwrap();
    c.itt += 1;
    c.cmdsn += 1;
    itt
}

/// Reads PDUs until the target answers the write (status), rejects, or
/// closes. Returns the SCSI status if one came.
fn outcome(c: &mut IscsiConn) -> Option<u8> {
    c.set_read_timeout(Duration::from_secs(20));
    loop {
        match c.recv_pdu() {
            Ok(p) if p.opcode() == OP_SCSI_RSP => return Some(p.bhs[3]),
            Ok(p) if p.opcode() == OP_R2T => continue,
            Ok(_) => return None, // Reject
            Err(RecvError::Timeout) => panic!("target neither answered nor closed"),
            Err(_) => return None, // closed
        }
    }
}

fn read_back(server: &Server, lba: u32) -> Vec<u8> {
    let mut g = IscsiConn::connect(addr(server));
    g.login(&initiator_name("hostile-check"), DEFAULT_IQN)
        .unwrap();
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[8] = 8;
    let r = g.scsi_command(0, &cdb, 4096).unwrap();
    assert_eq!(r.status, 0);
    r.data
}

#[test]
fn unsolicited_data_over_immediate_data_is_not_acknowledged() {
    let mut server = Server::start(&["ram:16M"], &[]);
    let mut c = IscsiConn::connect(addr(&server));
    c.login(&initiator_name("hostile-unsol"), DEFAULT_IQN)
        .unwrap(); // InitialR2T=Yes
    let itt = start_write(&mut c, 100, 2048);
    let b = data_out(itt, 0xffff_ffff, 0, 0, true, c.exp_statsn);
    c.send_pdu(b, &[0xAA; 2048]).unwrap();
    let status = outcome(&mut c);
    assert_ne!(
        status,
        Some(0),
        "write acknowledged with half its data never sent"
    );
    assert!(server.is_running());
    assert!(
        read_back(&server, 100).iter().all(|&x| x == 0),
        "unacknowledged data reached the disk"
    );
    server.stop();
}

#[test]
fn a_repeated_part_of_an_r2t_burst_is_not_counted_twice() {
    let mut server = Server::start(&["ram:16M"], &[]);
    let mut c = IscsiConn::connect(addr(&server));
    c.login(&initiator_name("hostile-dup"), DEFAULT_IQN)
        .unwrap();
    let itt = start_write(&mut c, 200, 2048);
    c.set_read_timeout(Duration::from_secs(20));
    let r2t = loop {
        let p = c.recv_pdu().expect("R2T");
        if p.opcode() == OP_R2T {
            break p;
        }
    };
    let (ttt, off, len) = (r2t.u32_at(20), r2t.u32_at(40), r2t.u32_at(44));
    assert_eq!((off, len), (2048, 2048));
    // The first half of the burst, twice; never the second half.
    let half = (len / 2) as usize;
    c.send_pdu(
        data_out(itt, ttt, 0, off, false, c.exp_statsn),
        &vec![0xBB; half],
    )
    .unwrap();
    c.send_pdu(
        data_out(itt, ttt, 1, off, true, c.exp_statsn),
        &vec![0xBB; half],
    )
    .unwrap();
    assert_ne!(
        outcome(&mut c),
        Some(0),
        "write acknowledged with a quarter of its data never sent"
    );
    assert!(
        read_back(&server, 200).iter().all(|&x| x == 0),
        "unacknowledged data reached the disk"
    );
    server.stop();
}

#[test]
fn writes_that_never_send_data_do_not_starve_other_readers() {
    // 16 buffers on one reactor: one connection may hold at most 4.
    let mut server = Server::start(
        &["ram:64M"],
        &["--cores", "0", "--buffers", "16", "--buffer-size", "64K"],
    );
    let mut hog = IscsiConn::connect(addr(&server));
    hog.login(&initiator_name("hostile-hog"), DEFAULT_IQN)
        .unwrap();
    for i in 0..100u32 {
        // No immediate data; InitialR2T=Yes: each waits for its R2T data.
        let bhs = hog.scsi_bhs(0, &write10_cdb(i * 8, 8), 0, 4096);
        hog.send_pdu(bhs, &[]).unwrap();
        hog.itt += 1;
        hog.cmdsn += 1;
    }
    // Another initiator on the same reactor reads and writes normally.
    for round in 0..3 {
        let data = read_back(&server, 4096 + round * 8);
        assert_eq!(data.len(), 4096);
    }
    assert!(server.is_running());
    drop(hog);
    server.stop();
}
