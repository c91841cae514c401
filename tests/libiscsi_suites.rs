//! Acceptance: libiscsi's conformance suites (`iscsi-test-cu`) pass against
//! one bootlun serving a ram LUN.
//!
//! iscsi-test-cu counts a skipped test as passed, so skips are recognised by
//! the `[SKIPPED]` marker in each test's output and reported separately.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// `-t` names (FAMILY.SUITE, as `iscsi-test-cu -l` lists them).
const SUITES: &[&str] = &[
    "ALL.Inquiry",
    "ALL.ReadCapacity10",
    "ALL.ReadCapacity16",
    "ALL.Read6",
    "ALL.Read10",
    "ALL.Read12",
    "ALL.Read16",
    "ALL.Write10",
    "ALL.Write12",
    "ALL.Write16",
    "ALL.TestUnitReady",
    "ALL.ReportSupportedOpcodes",
    "ALL.Verify10",
    "ALL.Verify16",
    "ALL.ModeSense6",
    "ALL.NoMedia",
    "ALL.iSCSIResiduals",
];

/// Per suite; against tgt each takes well under a second.
const SUITE_LIMIT: Duration = Duration::from_secs(120);
/// For all suites together; suites not started by then count as failed.
const TOTAL_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    passed: u32,
    failed: u32,
    skipped: u32,
    failed_tests: Vec<String>,
    summary_found: bool,
}

/// Parses iscsi-test-cu's per-test lines and its CUnit run summary.
fn parse_cunit(out: &str) -> Counts {
    let mut c = Counts::default();
    // Per-test records: from a "Test: NAME ..." line to the next one.
    let mut records: Vec<(String, String)> = Vec::new();
    for line in out.lines() {
        if let Some(i) = line.find("Test: ") {
            let name = line[i + 6..]
                .split(" ...")
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            records.push((name, line[i..].to_string()));
        } else if line.starts_with("Run Summary") {
            records.push((String::new(), String::new()));
        } else if let Some(last) = records.last_mut() {
            last.1.push('\n');
            last.1.push_str(line);
        }
    }
    let mut failed_records = 0;
    for (name, text) in records.iter().filter(|(n, _)| !n.is_empty()) {
        // A test's own messages come between "Test: NAME ..." and its bare
        // result word; what follows the result (e.g. a suite teardown's
        // "[SKIPPED] PERSISTENT RESERVE IN is not implemented.") is not
        // about that test.
        let body = text.split_once(" ...").map(|(_, b)| b).unwrap_or(text);
        match result_word(body) {
            Some((pos, failed)) => {
                if failed {
                    failed_records += 1;
                    c.failed_tests.push(name.clone());
                } else if body[..pos].contains("[SKIPPED]") {
                    c.skipped += 1;
                }
            }
            None => {
                // No result at all: the run died inside this test.
                failed_records += 1;
                c.failed_tests.push(format!("{name} (no result)"));
            }
        }
    }
    // "               tests      6      6      6      0        0"
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first() == Some(&"tests") && cols.len() >= 5 {
            let n: Vec<u32> = cols[1..].iter().filter_map(|v| v.parse().ok()).collect();
            if n.len() >= 4 {
                c.summary_found = true;
                c.total = n[0];
                c.failed = n[3].max(failed_records);
                c.passed = n[2].saturating_sub(c.skipped);
            }
        }
    }
    if !c.summary_found {
        c.failed = failed_records;
    }
    c
}

/// Position of the first bare `passed` / `FAILED` (not `[FAILED]`) and
/// whether it is a failure.
fn result_word(body: &str) -> Option<(usize, bool)> {
    let mut from = 0;
    loop {
        let p = body[from..].find("passed").map(|i| i + from);
        let f = body[from..].find("FAILED").map(|i| i + from);
        let (pos, failed) = match (p, f) {
            (Some(p), Some(f)) if f < p => (f, true),
            (Some(p), _) => (p, false),
            (None, Some(f)) => (f, true),
            (None, None) => return None,
        };
        if failed && pos > 0 && body.as_bytes()[pos - 1] == b'[' {
            from = pos + "FAILED".len();
            continue;
        }
        return Some((pos, failed));
    }
}

/// Keeps a failing suite's output readable: runs of identical lines are
/// collapsed, and very long output keeps its head and its tail.
fn abridge(out: &str) -> String {
    let mut kept: Vec<String> = Vec::new();
    let mut last: Option<&str> = None;
    let mut run = 0;
    let flush = |kept: &mut Vec<String>, line: Option<&str>, run: usize| {
        if let Some(l) = line {
            kept.push(if run > 1 {
                format!("{l}   [line repeated {run} times]")
            } else {
                l.to_string()
            });
        }
    };
    for line in out.lines() {
        if Some(line) == last {
            run += 1;
            continue;
        }
        flush(&mut kept, last, run);
        last = Some(line);
        run = 1;
    }
    flush(&mut kept, last, run);
    const HEAD: usize = 150;
    const TAIL: usize = 40;
    if kept.len() > HEAD + TAIL {
        let omitted = kept.len() - HEAD - TAIL;
        let tail = kept.split_off(kept.len() - TAIL);
        kept.truncate(HEAD);
        kept.push(format!("[... {omitted} lines omitted ...]"));
        kept.extend(tail);
    }
    kept.join("\n")
}

