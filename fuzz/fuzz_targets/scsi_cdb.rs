//! Feeds arbitrary CDB bytes to `scsi::execute` with an arbitrary logical
//! unit and command context, and checks the `Outcome` invariants:
//! medium commands stay within capacity, never move zero blocks, never
//! exceed the maximum transfer length, never write a read-only unit;
//! Data-In never exceeds the allocation length; CHECK CONDITION carries
//! no Data-In.
#![no_main]

use arbitrary::Arbitrary;
use bootlun_frontends::scsi::{execute, CommandCtx, LuInfo, Outcome};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    block_shift: u8,
    num_blocks: u64,
    /// Use a small capacity so in-range commands are easy to reach.
    small: bool,
    read_only: bool,
    write_cache: bool,
    rotational: bool,
    ident: [u8; 16],
    max_transfer_blocks: u32,
    optimal_transfer_blocks: u32,
    present: bool,
    lun: u64,
    luns: Vec<u64>,
    expected_len: u32,
    cdb: Vec<u8>,
}

/// ALLOCATION LENGTH of the commands that return parameter data.
fn allocation_length(cdb: &[u8]) -> Option<usize> {
    let b = |i: usize| usize::from(cdb.get(i).copied().unwrap_or(0));
    let be = |i: usize, n: usize| (i..i + n).fold(0usize, |a, k| (a << 8) | b(k));
    Some(match *cdb.first()? {
        0x12 => be(3, 2),        // INQUIRY
        0x03 | 0x1a => b(4),     // REQUEST SENSE, MODE SENSE(6)
        0x5a => be(7, 2),        // MODE SENSE(10)
        0xa0 | 0xa3 => be(6, 4), // REPORT LUNS, MAINTENANCE IN
        0x9e => be(10, 4),       // SERVICE ACTION IN(16)
        0x5e | 0x37 => be(7, 2), // PERSISTENT RESERVE IN, READ DEFECT DATA(10)
        0xb7 => be(6, 4),        // READ DEFECT DATA(12)
        0x84 => be(10, 4),       // RECEIVE COPY RESULTS
        0x25 => 8,               // READ CAPACITY(10)
        _ => 0,                  // everything else returns no parameter data
    })
}

fuzz_target!(|input: Input| {
    let block_size = 512u32 << (input.block_shift % 4);
    let num_blocks = if input.small { input.num_blocks % 4096 } else { input.num_blocks };
    let lu = LuInfo {
        block_size,
        num_blocks,
        read_only: input.read_only,
        write_cache: input.write_cache,
        ident: input.ident,
        vendor: "BOOTLUN",
        product: "bootlun disk",
        revision: "0001",
        max_transfer_blocks: input.max_transfer_blocks,
        optimal_transfer_blocks: input.optimal_transfer_blocks,
        rotational: input.rotational,
        state: Default::default(),
    };
    let luns: Vec<u64> = input.luns.iter().copied().take(1024).collect();
    let ctx = CommandCtx {
        lun: input.lun,
        lu: input.present.then_some(&lu),
        luns: &luns,
        expected_len: input.expected_len,
        nexus: None,
        backend: None,
    };
    let mut out = vec![0xee; 7];
    let o = execute(&input.cdb, &ctx, &mut out);
    match o {
        Outcome::Read { lba, blocks, .. }
        | Outcome::Write { lba, blocks, .. }
        | Outcome::WriteAtomic { lba, blocks, .. }
        | Outcome::Verify { lba, blocks, .. } => {
            assert!(input.present, "medium command on a missing LU: {o:?}");
            assert!(blocks > 0, "zero-block medium command: {o:?}");
            assert!(
                u128::from(lba) + u128::from(blocks) <= u128::from(num_blocks),
                "{o:?} beyond {num_blocks} blocks"
            );
            // MAXIMUM TRANSFER LENGTH bounds the data a command moves; a
            // VERIFY with BYTCHK 0 moves none.
            let moves_data = !matches!(o, Outcome::Verify { bytchk: false, .. });
            if lu.max_transfer_blocks != 0 && moves_data {
                assert!(blocks <= lu.max_transfer_blocks, "{o:?} above MAXIMUM TRANSFER LENGTH");
            }
            assert!(out.is_empty(), "medium command left Data-In bytes");
            if matches!(o, Outcome::Write { .. } | Outcome::WriteAtomic { .. }) {
                assert!(!lu.read_only, "write to a read-only LU");
            }
        }
        Outcome::Check(ref sense) => {
            assert!(out.is_empty(), "CHECK CONDITION with Data-In");
            let f = sense.fixed();
            assert_eq!(f[0] & 0x7f, 0x70);
            let _ = sense.descriptor();
        }
        Outcome::Flush => assert!(input.present && out.is_empty()),
        // Reservations are per nexus; this target has no other nexus.
        Outcome::Conflict => assert!(out.is_empty()),
        // Parameter data to come, or a stepped job (WRITE SAME, UNMAP,
        // SANITIZE, EXTENDED COPY): only on a present LU, with no Data-In.
        Outcome::DataOut { .. } | Outcome::Job(_) => assert!(input.present && out.is_empty()),
        Outcome::Good => {
            if let Some(alloc) = allocation_length(&input.cdb) {
                assert!(out.len() <= alloc, "Data-In {} > allocation length {alloc}", out.len());
            }
            assert!(out.len() <= 65536 + 4096);
        }
    }
});
