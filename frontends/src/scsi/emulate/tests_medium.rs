//! Commands that manage the medium and reservations, run against real
//! backends (`ram:` and a sparse file) with two I_T nexuses.
use super::*;
use crate::scsi::{LuState, SenseKey, Status};
use bootlun_engine::{open_backend, BlockBackend, LunSpec};
use std::sync::Arc;

struct Rig {
    backend: Arc<dyn BlockBackend>,
    lu: LuInfo,
    a: Nexus,
    b: Nexus,
}

fn nexus(n: &str) -> Nexus {
    Nexus {
        initiator_port: format!("iqn.2026-01.test:{n},i,0x000000000001"),
        transport_id: vec![0x45, 0, 0, 4, b'x', 0, 0, 0],
        target_port: 1,
    }
}

fn rig_on(spec: &str) -> Rig {
    let backend = open_backend(&LunSpec::parse(spec).unwrap(), 0).unwrap();
    let lu = LuInfo {
        block_size: 512,
        num_blocks: backend.size_bytes() / 512,
        read_only: false,
        write_cache: true,
        ident: [0x42; 16],
        vendor: "BOOTLUN",
        product: "Disk",
        revision: "1",
        max_transfer_blocks: 0,
        optimal_transfer_blocks: 0,
        rotational: false,
        state: LuState::for_backend(&*backend),
    };
    Rig {
        backend,
        lu,
        a: nexus("a"),
        b: nexus("b"),
    }
}

impl Rig {
    fn ctx<'a>(&'a self, who: &'a Nexus, edtl: u32) -> CommandCtx<'a> {
        CommandCtx {
            lun: 0,
            lu: Some(&self.lu),
            luns: &[0],
            expected_len: edtl,
            nexus: Some(who),
            backend: Some(&*self.backend),
        }
    }

    /// Both halves of a command, jobs run to the end.
    fn run(&self, who: &Nexus, cdb: &[u8], data: &[u8]) -> (Outcome, Vec<u8>) {
        let ctx = self.ctx(who, data.len() as u32);
        let mut out = Vec::new();
        let mut o = execute(cdb, &ctx, &mut out);
        if let Outcome::DataOut { len } = o {
            assert!(len as usize >= data.len().min(len as usize));
            o = execute_with_data(cdb, &ctx, data, &mut out);
        }
        if let Outcome::Job(job) = o {
            o = job.run(&*self.backend);
        }
        (o, out)
    }

    fn read(&self, lba: u64, blocks: usize) -> Vec<u8> {
        let mut b = vec![0u8; blocks * 512];
        self.backend.read_at(&mut b, lba * 512).unwrap();
        b
    }
}

fn prout(sa: u8, rtype: u8, key: u64, sa_key: u64, aptpl: bool) -> ([u8; 10], Vec<u8>) {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    ([0x5F, sa, rtype, 0, 0, 0, 0, 0, 24, 0], p)
}

fn read10(lba: u32) -> [u8; 10] {
    let b = lba.to_be_bytes();
    [0x28, 0, b[0], b[1], b[2], b[3], 0, 0, 1, 0]
}

fn write10(lba: u32) -> [u8; 10] {
    let b = lba.to_be_bytes();
    [0x2A, 0, b[0], b[1], b[2], b[3], 0, 0, 1, 0]
}

