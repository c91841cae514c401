//! CRC32C header and data digests on every PDU after login, in both
//! directions: a write large enough to go through the zero-copy receive
//! path, a read back compared byte for byte, and a corrupted data digest
//! that must get a Reject or a closed connection (never a GOOD write).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const IQN: &str = "iqn.2026-11.org.bootlun:target";

fn crc(parts: &[&[u8]]) -> [u8; 4] {
    let mut c = 0;
    for p in parts {
        c = crc32c::crc32c_append(c, p);
    }
    c.to_le_bytes()
}

fn pad(n: usize) -> usize {
    (4 - n % 4) % 4
}

struct Client {
    s: TcpStream,
    digests: bool,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
}

struct Pdu {
    bhs: [u8; 48],
    data: Vec<u8>,
}

impl Pdu {
    fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            s,
            digests: false,
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 1,
        }
    }

    fn send(&mut self, bhs: &[u8; 48], data: &[u8], corrupt_data_digest: bool) {
        let mut b = bhs.to_vec();
        if self.digests {
            b.extend_from_slice(&crc(&[bhs]));
        }
        b.extend_from_slice(data);
        let p = [0u8; 3];
        b.extend_from_slice(&p[..pad(data.len())]);
        if self.digests && !data.is_empty() {
            let mut d = crc(&[data, &p[..pad(data.len())]]);
            if corrupt_data_digest {
                d[0] ^= 0xff;
            }
            b.extend_from_slice(&d);
        }
        let _ = self.s.write_all(&b);
    }

    fn recv(&mut self) -> std::io::Result<Pdu> {
        let mut bhs = [0u8; 48];
        self.s.read_exact(&mut bhs)?;
        if self.digests {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d)?;
            assert_eq!(d, crc(&[&bhs]), "header digest from the target");
        }
        let dsl = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let mut data = vec![0u8; dsl + pad(dsl)];
        self.s.read_exact(&mut data)?;
        if self.digests && dsl > 0 {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d)?;
            assert_eq!(d, crc(&[&data]), "data digest from the target");
        }
        data.truncate(dsl);
        let stat_sn = u32::from_be_bytes(bhs[24..28].try_into().unwrap());
        let op = bhs[0] & 0x3f;
        if op != 0x25 || bhs[1] & 1 != 0 {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
        Ok(Pdu { bhs, data })
    }

    fn login(&mut self) {
        let keys = [
            ("InitiatorName", "iqn.2026-11.org.bootlun:digest-test"),
            ("SessionType", "Normal"),
            ("TargetName", IQN),
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "CRC32C"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("FirstBurstLength", "65536"),
            ("MaxBurstLength", "262144"),
        ];
        let mut text = Vec::new();
        for (k, v) in keys {
            text.extend_from_slice(format!("{k}={v}\0").as_bytes());
        }
        let mut bhs = [0u8; 48];
        bhs[0] = 0x43;
        bhs[1] = 0x80 | (1 << 2) | 3; // T, CSG operational, NSG full feature
        bhs[5..8].copy_from_slice(&(text.len() as u32).to_be_bytes()[1..]);
        bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0x42, 0x01]);
        bhs[16..20].copy_from_slice(&self.itt.to_be_bytes());
        bhs[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        self.send(&bhs, &text, false);
        let r = self.recv().unwrap();
        assert_eq!(r.opcode(), 0x23, "login response");
        assert_eq!((r.bhs[36], r.bhs[37]), (0, 0), "login status");
        assert_eq!(r.bhs[1] & 0x83, 0x83, "transit to full feature phase");
        let keys = String::from_utf8_lossy(&r.data).to_string();
        assert!(keys.contains("HeaderDigest=CRC32C"), "{keys}");
        assert!(keys.contains("DataDigest=CRC32C"), "{keys}");
        self.digests = true;
        self.itt += 1;
    }

    fn command(&mut self, cdb: &[u8], read_len: u32, write: &[u8]) -> [u8; 48] {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x01;
        bhs[1] =
            0x80 | if read_len > 0 { 0x40 } else { 0 } | if !write.is_empty() { 0x20 } else { 0 };
        let edtl = if read_len > 0 {
            read_len
        } else {
            write.len() as u32
        };
        bhs[16..20].copy_from_slice(&self.itt.to_be_bytes());
        bhs[20..24].copy_from_slice(&edtl.to_be_bytes());
        bhs[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        bhs[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn += 1;
        self.itt += 1;
        bhs
    }

    fn write10(&mut self, lba: u32, data: &[u8], corrupt: bool) -> std::io::Result<u8> {
        let blocks = (data.len() / 512) as u16;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let mut bhs = self.command(&cdb, 0, data);
        let imm = data.len().min(65536);
        bhs[5..8].copy_from_slice(&(imm as u32).to_be_bytes()[1..]);
        let itt = u32::from_be_bytes(bhs[16..20].try_into().unwrap());
        self.send(&bhs, &data[..imm], corrupt);
        loop {
            let p = self.recv()?;
            match p.opcode() {
                0x31 => {
                    // R2T: send the requested range in Data-Out PDUs.
                    let ttt = u32::from_be_bytes(p.bhs[20..24].try_into().unwrap());
                    let off = u32::from_be_bytes(p.bhs[40..44].try_into().unwrap()) as usize;
                    let len = u32::from_be_bytes(p.bhs[44..48].try_into().unwrap()) as usize;
                    let mut pos = off;
                    let mut data_sn = 0u32;
                    while pos < off + len {
                        let n = (off + len - pos).min(65536);
                        let mut d = [0u8; 48];
                        d[0] = 0x05;
                        d[1] = if pos + n >= off + len { 0x80 } else { 0 };
                        d[5..8].copy_from_slice(&(n as u32).to_be_bytes()[1..]);
                        d[16..20].copy_from_slice(&itt.to_be_bytes());
                        d[20..24].copy_from_slice(&ttt.to_be_bytes());
                        d[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
                        d[36..40].copy_from_slice(&data_sn.to_be_bytes());
                        d[40..44].copy_from_slice(&(pos as u32).to_be_bytes());
                        self.send(&d, &data[pos..pos + n], false);
                        pos += n;
                        data_sn += 1;
                    }
                }
                0x21 => return Ok(p.bhs[3]),
                0x3f => return Ok(0xff),
                op => panic!("unexpected opcode {op:#x} during WRITE"),
            }
        }
    }

    fn read10(&mut self, lba: u32, len: usize) -> Vec<u8> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&((len / 512) as u16).to_be_bytes());
        let bhs = self.command(&cdb, len as u32, &[]);
        self.send(&bhs, &[], false);
        let mut out = vec![0u8; len];
        loop {
            let p = self.recv().unwrap();
            match p.opcode() {
                0x25 => {
                    let off = u32::from_be_bytes(p.bhs[40..44].try_into().unwrap()) as usize;
                    out[off..off + p.data.len()].copy_from_slice(&p.data);
                    if p.bhs[1] & 1 != 0 {
                        assert_eq!(p.bhs[3], 0, "read status");
                        return out;
                    }
                }
                0x21 => {
                    assert_eq!(p.bhs[3], 0, "read status");
                    return out;
                }
                op => panic!("unexpected opcode {op:#x} during READ"),
            }
        }
    }
}

