//! Emulation tests: every command, every error path.
use super::*;
use crate::scsi::SenseKey;
use proptest::prelude::*;

fn lu() -> LuInfo {
    LuInfo {
        block_size: 512,
        num_blocks: 1000,
        read_only: false,
        write_cache: true,
        ident: [0x5A; 16],
        vendor: "BOOTLUN",
        product: "Disk",
        revision: "1",
        max_transfer_blocks: 0,
        optimal_transfer_blocks: 0,
        rotational: false,
        state: Default::default(),
    }
}

const LUNS: [u64; 3] = [0, 1, 300];

fn exec_on(cdb: &[u8], lu: Option<&LuInfo>) -> (Outcome, Vec<u8>) {
    let ctx = CommandCtx {
        lun: 0,
        lu,
        luns: &LUNS,
        expected_len: 0,
        nexus: None,
        backend: None,
    };
    let mut out = vec![0xAA; 7];
    let o = match execute(cdb, &ctx, &mut out) {
        // Field pointers are checked in `field_pointers`; elsewhere only
        // key, ASC and ASCQ matter.
        Outcome::Check(s) => Outcome::Check(Sense { field: None, ..s }),
        o => o,
    };
    (o, out)
}

fn pointer(cdb: &[u8]) -> Option<(u16, Option<u8>)> {
    let ctx = CommandCtx {
        lun: 0,
        lu: Some(&lu()),
        luns: &LUNS,
        expected_len: 0,
        nexus: None,
        backend: None,
    };
    match execute(cdb, &ctx, &mut Vec::new()) {
        Outcome::Check(s) => s.field.map(|f| {
            assert!(f.in_cdb);
            (f.byte, f.bit)
        }),
        _ => None,
    }
}

fn exec(cdb: &[u8]) -> (Outcome, Vec<u8>) {
    exec_on(cdb, Some(&lu()))
}

fn check(sense: Sense) -> Outcome {
    Outcome::Check(sense)
}

fn invalid_field() -> Outcome {
    check(Sense::invalid_field_in_cdb())
}