#[test]
fn persistent_reservation_write_exclusive() {
    let r = rig_on("ram:1M");
    let (c, p) = prout(0x06, 0, 0, 0xAA, false); // REGISTER AND IGNORE
    assert_eq!(r.run(&r.a, &c, &p).0, Outcome::Good);
    let (c, p) = prout(0x06, 0, 0, 0xBB, false);
    assert_eq!(r.run(&r.b, &c, &p).0, Outcome::Good);
    // RESERVE with the wrong key: conflict; with the right one: held.
    let (c, p) = prout(0x01, 0x01, 0xBB, 0, false);
    assert_eq!(r.run(&r.a, &c, &p).0, Outcome::Conflict);
    let (c, p) = prout(0x01, 0x01, 0xAA, 0, false);
    assert_eq!(r.run(&r.a, &c, &p).0, Outcome::Good);
    // Write Exclusive: B reads but may not write; A does both.
    assert!(matches!(
        r.run(&r.b, &read10(0), &[]).0,
        Outcome::Read { .. }
    ));
    assert_eq!(r.run(&r.b, &write10(0), &[]).0, Outcome::Conflict);
    assert!(matches!(
        r.run(&r.a, &write10(0), &[]).0,
        Outcome::Write { .. }
    ));
    // READ KEYS: generation 2, both keys.
    let (o, d) = r.run(&r.b, &[0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[]);
    assert_eq!(o, Outcome::Good);
    assert_eq!(&d[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
    // READ RESERVATION: A's key, type 1.
    let (_, d) = r.run(&r.b, &[0x5E, 1, 0, 0, 0, 0, 0, 1, 0, 0], &[]);
    assert_eq!(&d[8..16], &0xAAu64.to_be_bytes());
    assert_eq!(d[21], 0x01);
    // B preempts A: A's registration and the reservation go to B.
    let (c, p) = prout(0x04, 0x03, 0xBB, 0xAA, false);
    assert_eq!(r.run(&r.b, &c, &p).0, Outcome::Good);
    assert_eq!(r.run(&r.a, &read10(0), &[]).0, Outcome::Conflict);
    let (_, d) = r.run(&r.b, &[0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[]);
    assert_eq!(&d[4..8], &8u32.to_be_bytes());
    // CLEAR drops everything.
    let (c, p) = prout(0x03, 0, 0xBB, 0, false);
    assert_eq!(r.run(&r.b, &c, &p).0, Outcome::Good);
    assert!(matches!(
        r.run(&r.a, &read10(0), &[]).0,
        Outcome::Read { .. }
    ));
    // APTPL on memory is refused.
    let (c, p) = prout(0x06, 0, 0, 0xCC, true);
    assert!(
        matches!(r.run(&r.a, &c, &p).0, Outcome::Check(s) if s.key == SenseKey::IllegalRequest)
    );
}

#[test]
fn aptpl_survives_a_restart_beside_a_file() {
    let dir = std::env::temp_dir().join(format!("bootlun-pr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let spec = img.to_str().unwrap().to_string();
    {
        let r = rig_on(&spec);
        let (c, p) = prout(0x06, 0, 0, 0x1234, true);
        assert_eq!(r.run(&r.a, &c, &p).0, Outcome::Good);
        let (c, p) = prout(0x01, 0x03, 0x1234, 0, true);
        assert_eq!(r.run(&r.a, &c, &p).0, Outcome::Good);
    }
    assert!(dir.join(".disk.img.bootlun-pr").exists());
    // A new LU on the same file: the reservation is back.
    let r = rig_on(&spec);
    assert_eq!(r.run(&r.b, &read10(0), &[]).0, Outcome::Conflict);
    let (_, d) = r.run(&r.b, &[0x5E, 2, 0, 0, 0, 0, 0, 0, 8, 0], &[]);
    assert_eq!(d[2] & 0x01, 1, "PTPL_C");
    assert_eq!(d[3] & 0x01, 1, "PTPL_A");
    // Unregistering with APTPL 0 removes the file.
    let (c, p) = prout(0x00, 0, 0x1234, 0, false);
    assert_eq!(r.run(&r.a, &c, &p).0, Outcome::Good);
    assert!(!dir.join(".disk.img.bootlun-pr").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn spc2_reserve_and_nexus_loss() {
    let r = rig_on("ram:1M");
    assert_eq!(r.run(&r.a, &[0x16, 0, 0, 0, 0, 0], &[]).0, Outcome::Good);
    assert_eq!(
        r.run(&r.b, &[0x16, 0, 0, 0, 0, 0], &[]).0,
        Outcome::Conflict
    );
    assert_eq!(
        r.run(&r.b, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).0,
        Outcome::Conflict
    );
    // RELEASE from the other nexus is a no-op.
    assert_eq!(r.run(&r.b, &[0x17, 0, 0, 0, 0, 0], &[]).0, Outcome::Good);
    assert_eq!(r.run(&r.b, &read10(0), &[]).0, Outcome::Conflict);
    r.lu.state.nexus_lost(&r.a);
    assert_eq!(r.run(&r.b, &[0x16, 0, 0, 0, 0, 0], &[]).0, Outcome::Good);
    r.lu.state.reset();
    assert!(matches!(
        r.run(&r.a, &read10(0), &[]).0,
        Outcome::Read { .. }
    ));
    let _ = Status::ReservationConflict;
}

#[test]
fn unmap_deallocates_and_get_lba_status_reports_it() {
    let r = rig_on("ram:1M");
    r.backend
        .write_at(&vec![0xA5; 64 * 1024], 0, false)
        .unwrap();
    // GET LBA STATUS at 0: mapped.
    let gls = |lba: u64| {
        let mut c = [0u8; 16];
        c[0] = 0x9E;
        c[1] = 0x12;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[13] = 64;
        r.run(&r.a, &c, &[]).1
    };
    let d = gls(0);
    assert_eq!(d[20], 0, "mapped");
    // UNMAP blocks 8..24 (one 4 KiB page-aligned 8 KiB range).
    let mut p = vec![0u8; 24];
    p[1] = 22;
    p[3] = 16;
    p[8..16].copy_from_slice(&8u64.to_be_bytes());
    p[16..20].copy_from_slice(&16u32.to_be_bytes());
    let (o, _) = r.run(&r.a, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p);
    assert_eq!(o, Outcome::Good);
    assert!(r.read(8, 16).iter().all(|&b| b == 0));
    assert!(r.read(0, 8).iter().all(|&b| b == 0xA5));
    let d = gls(8);
    assert_eq!(&d[8..16], &8u64.to_be_bytes());
    assert_eq!(&d[16..20], &16u32.to_be_bytes());
    assert_eq!(d[20], 1, "deallocated");
    // Out of range descriptors are refused before anything is freed.
    p[8..16].copy_from_slice(&2040u64.to_be_bytes());
    let (o, _) = r.run(&r.a, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p);
    assert_eq!(o, Outcome::Check(Sense::lba_out_of_range()));
}

#[test]
fn write_same_fills_and_unmaps() {
    let r = rig_on("ram:4M");
    let block = vec![0x5Au8; 512];
    // WRITE SAME(16) of 4000 blocks (several steps of the job).
    let mut c = [0u8; 16];
    c[0] = 0x93;
    c[2..10].copy_from_slice(&100u64.to_be_bytes());
    c[10..14].copy_from_slice(&4000u32.to_be_bytes());
    assert_eq!(r.run(&r.a, &c, &block).0, Outcome::Good);
    assert!(r.read(100, 4000).iter().all(|&b| b == 0x5A));
    assert!(r.read(99, 1).iter().all(|&b| b == 0));
    // With UNMAP: deallocated, reads zeros.
    c[1] = 0x08;
    assert_eq!(r.run(&r.a, &c, &block).0, Outcome::Good);
    assert!(r.read(100, 4000).iter().all(|&b| b == 0));
    // The Data-Out must be exactly one block.
    let o = r.run(&r.a, &c, &[0u8; 256]).0;
    assert_eq!(o, Outcome::Check(Sense::invalid_field_in_cdb()));
}

#[test]
fn compare_and_write_swaps_only_on_match() {
    let r = rig_on("ram:1M");
    r.backend.write_at(&[1u8; 512], 512 * 10, false).unwrap();
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&10u64.to_be_bytes());
    c[13] = 1;
    let mut data = vec![1u8; 512];
    data.extend_from_slice(&[2u8; 512]);
    assert_eq!(r.run(&r.a, &c, &data).0, Outcome::Good);
    assert!(r.read(10, 1).iter().all(|&b| b == 2));
    // Now the medium holds 2s: comparing with 1s miscompares at byte 0.
    let (o, _) = r.run(&r.a, &c, &data);
    assert_eq!(o, Outcome::Check(Sense::miscompare(0)));
    assert!(r.read(10, 1).iter().all(|&b| b == 2));
}

#[test]
fn extended_copy_copies_blocks_and_reports() {
    let r = rig_on("ram:1M");
    let src: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
    r.backend.write_at(&src, 0, false).unwrap();
    let mut naa = Vec::new();
    crate::scsi::vpd::vpd_page(0x83, &r.lu, &mut naa).unwrap();
    // Parameter list: header, one identification target descriptor with
    // the LU's NAA designator, one block-to-block segment.
    let mut p = vec![0u8; 16];
    p[0] = 7; // LIST IDENTIFIER
    p[3] = 32;
    p[11] = 28;
    let mut t = vec![0u8; 32];
    t[0] = 0xE4;
    t[4..8].copy_from_slice(&naa[4..8]);
    t[8..24].copy_from_slice(&naa[8..24]);
    t[29..32].copy_from_slice(&[0, 2, 0]);
    p.extend_from_slice(&t);
    let mut s = vec![0u8; 28];
    s[0] = 0x02;
    s[3] = 0x18;
    s[10..12].copy_from_slice(&16u16.to_be_bytes());
    s[12..20].copy_from_slice(&0u64.to_be_bytes());
    s[20..28].copy_from_slice(&100u64.to_be_bytes());
    p.extend_from_slice(&s);
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(p.len() as u32).to_be_bytes());
    assert_eq!(r.run(&r.a, &c, &p).0, Outcome::Good);
    assert_eq!(r.read(100, 16), src);
    // COPY STATUS for list 7 from the same nexus: done, 16 blocks.
    let rcr = [0x84, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
    let (o, d) = r.run(&r.a, &rcr, &[]);
    assert_eq!(o, Outcome::Good);
    assert_eq!(d[4], 1);
    assert_eq!(&d[8..12], &16u32.to_be_bytes());
    // Another nexus has no copy with that list identifier.
    assert!(matches!(r.run(&r.b, &rcr, &[]).0, Outcome::Check(_)));
}

#[test]
fn mode_select_swp_write_protects() {
    let r = rig_on("ram:1M");
    // Both nexuses are known to the LU before the change (the transport
    // does this on their first command).
    r.lu.state.nexus_seen(&r.a);
    r.lu.state.nexus_seen(&r.b);
    // MODE SENSE(6) of the Control page, then set SWP and select it back.
    let (_, d) = r.run(&r.a, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]);
    let mut list = d.clone();
    list[0] = 0;
    list[2] = 0;
    list[4 + 4] |= 0x08;
    let len = list.len() as u8;
    assert_eq!(
        r.run(&r.a, &[0x15, 0x10, 0, 0, len, 0], &list).0,
        Outcome::Good
    );
    // The other nexus hears that mode parameters changed (SPC-4: unit
    // attention 2Ah/01h) on its next command; the sender does not.
    assert_eq!(
        r.lu.state.take_ua(&r.b, 0x2A),
        Some(crate::scsi::state::ua::MODE_PARAMETERS_CHANGED)
    );
    assert_eq!(r.lu.state.take_ua(&r.a, 0x2A), None);
    assert_eq!(
        r.run(&r.b, &write10(0), &[]).0,
        Outcome::Check(Sense::write_protected())
    );
    let (_, d) = r.run(&r.b, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]);
    assert_eq!(d[2] & 0x80, 0x80, "WP");
    // Changing a bit that is not changeable is refused.
    list[4 + 2] ^= 0x04;
    assert!(matches!(
        r.run(&r.a, &[0x15, 0x10, 0, 0, len, 0], &list).0,
        Outcome::Check(s) if s.asc == 0x26
    ));
    r.lu.state.reset();
    assert!(matches!(
        r.run(&r.b, &write10(0), &[]).0,
        Outcome::Write { .. }
    ));
}

#[test]
fn sanitize_overwrite_writes_the_pattern_everywhere() {
    let r = rig_on("ram:1M");
    let mut p = vec![0x01, 0, 0, 2];
    p.extend_from_slice(&[0xDE, 0xAD]);
    let c = [0x48, 0x01, 0, 0, 0, 0, 0, 0, 6, 0];
    assert_eq!(r.run(&r.a, &c, &p).0, Outcome::Good);
    let all = r.read(0, 2048);
    assert!(all.chunks(2).all(|w| w == [0xDE, 0xAD]));
    // BLOCK ERASE: zeros again.
    assert_eq!(
        r.run(&r.a, &[0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], &[]).0,
        Outcome::Good
    );
    assert!(r.read(0, 2048).iter().all(|&b| b == 0));
}

#[test]
fn sanitize_runs_in_the_background_and_fences_the_lu() {
    let r = rig_on("ram:4M");
    // 1 MiB/s: the 4 MiB overwrite lasts about 4 s, long enough to look
    // at the LU while it runs; the test waits for the end by polling the
    // state, never by sleeping a guessed time.
    r.lu.state.set_sanitize_rate(1 << 20);
    let mut p = vec![0x01, 0, 0, 1];
    p.push(0x5A);
    let c = [0x48, 0x81, 0, 0, 0, 0, 0, 0, 5, 0]; // IMMED
    let ctx = r.ctx(&r.a, 5);
    let mut out = Vec::new();
    assert!(matches!(
        execute(&c, &ctx, &mut out),
        Outcome::DataOut { len: 5 }
    ));
    let Outcome::Job(job) = execute_with_data(&c, &ctx, &p, &mut out) else {
        panic!("SANITIZE OVERWRITE is a job");
    };
    assert_eq!(job.background(), Some(true));
    crate::scsi::sanitize::start(&r.lu.state, r.backend.clone(), *job).unwrap();
    let not_ready = |o: Outcome| match o {
        Outcome::Check(s) => s.code() == (SenseKey::NotReady, 0x04, 0x1B) && s.progress.is_some(),
        _ => false,
    };
    // TEST UNIT READY, READ and another SANITIZE: NOT READY, SANITIZE IN
    // PROGRESS, from either nexus.
    assert!(not_ready(r.run(&r.a, &[0, 0, 0, 0, 0, 0], &[]).0));
    assert!(not_ready(
        r.run(&r.b, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]).0
    ));
    assert!(not_ready(
        r.run(&r.b, &[0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], &[]).0
    ));
    // INQUIRY and REQUEST SENSE still answer; REQUEST SENSE says why the
    // LU is not ready, with the progress indication (SKSV set).
    assert_eq!(r.run(&r.b, &[0x12, 0, 0, 0, 36, 0], &[]).0, Outcome::Good);
    let (o, d) = r.run(&r.b, &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!(o, Outcome::Good);
    assert_eq!((d[2], d[12], d[13]), (0x02, 0x04, 0x1B));
    assert_eq!(d[15] & 0x80, 0x80);
    // A SANITIZE without IMMED waits with this job; it ends GOOD with the
    // operation.
    let mut wait = crate::scsi::Job::wait_sanitize(r.lu.state.clone());
    assert!(wait.delay() > std::time::Duration::ZERO);
    let end = loop {
        if let Some(o) = wait.step(&*r.backend) {
            break o;
        }
        std::thread::park_timeout(wait.delay());
    };
    assert_eq!(end, Outcome::Good);
    assert!(r.read(0, 8192).iter().all(|&b| b == 0x5A));
    assert_eq!(r.run(&r.a, &[0, 0, 0, 0, 0, 0], &[]).0, Outcome::Good);
}

#[test]
fn reservation_changes_raise_unit_attentions_for_the_others() {
    use crate::scsi::state::ua;
    let r = rig_on("ram:1M");
    let c = nexus("c");
    for n in [&r.a, &r.b, &c] {
        r.lu.state.nexus_seen(n);
    }
    let run = |who: &Nexus, (cdb, p): ([u8; 10], Vec<u8>)| r.run(who, &cdb, &p).0;
    assert_eq!(run(&r.a, prout(0, 0, 0, 0xA, false)), Outcome::Good);
    assert_eq!(run(&r.b, prout(0, 0, 0, 0xB, false)), Outcome::Good);
    assert_eq!(run(&c, prout(0, 0, 0, 0xC, false)), Outcome::Good);
    // Write Exclusive, Registrants Only, released by its holder: the other
    // registrants are told; the releaser is not.
    assert_eq!(run(&r.a, prout(1, 5, 0xA, 0, false)), Outcome::Good);
    assert_eq!(run(&r.a, prout(2, 5, 0xA, 0, false)), Outcome::Good);
    assert_eq!(r.lu.state.take_ua(&r.b, 0), Some(ua::RESERVATIONS_RELEASED));
    assert_eq!(r.lu.state.take_ua(&c, 0), Some(ua::RESERVATIONS_RELEASED));
    assert_eq!(r.lu.state.take_ua(&r.a, 0), None);
    // B preempts A's registration: A hears REGISTRATIONS PREEMPTED, C
    // nothing (no reservation changed).
    assert_eq!(run(&r.b, prout(4, 1, 0xB, 0xA, false)), Outcome::Good);
    assert_eq!(
        r.lu.state.take_ua(&r.a, 0),
        Some(ua::REGISTRATIONS_PREEMPTED)
    );
    assert_eq!(r.lu.state.take_ua(&c, 0), None);
    assert_eq!(r.lu.state.take_ua(&r.b, 0), None);
    // CLEAR by C: every other registrant's reservation is preempted.
    assert_eq!(run(&c, prout(3, 0, 0xC, 0, false)), Outcome::Good);
    assert_eq!(
        r.lu.state.take_ua(&r.b, 0),
        Some(ua::RESERVATIONS_PREEMPTED)
    );
    assert_eq!(r.lu.state.take_ua(&c, 0), None);
    assert_eq!(
        r.lu.state.take_ua(&r.a, 0),
        None,
        "A was no longer registered"
    );
}