#[test]
fn header_and_data_digests_protect_every_pdu() {
    let mut server = Server::start(&["ram:16M"], &[]);
    let mut c = Client::connect(server.port());
    c.login();
    // 320 KiB: immediate data, then R2T-driven Data-Out PDUs of 64 KiB,
    // received straight into the task's buffer.
    let data = pseudo_random_bytes(320 * 1024, 7);
    assert_eq!(c.write10(8, &data, false).unwrap(), 0, "WRITE status");
    let back = c.read10(8, data.len());
    assert!(back == data, "data read back differs from data written");

    // A corrupted data digest on the immediate data: the target must not
    // answer GOOD; it rejects the PDU or drops the connection.
    // 64 KiB: as large as a write the target would otherwise store in
    // place, as it arrives; with a digest it must be checked first.
    let bad = pseudo_random_bytes(65536, 9);
    // An error is a closed connection, which is fine too.
    if let Ok(status) = c.write10(2000, &bad, true) {
        assert_ne!(status, 0, "a WRITE with a bad data digest was accepted");
    }
    // The target still serves a new session, and the bad write left the
    // blocks untouched (still zero).
    let mut c2 = Client::connect(server.port());
    c2.login();
    assert!(
        c2.read10(2000, 65536).iter().all(|&b| b == 0),
        "bad-digest data reached the disk"
    );
    assert!(server.is_running());
    // With a data digest, reads and writes go through buffers, never
    // straight from or into the ram: LU's mapping (the digest is computed
    // in user space, and checked before the data may land).
    server.stop();
    let out = server.output();
    assert!(out.contains("reads in place "), "no exit summary:\n{out}");
    assert_eq!(summary_count(&out, "reads in place "), 0, "{out}");
    assert_eq!(summary_count(&out, "writes in place "), 0, "{out}");
}
