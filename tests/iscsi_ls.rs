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

    let luns: [(&str, u64); 3] = [
        ("ram:64M", 64 << 20),
        ("null:1G", 1 << 30),
        (&file_spec, file_size),
    ];
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
        let (ty, printed) = found.get(&lun).unwrap_or_else(|| {
            panic!(
                "LUN {lun} ({spec}) missing from iscsi-ls output:\n{}",
                out.stdout
            )
        });
        assert_eq!(
            ty, "DIRECT_ACCESS",
            "LUN {lun} ({spec}) has type {ty}:\n{}",
            out.stdout
        );
        // iscsi-ls prints last-LBA × block size, truncated; accept 512-byte
        // or 4096-byte blocks.
        let expected: Vec<String> = [512, 4096]
            .iter()
            .map(|bs| iscsi_ls_size(*size, *bs))
            .collect();
        let printed = printed.clone().unwrap_or_default();
        assert!(
            expected.contains(&printed),
            "LUN {lun} ({spec}): iscsi-ls printed size {printed:?}, expected one of {expected:?}:\n{}",
            out.stdout
        );
    }
    if server.kind == TargetKind::Bootlun {
        let disks = found.values().filter(|(t, _)| t == "DIRECT_ACCESS").count();
        assert_eq!(
            disks,
            luns.len(),
            "unexpected number of disk LUNs:\n{}",
            out.stdout
        );
    }
}

#[test]
fn iscsi_ls_output_parsing() {
    // Real `iscsi-ls -s` output (tgt: 64M, 1G, 1M, 4G, 2T and 100K files).
    let out = "Target:iqn.2026-11.org.bootlun:target Portal:127.0.0.1:3299,1\n\
Lun:0    Type:STORAGE_ARRAY_CONTROLLER\n\
Lun:1    Type:DIRECT_ACCESS (Size:63M)\n\
Lun:2    Type:DIRECT_ACCESS (Size:1023M)\n\
Lun:3    Type:DIRECT_ACCESS (Size:1023k)\n\
Lun:5    Type:DIRECT_ACCESS (Size:3G)\n\
Lun:6    Type:DIRECT_ACCESS (Size:1T)\n\
Lun:7    Type:DIRECT_ACCESS (Size:99k)\n";
    let (targets, luns) = parse_iscsi_ls(out);
    assert_eq!(targets, vec!["iqn.2026-11.org.bootlun:target".to_string()]);
    assert_eq!(luns[&0], ("STORAGE_ARRAY_CONTROLLER".to_string(), None));
    for (lun, size) in [
        (1, 64u64 << 20),
        (2, 1 << 30),
        (3, 1 << 20),
        (5, 4 << 30),
        (6, 2 << 40),
        (7, 100 << 10),
    ] {
        assert_eq!(
            luns[&lun].1.as_deref(),
            Some(iscsi_ls_size(size, 512).as_str()),
            "LUN {lun}"
        );
    }
}

#[test]
fn listening_line_parsing() {
    let l = "2026-11-22T03:07:34.630080Z  INFO bootlun::cli: listening on 127.0.0.1:41235";
    assert_eq!(
        parse_listening_line(l),
        Some("127.0.0.1:41235".parse().unwrap())
    );
    assert_eq!(
        parse_listening_line("listening on [::1]:3260."),
        Some("[::1]:3260".parse().unwrap())
    );
    assert_eq!(
        parse_listening_line("listening on 127.0.0.1:3260, 2 reactors"),
        Some("127.0.0.1:3260".parse().unwrap())
    );
    assert_eq!(parse_listening_line("bound 127.0.0.1:3260"), None);
}
