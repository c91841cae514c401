//! A short run of every `cargo fuzz` target (`fuzz/`), about 30 s each,
//! starting from the corpora committed in `fuzz/corpus/` and the inputs
//! that once failed (`fuzz/artifacts-found/`): a crash, a
//! failed property or an input that no longer builds fails the test. The
//! long runs (30 minutes and more per target) are done by hand, as
//! fuzz/README.md shows.
//!
//! Needs `cargo-fuzz` (`cargo install cargo-fuzz`); the targets build on
//! the stable toolchain with `RUSTC_BOOTSTRAP=1`, as fuzz/README.md says.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// (target, seconds, extra libFuzzer flags).
const TARGETS: &[(&str, u32, &[&str])] = &[
    ("iscsi_bhs", 30, &[]),
    ("login_text", 30, &[]),
    ("scsi_cdb", 30, &[]),
    ("dhcp_packet", 30, &[]),
    ("tftp_request", 30, &[]),
    ("http_request", 30, &[]),
    (
        "iscsi_session",
        30,
        &["-max_len=4096", "-len_control=0", "-rss_limit_mb=4096"],
    ),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn cargo_fuzz(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.arg("fuzz")
        .args(args)
        .current_dir(fuzz_dir())
        .env("RUSTC_BOOTSTRAP", "1")
        // Apart from the workspace's target directory: other flags.
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz"),
        );
    c
}

/// Copy `from` (flat directory of inputs) to `to`, so the run adds its
/// new inputs there and not to the repository.
fn copy_corpus(from: &Path, to: &Path) -> usize {
    std::fs::create_dir_all(to).unwrap();
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(from) {
        for e in rd.flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                n += 1;
            }
        }
    }
    n
}

#[test]
fn every_fuzz_target_runs_clean_from_its_corpus() {
    if !require_tool("cargo-fuzz", "cargo-fuzz (cargo install cargo-fuzz)") {
        return;
    }
    let build = run_tool(
        cargo_fuzz(&["build", "-O"]).stdin(std::process::Stdio::null()),
        Duration::from_secs(1200),
    );
    assert!(
        build.success(),
        "cargo fuzz build failed:\n{}",
        build.stderr
    );
    let tmp = TempDir::new("fuzz-smoke");
    let mut problems = Vec::new();
    for (target, secs, extra) in TARGETS {
        let corpus = tmp.join(target);
        let seeds = copy_corpus(&fuzz_dir().join("corpus").join(target), &corpus);
        assert!(seeds > 0, "fuzz/corpus/{target} is empty");
        // Inputs that once failed are replayed too.
        let seeds = seeds + copy_corpus(&fuzz_dir().join("artifacts-found").join(target), &corpus);
        let artifacts = tmp.join(&format!("artifacts-{target}"));
        std::fs::create_dir_all(&artifacts).unwrap();
        let corpus_arg = corpus.to_string_lossy().to_string();
        let mut args = vec![
            "run".to_string(),
            "-O".into(),
            target.to_string(),
            corpus_arg,
            "--".into(),
            format!("-max_total_time={secs}"),
            format!("-artifact_prefix={}/", artifacts.display()),
            "-print_final_stats=1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // libFuzzer stops by itself after max_total_time; the limit only
        // catches a hang (a run of one input never ends).
        let out = run_tool(
            cargo_fuzz(&args).stdin(std::process::Stdio::null()),
            Duration::from_secs(u64::from(*secs) + 300),
        );
        let runs = out
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "?".into());
        println!("{target}: {secs} s, {runs} executions from {seeds} corpus inputs");
        if !out.success() {
            let tail: Vec<&str> = out.stderr.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            problems.push(format!(
                "{target}: cargo fuzz run failed ({}); artifacts in {}\n{}",
                out.status,
                artifacts.display(),
                tail.join("\n")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
