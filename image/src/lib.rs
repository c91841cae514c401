//! The boot ramdisk: the initramfs builder (`bootlun image build`), bootlun
//! as PID 1 (`bootlun init`) and the host's install steps (`bootlun host`).
//!
//! - [`cpio`]: the newc archive writer.
//! - [`kmod`]: kernel module indexes (`modules.dep`, `modules.alias`,
//!   `modules.builtin`): dependency closures and modalias matching, used by
//!   the builder to pick modules and by PID 1 to load them.
//! - [`build`]: assembles `bootlun-kernel.bin` and `bootlun-initrd.img`.
//! - [`init`]: what PID 1 does before and around `serve`.
//! - [`host`]: install, update and uninstall on the host OS.

pub mod build;
pub mod cpio;
pub mod host;
pub mod init;
pub mod kmod;

/// True when this process is the init process of its PID namespace, in
/// which case it must reap orphans and never exit.
pub fn running_as_init() -> bool {
    std::process::id() == 1
}
