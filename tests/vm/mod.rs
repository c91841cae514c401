//! The QEMU fixtures live in `testkit::vm`; this module re-exports them so
//! the tests' `mod vm;` keeps working.
#![allow(unused_imports)]

pub use testkit::vm::*;
