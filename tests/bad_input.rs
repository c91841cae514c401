//! Acceptance: malformed input never hangs or kills the target. Each bad
//! case runs on a fresh connection and must get a Reject PDU or a closed
//! connection within a bounded time; afterwards a well-behaved client is
//! still served and the target process is still running.

mod common;

use common::*;
use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

/// How long the target may take to reject or drop a bad connection.
const VERDICT_LIMIT: Duration = Duration::from_secs(10);

fn logged_in(server: &Server, tag: &str) -> IscsiConn {
    let mut c = IscsiConn::connect(server.addr);
    c.login(&initiator_name(tag), &server.iqn)
        .unwrap_or_else(|e| {
            panic!(
                "login ({tag}) failed: {e}\n--- target output ---\n{}",
                server.output()
            )
        });
    c
}

fn verdict(server: &Server, case: &str, c: &mut IscsiConn) {
    match c.expect_reject_or_close(VERDICT_LIMIT) {
        Ok(what) => println!("{case}: {what}"),
        Err(e) => panic!("{case}: {e}\n--- target output ---\n{}", server.output()),
    }
}

/// (a) 20 bytes of a login header, then the write side is shut.
fn truncated_header(server: &Server) {
    let mut c = IscsiConn::connect(server.addr);
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = 0x40 | OP_LOGIN_REQ;
    bhs[1] = 0x81;
    bhs[8] = 0x80;
    c.stream.write_all(&bhs[..20]).unwrap();
    c.stream.shutdown(Shutdown::Write).unwrap();
    verdict(server, "(a) truncated header", &mut c);
}

/// (b) a SCSI Command whose DataSegmentLength exceeds the target's
/// MaxRecvDataSegmentLength (the whole oversized segment is sent).
fn oversized_data_segment(server: &Server) {
    let mut c = logged_in(server, "oversized");
    let mrdsl = c.target_mrdsl as usize;
    let len = (mrdsl * 2).min(0xff_fff0);
    assert!(
        len > mrdsl,
        "target MaxRecvDataSegmentLength {mrdsl} leaves no room for an oversized segment"
    );
    // WRITE(10) of len/512 blocks at LBA 0 with all data as immediate data.
    let blocks = (len / 512) as u16;
    let cdb = [0x2a, 0, 0, 0, 0, 0, 0, (blocks >> 8) as u8, blocks as u8, 0];
    let lun = server.lun(0);
    let bhs = c.scsi_bhs(lun, &cdb, 0, len as u32);
    let data = vec![0xa5u8; len];
    // The target may close before it has read everything; that is a fine
    // answer, so write errors are ignored and the verdict decides.
    if let Err(e) = c.send_pdu(bhs, &data) {
        println!("(b) write of the oversized PDU stopped early: {e}");
    }
    println!("(b) sent DataSegmentLength {len} > target MaxRecvDataSegmentLength {mrdsl}");
    let case = "(b) DataSegmentLength > MaxRecvDataSegmentLength";
    if server.kind == TargetKind::Tgt {
        // tgt (1.0.85) does not enforce MaxRecvDataSegmentLength: it
        // executes the command and answers with a SCSI Response. Accept
        // that here so the rest of the harness can be proven against tgt;
        // bootlun must reject or drop.
        c.set_read_timeout(VERDICT_LIMIT);
        match c.recv_pdu() {
            Ok(p) if p.opcode() == OP_SCSI_RSP => {
                println!("{case}: tgt answered with a SCSI Response (status {:#04x}); not enforced by tgt", p.bhs[3]);
                return;
            }
            Ok(p) if p.opcode() == OP_REJECT => println!("{case}: Reject"),
            Err(RecvError::Closed(_)) => println!("{case}: closed"),
            other => panic!("{case}: tgt gave {other:?}"),
        }
        return;
    }
    verdict(server, case, &mut c);
}

/// (c) an unknown / invalid opcode in full feature phase.
fn unknown_opcode(server: &Server, opcode: u8) {
    let mut c = logged_in(server, &format!("opcode-{opcode:02x}"));
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = opcode;
    bhs[1] = 0x80;
    bhs[16..20].copy_from_slice(&c.itt.to_be_bytes());
    bhs[24..28].copy_from_slice(&c.cmdsn.to_be_bytes());
    bhs[28..32].copy_from_slice(&c.exp_statsn.to_be_bytes());
    c.send_pdu(bhs, &[]).unwrap();
    verdict(server, &format!("(c) unknown opcode {opcode:#04x}"), &mut c);
}

/// (d) 1 MiB of random bytes before any login.
fn random_garbage(server: &Server) {
    let mut c = IscsiConn::connect(server.addr);
    let mut junk = pseudo_random_bytes(1 << 20, 0xbad_1dea);
    // Make sure the first "PDU" is not by chance a Login Request.
    if junk[0] & 0x3f == OP_LOGIN_REQ {
        junk[0] ^= 0x01;
    }
    if let Err(e) = c.stream.write_all(&junk) {
        println!("(d) write of random bytes stopped early: {e}");
    }
    verdict(server, "(d) 1 MiB of random bytes before login", &mut c);
}

#[test]
fn malformed_pdus_are_rejected_or_dropped_and_target_keeps_serving() {
    let mut server = Server::start(&["ram:64M"], &[]);

    truncated_header(&server);
    oversized_data_segment(&server);
    unknown_opcode(&server, 0x1f);
    unknown_opcode(&server, 0x3d);
    random_garbage(&server);

    assert!(
        server.is_running(),
        "target exited after bad input:\n{}",
        server.output()
    );

    // A good client is still served.
    let mut good = logged_in(&server, "good");
    let lun = server.lun(0);
    good.test_unit_ready(lun)
        .unwrap_or_else(|e| panic!("TEST UNIT READY: {e}\n{}", server.output()));
    let inq = good
        .inquiry(lun)
        .unwrap_or_else(|e| panic!("INQUIRY: {e}\n{}", server.output()));
    assert!(inq.len() >= 36, "short INQUIRY data: {inq:02x?}");
    assert_eq!(
        inq[0] & 0x1f,
        0,
        "LUN {lun} is not a direct-access device: {inq:02x?}"
    );
    let (blocks, bs) = good.read_capacity16(lun).unwrap();
    assert_eq!(blocks * bs as u64, 64 << 20, "capacity of ram:64M");
    println!(
        "good client served: vendor {:?}, product {:?}, {blocks} blocks of {bs}",
        String::from_utf8_lossy(&inq[8..16]),
        String::from_utf8_lossy(&inq[16..32])
    );
    good.logout();

    assert!(server.is_running(), "target exited:\n{}", server.output());
}
