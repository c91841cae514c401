//! A misbehaving initiator never wedges a reactor.
//!
//! The target runs one reactor (`--cores 0`), so every connection below
//! shares it. Two initiators misbehave:
//!
//! * one loses its connection in the middle of a write: the Data-Out
//!   header promised more bytes than ever come, then the socket is reset
//!   (and another one simply closed);
//! * one queues many large READs and never reads its socket, so the
//!   target's sends to it block on a full socket buffer.
//!
//! Meanwhile a third session writes and reads back data; every command
//! must complete (each wait is bounded by the client's read timeout) and
//! return what was written. No timing is asserted: a wedged reactor shows
//! up as a timeout.

mod common;

use common::*;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

const OP_SCSI_RSP: u8 = 0x21;
const OP_R2T: u8 = 0x31;
const OP_NOP_IN: u8 = 0x20;

fn addr(server: &Server) -> SocketAddr {
    format!("127.0.0.1:{}", server.port()).parse().unwrap()
}

fn rw10(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Sends a command without waiting for its answer.
fn send_cmd(c: &mut IscsiConn, cdb: &[u8], read: u32, write: u32, imm: &[u8]) -> u32 {
    let bhs = c.scsi_bhs(0, cdb, read, write);
    let itt = c.itt;
    c.send_pdu(bhs, imm).expect("send command");
    c.itt = c.itt.wrapping_add(1);
    c.cmdsn = c.cmdsn.wrapping_add(1);
    itt
}

/// The well-behaved session: writes `n`-th pattern to 8 blocks and reads
/// it back. Panics (with the client's bounded read timeout) if the target
/// stops answering.
fn good_round(c: &mut IscsiConn, n: u32) {
    let lba = 4096 + (n % 64) * 8;
    let data: Vec<u8> = pseudo_random_bytes(4096, n as u64);
    send_cmd(c, &rw10(0x2a, lba, 8), 0, 4096, &data);
    loop {
        let p = c.recv_pdu().unwrap_or_else(|e| {
            panic!("round {n}: no answer to a WRITE while other sessions misbehave: {e:?}")
        });
        match p.opcode() {
            OP_SCSI_RSP => {
                c.exp_statsn = p.u32_at(24).wrapping_add(1);
                assert_eq!(p.bhs[3], 0, "round {n}: WRITE status");
                break;
            }
            OP_NOP_IN => {}
            op => panic!("round {n}: unexpected opcode {op:#04x}"),
        }
    }
    let r = c
        .scsi_command(0, &rw10(0x28, lba, 8), 4096)
        .unwrap_or_else(|e| panic!("round {n}: READ: {e}"));
    assert_eq!(r.status, 0, "round {n}: READ status");
    assert!(r.data == data, "round {n}: read back other data");
}

fn login(server: &Server, tag: &str) -> IscsiConn {
    let mut c = IscsiConn::connect(addr(server));
    c.login(&initiator_name(tag), DEFAULT_IQN)
        .unwrap_or_else(|e| panic!("{tag}: login: {e}"));
    c
}

/// A write of 1 MiB whose data stops in the middle of a Data-Out; the
/// socket is then reset (`reset`) or closed.
fn lose_connection_mid_write(server: &Server, tag: &str, reset: bool) {
    let mut c = login(server, tag);
    send_cmd(&mut c, &rw10(0x2a, 0, 2048), 0, 1 << 20, &[0x11; 65536]);
    let r2t = loop {
        let p = c.recv_pdu().expect("R2T");
        if p.opcode() == OP_R2T {
            break p;
        }
    };
    let (itt, ttt, off, len) = (
        r2t.u32_at(16),
        r2t.u32_at(20),
        r2t.u32_at(40),
        r2t.u32_at(44),
    );
    let dsl = len.min(c.target_mrdsl);
    let mut b = [0u8; 48];
    b[0] = 0x05;
    b[5..8].copy_from_slice(&dsl.to_be_bytes()[1..]);
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..24].copy_from_slice(&ttt.to_be_bytes());
    b[28..32].copy_from_slice(&c.exp_statsn.to_be_bytes());
    b[40..44].copy_from_slice(&off.to_be_bytes());
    // Header and a third of the data, then nothing.
    c.stream.write_all(&b).unwrap();
    c.stream.write_all(&vec![0x22; dsl as usize / 3]).unwrap();
    if reset {
        // SO_LINGER 0: close sends a RST instead of a FIN.
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket this function owns, with a
        // correctly sized linger struct.
        let rc = unsafe {
            libc::setsockopt(
                c.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER");
    }
    drop(c);
}

/// Bytes waiting unread in a socket's receive queue.
fn unread(c: &IscsiConn) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(c.stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD");
    n as usize
}

#[test]
fn a_lost_connection_and_a_reader_that_stops_do_not_wedge_the_reactor() {
    let mut server = Server::start(
        &["ram:64M"],
        &["--cores", "0", "--buffers", "16", "--buffer-size", "64K"],
    );
    let mut good = login(&server, "wedge-good");
    good.set_read_timeout(Duration::from_secs(30));
    good_round(&mut good, 0);

    // Connections lost in the middle of a write's data.
    lose_connection_mid_write(&server, "wedge-lost-rst", true);
    lose_connection_mid_write(&server, "wedge-lost-fin", false);
    for n in 1..50 {
        good_round(&mut good, n);
    }

    // A reader that never reads: 128 READs of 256 KiB (32 MiB, far more
    // than any socket buffer) with a small receive buffer.
    let mut stalled = login(&server, "wedge-stalled");
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            stalled.stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &small as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF");
    const STALLED_READS: usize = 128;
    const READ_LEN: usize = 256 * 1024;
    for i in 0..STALLED_READS as u32 {
        send_cmd(
            &mut stalled,
            &rw10(0x28, i * 512, 512),
            READ_LEN as u32,
            0,
            &[],
        );
    }
    for n in 50..250 {
        good_round(&mut good, n);
    }
    // The stalled initiator got some of its data and left it unread: the
    // target's sends to it are blocked, and the other session went on.
    let q = unread(&stalled);
    assert!(q > 0, "the target never sent the stalled reader anything");
    assert!(
        q < STALLED_READS * READ_LEN,
        "the stalled reader's socket took everything ({q} bytes): nothing was blocked"
    );

    eprintln!(
        "stalled reader: {q} bytes unread of {} requested",
        STALLED_READS * READ_LEN
    );
    // New sessions still log in and work on the same reactor.
    let mut late = login(&server, "wedge-late");
    late.set_read_timeout(Duration::from_secs(30));
    good_round(&mut late, 1000);
    drop(stalled);
    good_round(&mut good, 1001);
    assert!(server.is_running());
    server.stop();
}
