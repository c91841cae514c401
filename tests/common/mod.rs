//! The integration tests' harness lives in the `testkit` crate; this module
//! re-exports it so the tests' `mod common;` keeps working.
#![allow(unused_imports)]

pub use testkit::*;

/// The number after `what` in bootlun's exit summary (one line per
/// reactor), summed over the reactors.
#[allow(dead_code)]
pub fn summary_count(out: &str, what: &str) -> u64 {
    out.lines()
        .filter_map(|l| {
            let rest = &l[l.find(what)? + what.len()..];
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            rest[..digits].parse::<u64>().ok()
        })
        .sum()
}
