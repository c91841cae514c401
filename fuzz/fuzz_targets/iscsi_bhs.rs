//! Feeds arbitrary bytes to `Bhs::parse` and every typed view accessor.
//! Short input must be refused, never panic; every accessor of a parsed
//! header must be total.
#![no_main]

use bootlun_frontends::iscsi::wire::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = Bhs::parse(data) else {
        assert!(data.len() < BHS_LEN);
        return;
    };
    assert!(data.len() >= BHS_LEN);
    assert_eq!(&h.bytes()[..], &data[..BHS_LEN]);
    let _ = format!("{h:?}");
    let op = h.opcode();
    assert_eq!(Opcode::from_u8(op.as_u8()), op);
    let _ = (h.immediate(), h.final_bit(), h.flags(), h.lun_raw(), h.itt());
    assert_eq!(h.ahs_len() % 4, 0);
    assert!(h.data_segment_len() <= 0xff_ffff);
    let lun = h.lun();
    if lun != u64::MAX {
        assert!(lun < 1 << 14);
    }
    for off in 0..=BHS_LEN - 4 {
        let _ = h.u32_at(off);
    }
    for off in 0..=BHS_LEN - 2 {
        let _ = h.u16_at(off);
    }
    let _ = pad_len(h.data_segment_len());
    assert_eq!((h.data_segment_len() + pad_len(h.data_segment_len())) % 4, 0);

    if let Some(c) = ScsiCommand::new(h) {
        let _ = (c.read(), c.write(), c.attr(), c.expected_len(), c.cmd_sn(), c.exp_stat_sn());
        assert_eq!(&c.cdb()[..], &data[32..48]);
    }
    if let Some(d) = DataOut::new(h) {
        let _ = (d.ttt(), d.data_sn(), d.buffer_offset());
    }
    if let Some(l) = LoginRequest::new(h) {
        let _ = (l.transit(), l.cont(), l.version_max(), l.version_min());
        let _ = (l.isid(), l.tsih(), l.cid(), l.cmd_sn(), l.exp_stat_sn());
        assert!(l.csg() <= 3 && l.nsg() <= 3);
    }
    if let Some(t) = TextRequest::new(h) {
        let _ = (t.cont(), t.ttt(), t.cmd_sn());
    }
    if let Some(n) = NopOut::new(h) {
        let _ = (n.ttt(), n.cmd_sn());
    }
    if let Some(l) = LogoutRequest::new(h) {
        assert!(l.reason() < 0x80);
        let _ = l.cmd_sn();
    }
    if let Some(t) = TaskMgmtRequest::new(h) {
        let _ = (t.function(), t.referenced_task_tag(), t.cmd_sn(), t.ref_cmd_sn());
    }

    // LUN encoding round-trips for every number the decoder can produce.
    if lun != u64::MAX {
        assert_eq!(decode_lun(encode_lun(lun)), lun);
    }
    // Serial-number helpers are total and consistent.
    let (a, b) = (h.u32_at(24), h.u32_at(28));
    assert!(!(sn_lt(a, b) && sn_lt(b, a)));
    assert!(sn_in_window(a, a, a));
});
