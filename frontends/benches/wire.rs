//! Micro-benchmarks of the per-PDU hot path: BHS parse and emit, CRC32C
//! digests at a typical and a large data segment, and CDB decode.
//!
//! `cargo bench -p bootlun-frontends --bench wire`

use bootlun_frontends::iscsi::wire::{
    build_data_in, build_scsi_response, Bhs, Residual, ScsiCommand, Sn, BHS_LEN,
};
use bootlun_frontends::scsi::cdb::{rw10, rw16, Cdb};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// A SCSI Command PDU header carrying READ(16) of 8 blocks at LBA 4096.
fn read16_bhs() -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    b[0] = 0x01; // SCSI Command
    b[1] = 0x80 | 0x40 | 0x01; // final, read, simple task
    b[8..16].copy_from_slice(&0u64.to_be_bytes());
    b[16..20].copy_from_slice(&0x1234u32.to_be_bytes()); // ITT
    b[20..24].copy_from_slice(&4096u32.to_be_bytes()); // expected length
    b[24..28].copy_from_slice(&7u32.to_be_bytes()); // CmdSN
    b[28..32].copy_from_slice(&3u32.to_be_bytes()); // ExpStatSN
    b[32] = 0x88; // READ(16)
    b[34..42].copy_from_slice(&4096u64.to_be_bytes());
    b[42..46].copy_from_slice(&8u32.to_be_bytes());
    b
}

fn bhs(c: &mut Criterion) {
    let raw = read16_bhs();
    c.bench_function("bhs/parse_scsi_command", |b| {
        b.iter(|| {
            let h = Bhs::parse(black_box(&raw[..])).ok()?;
            let cmd = ScsiCommand::new(h)?;
            Some((
                cmd.read(),
                cmd.expected_len(),
                cmd.cmd_sn(),
                h.itt(),
                h.lun(),
                cmd.cdb()[0],
            ))
        })
    });
    let sn = Sn {
        stat_sn: 10,
        exp_cmd_sn: 11,
        max_cmd_sn: 138,
    };
    c.bench_function("bhs/emit_data_in_with_status", |b| {
        let mut out = [0u8; BHS_LEN];
        b.iter(|| {
            build_data_in(
                &mut out,
                black_box(0x1234),
                0,
                black_box(3),
                131072,
                65536,
                true,
                Some((0, Residual::None)),
                sn,
            );
            out[0]
        })
    });
    c.bench_function("bhs/emit_scsi_response", |b| {
        let mut out = [0u8; BHS_LEN];
        b.iter(|| {
            build_scsi_response(
                &mut out,
                black_box(0x1234),
                0,
                Residual::Underflow(512),
                0,
                0,
                sn,
            );
            out[0]
        })
    });
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [8usize << 10, 256 << 10] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| {
            b.iter(|| crc32c::crc32c(black_box(d)))
        });
    }
    g.finish();
}

fn cdb(c: &mut Criterion) {
    let raw = read16_bhs();
    let mut r10 = [0u8; 10];
    r10[0] = 0x28; // READ(10)
    r10[2..6].copy_from_slice(&4096u32.to_be_bytes());
    r10[7..9].copy_from_slice(&8u16.to_be_bytes());
    c.bench_function("cdb/decode_read16", |b| {
        b.iter(|| {
            let cdb = Cdb::parse(black_box(&raw[32..48])).ok()?;
            let f = rw16(&cdb);
            Some((cdb.opcode(), f))
        })
    });
    c.bench_function("cdb/decode_read10", |b| {
        b.iter(|| {
            let cdb = Cdb::parse(black_box(&r10[..])).ok()?;
            let f = rw10(&cdb);
            Some((cdb.opcode(), f))
        })
    });
}

criterion_group!(benches, bhs, crc, cdb);
criterion_main!(benches);
