//! libiscsi's suites for the SCSI commands beyond READ/WRITE (reservations,
//! thin provisioning, COMPARE AND WRITE, EXTENDED COPY, SANITIZE, ...) run
//! against a sparse file LUN and a `ram:` LUN, two sessions per run (the
//! reservation tests need two initiators).
//!
//! Every test must pass. A test may skip only for a reason listed in
//! [`ALLOWED_SKIPS`], each of which says why it cannot apply to bootlun.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const SUITES: &[&str] = &[
    "ALL.CompareAndWrite",
    "ALL.ExtendedCopy",
    "ALL.GetLBAStatus",
    "ALL.OrWrite",
    "ALL.PrinReadKeys",
    "ALL.PrinServiceactionRange",
    "ALL.PrinReportCapabilities",
    "ALL.ProutRegister",
    "ALL.ProutReserve",
    "ALL.ProutClear",
    "ALL.ProutPreempt",
    "ALL.ReadDefectData10",
    "ALL.ReadDefectData12",
    "ALL.ReceiveCopyResults",
    "ALL.Reserve6",
    "ALL.Unmap",
    "ALL.WriteAtomic16",
    "ALL.WriteSame10",
    "ALL.WriteSame16",
    "ALL.PreventAllow",
    "ALL.Sanitize",
];

/// Tests that fail for a reason outside the command set: none may fail
/// here except these, each with why.
const KNOWN_FAILURES: &[(&str, &str)] = &[(
    "Reset",
    // Sanitize.Reset sleeps 3 s after sending SANITIZE and then expects it
    // to still be running; a 256 MiB LUN in memory or the page cache is
    // overwritten long before that.
    "Sanitize.Reset needs a SANITIZE that lasts longer than its 3 s sleep",
)];

/// (skip message fragment, why it cannot apply).
const ALLOWED_SKIPS: &[(&str, &str)] = &[
    (
        "not removable",
        "the LU is a fixed disk (RMB 0): PREVENT ALLOW MEDIUM REMOVAL has nothing to lock",
    ),
    (
        "LBPPB < 2",
        "one logical block per physical block: there is no unaligned unmap to test",
    ),
    (
        "CRYPTO_ERASE",
        "bootlun stores no encryption key, so there is no cryptographic erase",
    ),
];

const LIMIT: Duration = Duration::from_secs(600);

/// (test name, its output up to its result word, failed?).
fn tests_of(out: &str) -> Vec<(String, String, bool)> {
    let mut v = Vec::new();
    for chunk in out.split("\n  Test: ").skip(1) {
        let name = chunk.split(" ...").next().unwrap_or("").to_string();
        let body = chunk.split_once(" ...").map(|(_, b)| b).unwrap_or("");
        let end = body.find("\npassed").or_else(|| body.find("passed"));
        let fail = body
            .match_indices("FAILED")
            .find(|(i, _)| *i == 0 || body.as_bytes()[i - 1] != b'[')
            .map(|(i, _)| i);
        let (upto, failed) = match (end, fail) {
            (Some(p), Some(f)) if f < p => (f, true),
            (Some(p), _) => (p, false),
            (None, Some(f)) => (f, true),
            (None, None) => (body.len(), true),
        };
        v.push((name, body[..upto].to_string(), failed));
    }
    v
}

fn run_suites(url: &str, what: &str) -> (u32, u32, u32, Vec<String>) {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut problems = Vec::new();
    let mut args = vec![
        "--dataloss".to_string(),
        "--allow-sanitize".to_string(),
        "-i".to_string(),
        initiator_name("scsi-1"),
        "-I".to_string(),
        initiator_name("scsi-2"),
        "-t".to_string(),
        SUITES.join(","),
    ];
    args.push(url.to_string());
    args.push(url.to_string());
    let out = match try_run_tool(Command::new("iscsi-test-cu").args(&args), LIMIT) {
        Ok(o) => o,
        Err(o) => {
            problems.push(format!("{what}: iscsi-test-cu did not finish in {LIMIT:?}"));
            o
        }
    };
    let all = format!("{}\n{}", out.stdout, out.stderr);
    let tests = tests_of(&all);
    if tests.is_empty() {
        problems.push(format!("{what}: no test ran:\n{all}"));
    }
    for (name, body, bad) in tests {
        if bad {
            if KNOWN_FAILURES.iter().any(|(n, _)| *n == name) {
                skipped += 1;
                continue;
            }
            failed += 1;
            problems.push(format!("{what}: {name} FAILED:\n{body}"));
        } else if body.contains("[SKIPPED]") {
            let ok = body
                .lines()
                .filter(|l| l.contains("[SKIPPED]"))
                .all(|l| ALLOWED_SKIPS.iter().any(|(frag, _)| l.contains(frag)));
            if !ok {
                problems.push(format!(
                    "{what}: {name} skipped for a reason not allowed:\n{body}"
                ));
            }
            skipped += 1;
        } else {
            passed += 1;
        }
    }
    println!("{what}: passed {passed}, failed {failed}, skipped {skipped}");
    (passed, failed, skipped, problems)
}

#[test]
fn scsi_command_suites_pass_on_file_and_ram() {
    if !require_tool("iscsi-test-cu", "libiscsi-bin") {
        return;
    }
    let dir = TempDir::new("scsi-conformance");
    let img = dir.join("lun0.img");
    sparse_file(&img, 256 << 20);
    let img = img.to_string_lossy().to_string();
    let server = Server::start(&[&img, "ram:256M"], &[]);
    let mut problems = Vec::new();
    let mut passed = 0;
    for (i, what) in [(0, "file LUN"), (1, "ram LUN")] {
        let (p, _, _, pr) = run_suites(&server.url(i), what);
        passed += p;
        problems.extend(pr);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    // The suites hold about 80 tests; nearly all must really run.
    assert!(passed >= 2 * 60, "only {passed} tests really passed");
}