#[test]
fn libiscsi_conformance_suites_pass() {
    if !require_tool("iscsi-test-cu", "libiscsi-bin") {
        return;
    }
    let server = Server::start(&["ram:256M"], &[]);
    let url = server.url(0);
    let mut problems = Vec::new();
    let mut table = Vec::new();
    let started = std::time::Instant::now();
    for suite in SUITES {
        if started.elapsed() > TOTAL_LIMIT {
            let line = format!(
                "{suite:<28} NOT RUN: the suites' total time limit {TOTAL_LIMIT:?} was used up"
            );
            println!("{line}");
            table.push(line.clone());
            problems.push(format!("=== {line} ==="));
            continue;
        }
        let out = try_run_tool(
            Command::new("iscsi-test-cu").args([
                "--dataloss",
                "-i",
                &initiator_name("cu-1"),
                "-I",
                &initiator_name("cu-2"),
                "-t",
                suite,
                &url,
            ]),
            SUITE_LIMIT,
        );
        let (out, hung) = match out {
            Ok(o) => (o, false),
            Err(o) => (o, true),
        };
        let all = format!("{}\n{}", out.stdout, out.stderr);
        let c = parse_cunit(&all);
        let line =
            format!(
            "{suite:<28} total {:>3}  passed {:>3}  failed {:>3}  skipped {:>3}  ({:.1?}, exit {})",
            c.total,
            c.passed,
            c.failed,
            c.skipped,
            out.elapsed,
            out.status.code().map(|c| c.to_string()).unwrap_or_else(|| out.status.to_string())
        );
        println!("{line}");
        table.push(line);
        let mut why = Vec::new();
        if hung {
            why.push(format!("did not finish within {SUITE_LIMIT:?}; killed"));
        } else if !c.summary_found {
            why.push("no CUnit run summary (crashed or could not connect)".to_string());
        }
        if c.total == 0 && c.summary_found {
            why.push("no test ran (wrong suite name?)".to_string());
        }
        if c.failed > 0 {
            why.push(format!(
                "{} failed: {}",
                c.failed,
                c.failed_tests.join(", ")
            ));
        }
        if !hung && !out.success() {
            why.push(format!("exit status {}", out.status));
        }
        if !why.is_empty() {
            problems.push(format!(
                "=== {suite}: {} ===\n{}",
                why.join("; "),
                abridge(&all)
            ));
        }
    }
    println!("\n{}", table.join("\n"));
    assert!(
        problems.is_empty(),
        "{} of {} suites failed:\n{}\n\nsummary:\n{}",
        problems.len(),
        SUITES.len(),
        problems.join("\n"),
        table.join("\n")
    );
}

#[test]
fn cunit_parser_counts_skips_and_failures() {
    // Shapes copied from real runs: a skip inside a passed test, a suite
    // teardown's skip message after the last result, failures against a
    // read-only LUN.
    let sample = "    [SKIPPED] PERSISTENT RESERVE IN is not implemented.\n\
Suite: Write10\n\
  Test: Simple ...passed\n\
  Test: BlockLimits ...    [SKIPPED] Logical unit is fully provisioned. Skipping test\n\
passed\n\
  Test: BeyondEol ...    [FAILED] WRITE10 command failed with status 2 / sense key DATA PROTECTION(0x07)\n\
    [FAILED] WRITE10 command failed with status 2\n\
FAILED\n\
  Test: Async ...FAILED\n\
  Test: VersionDescriptors ...passed    [SKIPPED] PERSISTENT RESERVE IN is not implemented.\n\
\n\
Run Summary:    Type  Total    Ran Passed Failed Inactive\n\
              suites      1      1    n/a      0        0\n\
               tests      5      5      3      2        0\n\
             asserts     10     10      8      2      n/a\n\
    1. test_write10_beyondeol.c:50  - CU_ASSERT_EQUAL(ret,0)\n";
    let c = parse_cunit(sample);
    assert!(c.summary_found);
    assert_eq!(
        (c.total, c.passed, c.failed, c.skipped),
        (5, 2, 2, 1),
        "{c:?}"
    );
    assert_eq!(
        c.failed_tests,
        vec!["BeyondEol".to_string(), "Async".to_string()]
    );
}