fn cdb16(op: u8, lba: u64, len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb10(op: u8, lba: u32, len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb12(op: u8, lba: u32, len: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

// ---- dispatch ----

#[test]
fn unsupported_opcode() {
    for opc in [0x04u8, 0x1C, 0x1D, 0x3B, 0x3C, 0x4C, 0x4D, 0xFF] {
        let (o, d) = exec(&[opc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(o, check(Sense::invalid_opcode()), "opcode {opc:#x}");
        assert!(d.is_empty());
    }
    assert_eq!(exec(&[]).0, check(Sense::invalid_opcode()));
}

#[test]
fn unsupported_service_action() {
    let mut c = cdb16(0x9E, 0, 32);
    c[1] = 0x13; // REPORT REFERRALS
    assert_eq!(exec(&c).0, invalid_field());
    let c = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]; // REPORT TARGET PORT GROUPS
    assert_eq!(exec(&c).0, invalid_field());
}

#[test]
fn short_cdb_is_invalid_field() {
    for c in [
        &[0x28u8][..],
        &[0x28, 0, 0, 0],
        &[0x88; 15],
        &[0x12, 0, 0, 0, 36],
        &[0x9E, 0x10, 0],
    ] {
        assert_eq!(exec(c).0, invalid_field(), "{c:?}");
    }
}

#[test]
fn naca_is_invalid_field() {
    assert_eq!(exec(&[0, 0, 0, 0, 0, 0x04]).0, invalid_field());
    let mut c = cdb10(0x28, 0, 1);
    c[9] = 0x04;
    assert_eq!(exec(&c).0, invalid_field());
}

#[test]
fn reserved_bits_are_invalid_field() {
    assert_eq!(exec(&[0, 1, 0, 0, 0, 0]).0, invalid_field());
    assert_eq!(exec(&[0x12, 0x02, 0, 0, 36, 0]).0, invalid_field()); // CMDDT
    let mut c = cdb10(0x28, 0, 1);
    c[1] = 0x01;
    assert_eq!(exec(&c).0, invalid_field());
}

#[test]
fn missing_lun() {
    let nolu = |c: &[u8]| exec_on(c, None);
    let lns = check(Sense::lun_not_supported());
    assert_eq!(nolu(&[0, 0, 0, 0, 0, 0]).0, lns);
    assert_eq!(nolu(&cdb10(0x28, 0, 1)).0, lns);
    assert_eq!(nolu(&[0x1A, 0, 0x3F, 0, 255, 0]).0, lns);
    assert_eq!(nolu(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).0, lns);
    // INQUIRY, REPORT LUNS and REQUEST SENSE still answer.
    let (o, d) = nolu(&[0x12, 0, 0, 0, 36, 0]);
    assert_eq!((o, d[0]), (Outcome::Good, 0x7F));
    let (o, _) = nolu(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]);
    assert_eq!(o, Outcome::Good);
    let (o, d) = nolu(&[0x03, 0, 0, 0, 18, 0]);
    assert_eq!(o, Outcome::Good);
    assert_eq!((d[0], d[2], d[12]), (0x70, 0x05, 0x25));
}

#[test]
fn field_pointers() {
    // unsupported service action: byte 1 bit 4
    let mut c = cdb16(0x9E, 0, 32);
    c[1] = 0x13;
    assert_eq!(pointer(&c), Some((1, Some(4))));
    // reserved bit: the offending byte and its highest bad bit
    assert_eq!(pointer(&[0x00, 0, 0, 0x30, 0, 0]), Some((3, Some(5))));
    // NACA in CONTROL
    assert_eq!(pointer(&[0x00, 0, 0, 0, 0, 0x04]), Some((5, Some(2))));
    // RDPROTECT / VRPROTECT / BYTCHK
    let mut c = cdb10(0x28, 0, 1);
    c[1] = 0x40;
    assert_eq!(pointer(&c), Some((1, Some(7))));
    let mut c = cdb10(0x2F, 0, 1);
    c[1] = 0x04;
    assert_eq!(pointer(&c), Some((1, Some(2))));
    // INQUIRY page code, MODE SENSE page and subpage
    assert_eq!(pointer(&[0x12, 0, 0x80, 0, 255, 0]), Some((2, Some(7))));
    assert_eq!(pointer(&[0x12, 1, 0x42, 0, 255, 0]), Some((2, Some(7))));
    assert_eq!(pointer(&[0x1A, 0, 0x01, 0, 255, 0]), Some((2, Some(5))));
    assert_eq!(pointer(&[0x1A, 0, 0x08, 0x01, 255, 0]), Some((3, Some(7))));
    // REPORT LUNS select report / allocation length
    assert_eq!(
        pointer(&[0xA0, 0, 5, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
        Some((2, Some(7)))
    );
    assert_eq!(
        pointer(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]),
        Some((6, Some(7)))
    );
    // REPORT SUPPORTED OPERATION CODES reporting options
    let c = [0xA3, 0x0C, 0x02, 0x28, 0, 0, 0, 0, 1, 0, 0, 0];
    assert_eq!(pointer(&c), Some((2, Some(2))));
    // READ CAPACITY LBA without PMI
    assert_eq!(
        pointer(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
        Some((2, Some(7)))
    );
    // no pointer for out-of-range LBAs or short CDBs
    assert_eq!(pointer(&cdb10(0x28, 5000, 1)), None);
    assert_eq!(pointer(&[0x28, 0, 0]), None);
}

#[test]
fn transfer_length_pointer() {
    let mut l = lu();
    l.max_transfer_blocks = 4;
    let ctx = CommandCtx {
        lun: 0,
        lu: Some(&l),
        luns: &LUNS,
        expected_len: 0,
        nexus: None,
        backend: None,
    };
    let at = |c: &[u8]| match execute(c, &ctx, &mut Vec::new()) {
        Outcome::Check(s) => s.field.map(|f| f.byte),
        _ => None,
    };
    assert_eq!(at(&[0x08, 0, 0, 0, 5, 0]), Some(4));
    assert_eq!(at(&cdb10(0x2A, 0, 5)), Some(7));
    assert_eq!(at(&cdb12(0xA8, 0, 5)), Some(6));
    assert_eq!(at(&cdb16(0x88, 0, 5)), Some(10));
}

// ---- TEST UNIT READY, START STOP UNIT, RESERVE/RELEASE ----

#[test]
fn test_unit_ready() {
    assert_eq!(exec(&[0, 0, 0, 0, 0, 0]), (Outcome::Good, vec![]));
}

#[test]
fn start_stop_unit_is_good() {
    for b4 in [0x00, 0x01, 0x02, 0x03, 0x10, 0x04] {
        assert_eq!(exec(&[0x1B, 0x01, 0, 0, b4, 0]).0, Outcome::Good);
    }
    assert_eq!(exec(&[0x1B, 0, 0, 0, 0x08, 0]).0, invalid_field());
}

// ---- REQUEST SENSE ----

#[test]
fn request_sense_fixed() {
    let (o, d) = exec(&[0x03, 0, 0, 0, 252, 0]);
    assert_eq!(o, Outcome::Good);
    assert_eq!(d, Sense::no_sense().fixed().to_vec());
    assert_eq!(d[0], 0x70);
    assert_eq!(d[7], 10);
    let (_, d) = exec(&[0x03, 0, 0, 0, 8, 0]);
    assert_eq!(d.len(), 8);
}

#[test]
fn request_sense_descriptor() {
    let (o, d) = exec(&[0x03, 1, 0, 0, 252, 0]);
    assert_eq!(o, Outcome::Good);
    assert_eq!(d, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
}

// ---- READ CAPACITY ----

#[test]
fn read_capacity_10() {
    let (o, d) = exec(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(o, Outcome::Good);
    assert_eq!(d, vec![0, 0, 0x03, 0xE7, 0, 0, 0x02, 0x00]);
}

#[test]
fn read_capacity_10_too_big() {
    let mut l = lu();
    l.num_blocks = 1 << 33;
    l.block_size = 4096;
    let (_, d) = exec_on(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], Some(&l));
    assert_eq!(d, vec![0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0x00]);
    l.num_blocks = 0xFFFF_FFFF; // last LBA FFFFFFFEh still fits
    let (_, d) = exec_on(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], Some(&l));
    assert_eq!(&d[..4], &[0xFF, 0xFF, 0xFF, 0xFE]);
}

#[test]
fn read_capacity_10_pmi() {
    assert_eq!(exec(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]).0, invalid_field());
    let (o, d) = exec(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
    assert_eq!((o, d.len()), (Outcome::Good, 8));
}

#[test]
fn read_capacity_16() {
    let mut c = cdb16(0x9E, 0, 32);
    c[1] = 0x10;
    let (o, d) = exec(&c);
    assert_eq!(o, Outcome::Good);
    let mut want = vec![0u8; 32];
    want[6..8].copy_from_slice(&[0x03, 0xE7]);
    want[10] = 0x02;
    assert_eq!(d, want);
}

#[test]
fn read_capacity_16_allocation_length() {
    let mut c = cdb16(0x9E, 0, 12);
    c[1] = 0x10;
    assert_eq!(exec(&c).1.len(), 12);
    c[13] = 0;
    assert_eq!(exec(&c), (Outcome::Good, vec![]));
    c[12] = 1; // 256
    assert_eq!(exec(&c).1.len(), 32);
}

#[test]
fn read_capacity_16_large() {
    let mut l = lu();
    l.num_blocks = 1 << 40;
    let mut c = cdb16(0x9E, 0, 32);
    c[1] = 0x10;
    let (_, d) = exec_on(&c, Some(&l));
    assert_eq!(&d[..8], &((1u64 << 40) - 1).to_be_bytes());
    assert_eq!(&d[12..16], &[0, 0, 0, 0]); // no PI, LBPPBE 0, LBPME 0
    l.state = std::sync::Arc::new(crate::scsi::LuState::with_provisioning(true, true));
    let (_, d) = exec_on(&c, Some(&l));
    assert_eq!(d[14], 0xC0); // LBPME, LBPRZ
}

// ---- READ / WRITE ----

#[test]
fn read_variants() {
    let rd = |lba, blocks, fua| Outcome::Read { lba, blocks, fua };
    assert_eq!(exec(&[0x08, 0, 0, 5, 3, 0]).0, rd(5, 3, false));
    assert_eq!(exec(&[0x08, 0, 0, 5, 0, 0]).0, rd(5, 256, false));
    assert_eq!(exec(&cdb10(0x28, 7, 2)).0, rd(7, 2, false));
    assert_eq!(exec(&cdb12(0xA8, 999, 1)).0, rd(999, 1, false));
    assert_eq!(exec(&cdb16(0x88, 0, 1000)).0, rd(0, 1000, false));
    let mut c = cdb10(0x28, 7, 2);
    c[1] = 0x18 | 0x02; // DPO, FUA, FUA_NV
    assert_eq!(exec(&c).0, rd(7, 2, true));
}

#[test]
fn write_variants() {
    let wr = |lba, blocks, fua| Outcome::Write { lba, blocks, fua };
    assert_eq!(exec(&[0x0A, 0, 0x01, 0x00, 0, 0]).0, wr(256, 256, false));
    let mut c = cdb10(0x2A, 1, 1);
    c[1] = 0x08;
    assert_eq!(exec(&c).0, wr(1, 1, true));
    let mut c = cdb12(0xAA, 2, 3);
    c[1] = 0x10;
    assert_eq!(exec(&c).0, wr(2, 3, false));
    assert_eq!(exec(&cdb16(0x8A, 999, 1)).0, wr(999, 1, false));
}

#[test]
fn zero_length_transfers_are_good() {
    assert_eq!(exec(&cdb10(0x28, 0, 0)), (Outcome::Good, vec![]));
    assert_eq!(exec(&cdb12(0xA8, 999, 0)).0, Outcome::Good);
    assert_eq!(exec(&cdb16(0x8A, 10, 0)).0, Outcome::Good);
    assert_eq!(exec(&cdb10(0x2F, 0, 0)).0, Outcome::Good);
}

#[test]
fn lba_out_of_range() {
    let oob = check(Sense::lba_out_of_range());
    assert_eq!(exec(&cdb10(0x28, 1000, 1)).0, oob);
    assert_eq!(exec(&cdb10(0x28, 999, 2)).0, oob);
    assert_eq!(exec(&cdb10(0x28, 1001, 0)).0, oob);
    assert_eq!(exec(&cdb10(0x28, 0xFFFF_FFFF, 0)).0, oob);
    assert_eq!(exec(&cdb16(0x88, u64::MAX, 1)).0, oob);
    assert_eq!(exec(&cdb16(0x8A, 1 << 63, 1)).0, oob);
    assert_eq!(exec(&cdb12(0xAA, 0, 1001)).0, oob);
    assert_eq!(exec(&[0x08, 0, 0x03, 0xE8, 1, 0]).0, oob);
    assert_eq!(exec(&[0x08, 0, 0x03, 0x00, 0, 0]).0, oob); // 768 + 256 > 1000
}

#[test]
fn protect_fields_are_invalid() {
    for opc in [0x28u8, 0x2A] {
        for p in 1..8u8 {
            let mut c = cdb10(opc, 0, 1);
            c[1] = p << 5;
            assert_eq!(exec(&c).0, invalid_field());
        }
    }
    let mut c = cdb16(0x88, 0, 1);
    c[1] = 0x20;
    assert_eq!(exec(&c).0, invalid_field());
    let mut c = cdb12(0xAA, 0, 1);
    c[1] = 0x80;
    assert_eq!(exec(&c).0, invalid_field());
}

#[test]
fn write_to_read_only_lu() {
    let mut l = lu();
    l.read_only = true;
    let wp = check(Sense::write_protected());
    assert_eq!(exec_on(&cdb10(0x2A, 0, 1), Some(&l)).0, wp);
    assert_eq!(exec_on(&[0x0A, 0, 0, 0, 1, 0], Some(&l)).0, wp);
    assert_eq!(exec_on(&cdb16(0x8A, 0, 1), Some(&l)).0, wp);
    assert_eq!(exec_on(&cdb12(0xAA, 0, 1), Some(&l)).0, wp);
    assert_eq!(wp, check(Sense::new(SenseKey::DataProtect, 0x27, 0)));
    // reads still work
    assert!(matches!(
        exec_on(&cdb10(0x28, 0, 1), Some(&l)).0,
        Outcome::Read { .. }
    ));
}

#[test]
fn maximum_transfer_length() {
    let mut l = lu();
    l.max_transfer_blocks = 8;
    assert!(matches!(
        exec_on(&cdb10(0x28, 0, 8), Some(&l)).0,
        Outcome::Read { .. }
    ));
    assert_eq!(exec_on(&cdb10(0x28, 0, 9), Some(&l)).0, invalid_field());
    assert_eq!(exec_on(&cdb10(0x2A, 0, 9), Some(&l)).0, invalid_field());
    // the range check comes first
    assert_eq!(
        exec_on(&cdb10(0x28, 995, 9), Some(&l)).0,
        check(Sense::lba_out_of_range())
    );
}

// ---- WRITE AND VERIFY ----

#[test]
fn write_and_verify_is_a_fua_write() {
    let wr = |lba, blocks| Outcome::Write {
        lba,
        blocks,
        fua: true,
    };
    assert_eq!(exec(&cdb10(0x2E, 4, 2)).0, wr(4, 2));
    let mut c = cdb12(0xAE, 4, 2);
    c[1] = 0x12; // DPO, BYTCHK
    assert_eq!(exec(&c).0, wr(4, 2));
    assert_eq!(exec(&cdb16(0x8E, 999, 1)).0, wr(999, 1));
    assert_eq!(exec(&cdb10(0x2E, 0, 0)).0, Outcome::Good);
    assert_eq!(
        exec(&cdb16(0x8E, 1000, 1)).0,
        check(Sense::lba_out_of_range())
    );
    let mut c = cdb10(0x2E, 0, 1);
    c[1] = 0x08; // reserved in WRITE AND VERIFY
    assert_eq!(exec(&c).0, invalid_field());
    c[1] = 0x20;
    assert_eq!(exec(&c).0, invalid_field());
    let mut l = lu();
    l.read_only = true;
    assert_eq!(
        exec_on(&cdb10(0x2E, 0, 1), Some(&l)).0,
        check(Sense::write_protected())
    );
}

// ---- VERIFY ----

#[test]
fn verify_bytchk() {
    let v = |lba, blocks, bytchk| Outcome::Verify {
        lba,
        blocks,
        bytchk,
    };
    assert_eq!(exec(&cdb10(0x2F, 3, 4)).0, v(3, 4, false));
    let mut c = cdb10(0x2F, 3, 4);
    c[1] = 0x02;
    assert_eq!(exec(&c).0, v(3, 4, true));
    c[1] = 0x04;
    assert_eq!(exec(&c).0, invalid_field());
    c[1] = 0x06;
    assert_eq!(exec(&c).0, invalid_field());
    c[1] = 0x10 | 0x02; // DPO
    assert_eq!(exec(&c).0, v(3, 4, true));
    let mut c = cdb16(0x8F, 999, 1);
    c[1] = 0x02;
    assert_eq!(exec(&c).0, v(999, 1, true));
    assert_eq!(exec(&cdb12(0xAF, 1, 1)).0, v(1, 1, false));
}

#[test]
fn verify_errors() {
    let mut c = cdb10(0x2F, 0, 1);
    c[1] = 0x20;
    assert_eq!(exec(&c).0, invalid_field());
    let mut c = cdb16(0x8F, 0, 1);
    c[1] = 0xE0;
    assert_eq!(exec(&c).0, invalid_field());
    assert_eq!(
        exec(&cdb10(0x2F, 1000, 1)).0,
        check(Sense::lba_out_of_range())
    );
    assert_eq!(
        exec(&cdb16(0x8F, 990, 11)).0,
        check(Sense::lba_out_of_range())
    );
    assert_eq!(
        exec(&cdb16(0x8F, 1001, 0)).0,
        check(Sense::lba_out_of_range())
    );
}

// ---- SYNCHRONIZE CACHE ----

#[test]
fn synchronize_cache() {
    assert_eq!(exec(&cdb10(0x35, 0, 0)).0, Outcome::Flush);
    let mut c = cdb10(0x35, 10, 990);
    c[1] = 0x02; // IMMED
    assert_eq!(exec(&c).0, Outcome::Flush);
    assert_eq!(exec(&cdb16(0x91, 999, 1)).0, Outcome::Flush);
    assert_eq!(
        exec(&cdb10(0x35, 10, 991)).0,
        check(Sense::lba_out_of_range())
    );
    assert_eq!(
        exec(&cdb16(0x91, 1000, 0)).0,
        check(Sense::lba_out_of_range())
    );
}

// ---- PRE-FETCH ----

#[test]
fn pre_fetch() {
    assert_eq!(exec(&cdb10(0x34, 0, 0)), (Outcome::Good, vec![]));
    let mut c = cdb10(0x34, 10, 990);
    c[1] = 0x02; // IMMED
    assert_eq!(exec(&c).0, Outcome::Good);
    assert_eq!(exec(&cdb16(0x90, 999, 1)).0, Outcome::Good);
    assert_eq!(
        exec(&cdb10(0x34, 10, 991)).0,
        check(Sense::lba_out_of_range())
    );
    assert_eq!(
        exec(&cdb16(0x90, 1000, 0)).0,
        check(Sense::lba_out_of_range())
    );
    let mut c = cdb10(0x34, 0, 1);
    c[1] = 0x04;
    assert_eq!(exec(&c).0, invalid_field());
    assert_eq!(
        exec_on(&cdb10(0x34, 0, 1), None).0,
        check(Sense::lun_not_supported())
    );
}

// ---- REPORT LUNS ----

#[test]
fn report_luns() {
    let (o, d) = exec(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(o, Outcome::Good);
    assert_eq!(
        d,
        vec![
            0, 0, 0, 24, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, //
            0, 1, 0, 0, 0, 0, 0, 0, //
            0x41, 0x2C, 0, 0, 0, 0, 0, 0,
        ]
    );
    let (_, d2) = exec(&[0xA0, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(d, d2);
}

#[test]
fn report_luns_well_known_only() {
    let (o, d) = exec(&[0xA0, 0, 1, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
    assert_eq!(o, Outcome::Good);
    assert_eq!(d, vec![0; 8]);
}

#[test]
fn report_luns_errors_and_truncation() {
    assert_eq!(
        exec(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]).0,
        invalid_field()
    );
    assert_eq!(
        exec(&[0xA0, 0, 3, 0, 0, 0, 0, 0, 0, 64, 0, 0]).0,
        invalid_field()
    );
    assert_eq!(
        exec(&[0xA0, 0, 0x10, 0, 0, 0, 0, 0, 0, 64, 0, 0]).0,
        invalid_field()
    );
    let (o, d) = exec(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
    assert_eq!(o, Outcome::Good);
    assert_eq!(d.len(), 16);
    assert_eq!(&d[..4], &[0, 0, 0, 24]);
}

#[test]
fn lun_encoding() {
    assert_eq!(encode_lun(0), Some([0; 8]));
    assert_eq!(encode_lun(255), Some([0, 255, 0, 0, 0, 0, 0, 0]));
    assert_eq!(encode_lun(256), Some([0x41, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(encode_lun(0x3FFF), Some([0x7F, 0xFF, 0, 0, 0, 0, 0, 0]));
    assert_eq!(encode_lun(0x4000), Some([0xD2, 0, 0x40, 0, 0, 0, 0, 0]));
    assert_eq!(encode_lun(1 << 24), None);
}

// ---- REPORT SUPPORTED OPERATION CODES ----

fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xA3;
    c[1] = 0x0C;
    c[2] = (u8::from(rctd) << 7) | options;
    c[3] = opcode;
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn rsoc_all_commands() {
    let (o, d) = exec(&rsoc(false, 0, 0, 0, 65535));
    assert_eq!(o, Outcome::Good);
    let n = op::SUPPORTED.len();
    assert_eq!(d.len(), 4 + 8 * n);
    assert_eq!(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize, 8 * n);
    for (c, e) in op::SUPPORTED.iter().zip(d[4..].chunks(8)) {
        assert_eq!(e[0], c.opcode);
        assert_eq!(
            u16::from_be_bytes([e[2], e[3]]),
            c.service_action.unwrap_or(0)
        );
        assert_eq!(e[5], u8::from(c.service_action.is_some()));
        assert_eq!(usize::from(u16::from_be_bytes([e[6], e[7]])), c.usage.len());
    }
    // READ CAPACITY(16) entry has SERVACTV and service action 10h.
    let rc16 = d[4..].chunks(8).find(|e| e[0] == 0x9E).unwrap();
    assert_eq!(rc16, &[0x9E, 0, 0, 0x10, 0, 0x01, 0, 16]);
}

#[test]
fn rsoc_all_commands_with_timeouts() {
    let (o, d) = exec(&rsoc(true, 0, 0, 0, 65535));
    assert_eq!(o, Outcome::Good);
    let n = op::SUPPORTED.len();
    assert_eq!(d.len(), 4 + 20 * n);
    for e in d[4..].chunks(20) {
        assert_eq!(e[5] & 0x02, 0x02); // CTDP
        assert_eq!(&e[8..10], &[0x00, 0x0A]);
    }
}

#[test]
fn rsoc_one_command() {
    let (o, d) = exec(&rsoc(false, 1, 0x28, 0, 65535));
    assert_eq!(o, Outcome::Good);
    assert_eq!(
        d,
        vec![0, 0x03, 0, 10, 0x28, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04]
    );
    let (_, d) = exec(&rsoc(true, 1, 0x2F, 0, 65535));
    assert_eq!(&d[..4], &[0, 0x83, 0, 10]);
    assert_eq!(d[5] & 0x10, 0x10); // DPO
    assert_eq!(d.len(), 4 + 10 + 12);
    assert_eq!(&d[14..16], &[0, 0x0A]);
}

#[test]
fn rsoc_one_command_with_service_action() {
    let (o, d) = exec(&rsoc(false, 2, 0x9E, 0x10, 65535));
    assert_eq!(o, Outcome::Good);
    assert_eq!(&d[..6], &[0, 0x03, 0, 16, 0x9E, 0x10]);
    let (_, d) = exec(&rsoc(false, 2, 0xA3, 0x0C, 65535));
    assert_eq!(&d[..6], &[0, 0x03, 0, 12, 0xA3, 0x0C]);
    let (_, d) = exec(&rsoc(false, 3, 0x9E, 0x10, 65535));
    assert_eq!(&d[..6], &[0, 0x03, 0, 16, 0x9E, 0x10]);
    let (_, d) = exec(&rsoc(false, 3, 0x00, 0x55, 65535));
    assert_eq!(&d[..5], &[0, 0x03, 0, 6, 0x00]);
}

#[test]
fn rsoc_unsupported_commands() {
    assert_eq!(exec(&rsoc(false, 1, 0x3B, 0, 65535)).1, vec![0, 0x01, 0, 0]);
    assert_eq!(
        exec(&rsoc(false, 2, 0x9E, 0x13, 65535)).1,
        vec![0, 0x01, 0, 0]
    );
    assert_eq!(
        exec(&rsoc(false, 3, 0xA3, 0x0A, 65535)).1,
        vec![0, 0x01, 0, 0]
    );
}

#[test]
fn rsoc_option_errors() {
    assert_eq!(exec(&rsoc(false, 1, 0x9E, 0x10, 65535)).0, invalid_field());
    assert_eq!(exec(&rsoc(false, 2, 0x28, 0, 65535)).0, invalid_field());
    assert_eq!(exec(&rsoc(false, 4, 0x28, 0, 65535)).0, invalid_field());
    assert_eq!(exec(&rsoc(false, 7, 0x28, 0, 65535)).0, invalid_field());
}

#[test]
fn rsoc_allocation_length() {
    let (o, d) = exec(&rsoc(false, 0, 0, 0, 6));
    assert_eq!(o, Outcome::Good);
    assert_eq!(d.len(), 6);
    assert_eq!(exec(&rsoc(false, 1, 0x28, 0, 0)), (Outcome::Good, vec![]));
}

#[test]
fn every_reported_command_is_accepted() {
    // Each supported command, built from its own CDB USAGE DATA with the
    // data bits cleared, must get past the opcode and field checks.
    for c in op::SUPPORTED {
        let mut cdb = vec![0u8; c.usage.len()];
        cdb[0] = c.opcode;
        if let Some(sa) = c.service_action {
            cdb[1] = sa as u8;
        }
        // an allocation length big enough for REPORT LUNS
        if c.opcode == op::REPORT_LUNS {
            cdb[9] = 16;
        }
        // MODE SENSE page 00h is vendor specific and not supported
        if c.opcode == op::MODE_SENSE_6 || c.opcode == op::MODE_SENSE_10 {
            cdb[2] = 0x3F;
        }
        // Commands that take Data-Out check the expected length against
        // what the CDB describes, and some need a backend: the field
        // checks are what matters here.
        let mut thin = lu();
        thin.state = std::sync::Arc::new(crate::scsi::LuState::with_provisioning(true, true));
        let (o, _) = exec_on(&cdb, Some(&thin));
        let field_error = matches!(&o, Outcome::Check(s)
            if s.code() == (SenseKey::IllegalRequest, 0x20, 0)
                || (s.code() == (SenseKey::IllegalRequest, 0x24, 0) && s.field.is_some()));
        assert!(!field_error, "{}: {o:?}", c.name);
    }
}

#[test]
fn check_clears_data_in() {
    let (o, d) = exec(&[0x1A, 0, 0x3F, 0x01, 255, 0]);
    assert_eq!(o, invalid_field());
    assert!(d.is_empty());
}

#[test]
fn inquiry_and_mode_sense_dispatch() {
    let (o, d) = exec(&[0x12, 0, 0, 0, 255, 0]);
    assert_eq!((o, d.len()), (Outcome::Good, 96));
    let (o, d) = exec(&[0x12, 1, 0x83, 0, 255, 0]);
    assert_eq!((o, d[1]), (Outcome::Good, 0x83));
    let (o, d) = exec(&[0x1A, 0, 0x3F, 0, 255, 0]);
    assert_eq!((o, d[0] as usize + 1), (Outcome::Good, d.len()));
    let (o, d) = exec(&[0x5A, 0, 0x08, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!((o, d.len()), (Outcome::Good, 8 + 8 + 20));
}

// ---- properties ----

fn arb_lu() -> impl Strategy<Value = LuInfo> {
    (
        prop_oneof![Just(512u32), Just(4096u32)],
        prop_oneof![
            0u64..2048,
            any::<u64>(),
            Just(u64::MAX),
            Just(0x1_0000_0000)
        ],
        any::<bool>(),
        any::<bool>(),
        any::<[u8; 16]>(),
        prop_oneof![Just(0u32), 1u32..512, any::<u32>()],
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(bs, nb, ro, wc, ident, max, opt, rot)| LuInfo {
            block_size: bs,
            num_blocks: nb,
            read_only: ro,
            write_cache: wc,
            ident,
            vendor: "BOOTLUN",
            product: "Prop\u{7f}Disk",
            revision: "r",
            max_transfer_blocks: max,
            optimal_transfer_blocks: opt,
            rotational: rot,
            state: Default::default(),
        })
}

fn arb_cdb() -> impl Strategy<Value = Vec<u8>> {
    let known: Vec<u8> = op::SUPPORTED.iter().map(|c| c.opcode).collect();
    (
        prop_oneof![3 => prop::sample::select(known), 1 => any::<u8>()],
        prop::collection::vec(any::<u8>(), 0..40),
        any::<bool>(),
    )
        .prop_map(|(opcode, rest, sparse)| {
            let mut v = vec![opcode];
            // Mostly-zero CDBs get past the reserved-bit checks more often.
            v.extend(
                rest.into_iter()
                    .map(|b| if sparse && b > 0x20 { 0 } else { b }),
            );
            v
        })
}

/// CDBs of supported commands with only CDB USAGE DATA bits set, about
/// half of the bytes zeroed so that LBAs often fall inside the medium.
fn arb_wellformed_cdb() -> impl Strategy<Value = Vec<u8>> {
    let all: Vec<&'static CommandInfo> = op::SUPPORTED.iter().collect();
    (
        prop::sample::select(all),
        prop::collection::vec(any::<u8>(), 16),
        prop::collection::vec(any::<bool>(), 16),
    )
        .prop_map(|(c, bytes, keep)| {
            let mut v: Vec<u8> = c.usage.to_vec();
            for i in 1..v.len() - 1 {
                v[i] = if keep[i] { bytes[i] & c.usage[i] } else { 0 };
            }
            if let Some(sa) = c.service_action {
                v[1] = (v[1] & !0x1F) | sa as u8;
            }
            let last = v.len() - 1;
            v[last] = 0;
            v
        })
}

/// ALLOCATION LENGTH of the commands that have one; Data-In must never
/// exceed it.
fn allocation_length(cdb: &[u8]) -> Option<usize> {
    let b = |i: usize| usize::from(cdb.get(i).copied().unwrap_or(0));
    let be = |i: usize, n: usize| (i..i + n).fold(0usize, |a, k| (a << 8) | b(k));
    match *cdb.first()? {
        op::INQUIRY => Some(be(3, 2)),
        op::REQUEST_SENSE | op::MODE_SENSE_6 => Some(b(4)),
        op::MODE_SENSE_10 => Some(be(7, 2)),
        op::REPORT_LUNS | op::MAINTENANCE_IN => Some(be(6, 4)),
        op::SERVICE_ACTION_IN_16 => Some(be(10, 4)),
        op::PERSISTENT_RESERVE_IN | op::READ_DEFECT_DATA_10 => Some(be(7, 2)),
        op::READ_DEFECT_DATA_12 => Some(be(6, 4)),
        op::RECEIVE_COPY_RESULTS => Some(be(10, 4)),
        op::READ_CAPACITY_10 => Some(8),
        _ => Some(0),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn execute_never_panics_and_stays_in_range(
        cdb in prop_oneof![arb_cdb(), arb_wellformed_cdb()],
        lu in arb_lu(),
        present in any::<bool>(),
    ) {
        let luns = [0u64, 7, 300, 1 << 20, u64::MAX];
        let ctx = CommandCtx { lun: 0, lu: present.then_some(&lu), luns: &luns, expected_len: 0, nexus: None, backend: None };
        let mut out = vec![1, 2, 3];
        let o = execute(&cdb, &ctx, &mut out);
        match o {
            Outcome::Read { lba, blocks, .. }
            | Outcome::Write { lba, blocks, .. }
            | Outcome::WriteAtomic { lba, blocks, .. }
            | Outcome::Verify { lba, blocks, .. } => {
                prop_assert!(present);
                prop_assert!(blocks > 0);
                prop_assert!(u128::from(lba) + u128::from(blocks) <= u128::from(lu.num_blocks));
                prop_assert!(out.is_empty());
            }
            Outcome::Check(_) => prop_assert!(out.is_empty()),
            Outcome::Flush => prop_assert!(present && out.is_empty()),
            Outcome::Good => prop_assert!(out.len() <= 65536 + 4096),
            Outcome::Conflict => prop_assert!(present && out.is_empty()),
            Outcome::DataOut { len } => prop_assert!(present && len > 0 && out.is_empty()),
            Outcome::Job(_) => prop_assert!(present && out.is_empty()),
        }
        if matches!(o, Outcome::Write { .. }) {
            prop_assert!(!lu.read_only);
        }
        if o == Outcome::Good {
            if let Some(alloc) = allocation_length(&cdb) {
                prop_assert!(out.len() <= alloc, "{} > {}", out.len(), alloc);
            }
        }
    }
}
