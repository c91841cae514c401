//! The integration tests' harness lives in the `testkit` crate; this module
//! re-exports it so the tests' `mod common;` keeps working.
#![allow(unused_imports)]

pub use testkit::*;
