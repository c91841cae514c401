//! The ramdisk image: initramfs builder, PID-1 init and host install steps.
//!
//! Only the PID-1 detection lives here for now; the builder comes with the
//! image issue.

/// True when this process is the init process of its PID namespace, in
/// which case it must reap orphans and never exit.
pub fn running_as_init() -> bool {
    std::process::id() == 1
}
