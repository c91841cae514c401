//! Acceptance: `iscsi-ls -s` lists the target IQN and every LUN with its size.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn iscsi_ls_lists_target_and_every_lun_with_its_size() {
    if !require_tool("iscsi-ls", "libiscsi-bin") {
        return;
    }
    let dir = TempDir::new("iscsi-ls");
    let file_lun = dir.join("disk.img");
    let file_size = 16u64 << 20;
    sparse_file(&file_lun, file_size);
    let file_spec = file_lun.to_string_lossy().into_owned();

    let luns: [(&str, u64); 3] = [("ram:64M", 64 << 20), ("null:1G", 1 << 30), (&file_spec, file_size)];
    let specs: Vec<&str> = luns.iter().map(|(s, _)| *s).collect();
    let server = Server::start(&specs, &[]);

    let out = run_tool(
        Command::new("iscsi-ls").args(["-s", &server.portal_url()]),
        Duration::from_secs(60),
    );
    out.assert_success();
    println!("{}", out.stdout);
    let (targets, found) = parse_iscsi_ls(&out.stdout);
    assert!(
        targets.iter().any(|t| t == &server.iqn),
        "target {} not listed by iscsi-ls:\n{}",
        server.iqn,
        out.stdout
    );
    for (i, (spec, size)) in luns.iter().enumerate() {
        let lun = server.lun(i as u32);
        let (ty, printed) = found
            .get(&lun)
            .unwrap_or_else(|| panic!("LUN {lun} ({spec}) missing from iscsi-ls output:\n{}", out.stdout));
        assert_eq!(ty, "DIRECT_ACCESS", "LUN {lun} ({spec}) has type {ty}:\n{}", out.stdout);
        // iscsi-ls prints last-LBA × block size, truncated; accept 512-byte
        // or 4096-byte blocks.
        let expected: Vec<String> = [512, 4096].iter().map(|bs| iscsi_ls_size(*size, *bs)).collect();
        let printed = printed.clone().unwrap_or_default();
        assert!(
            expected.contains(&printed),
            "LUN {lun} ({spec}): iscsi-ls printed size {printed:?}, expected one of {expected:?}:\n{}",
            out.stdout
        );
    }
    if server.kind == TargetKind::Bootlun {
        let disks = found.values().filter(|(t, _)| t == "DIRECT_ACCESS").count();
        assert_eq!(disks, luns.len(), "unexpected number of disk LUNs:\n{}", out.stdout);
    }
}
