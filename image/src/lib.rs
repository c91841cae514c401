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

/// Network drivers the ramdisk carries and the installed OS's initramfs
/// gets (the initiator is rarely the machine the OS was installed on):
/// virtual, Intel, Realtek, Broadcom, Mellanox, Aquantia and USB NICs.
pub const NIC_DRIVERS: &[&str] = &[
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "r8169",
    "tg3",
    "bnx2x",
    "bnxt_en",
    "mlx4_en",
    "mlx5_core",
    "atlantic",
    "r8152",
    "ax88179_178a",
    "cdc_ether",
];

/// True when this process is the init process of its PID namespace, in
/// which case it must reap orphans and never exit.
pub fn running_as_init() -> bool {
    std::process::id() == 1
}
