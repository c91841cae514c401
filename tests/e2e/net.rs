//! Host resources of the journey besides its network (which is
//! `testkit::NetNs::lan` with `testkit::RaSender`): loop devices.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::vm;

/// A read-only loop device over a byte range of a file (the OS disk's boot
/// partition for `serve --boot-device` on the host); detached on drop.
pub struct LoopDev {
    pub dev: String,
}

impl LoopDev {
    pub fn attach(file: &Path, offset: u64, bytes: u64) -> LoopDev {
        let out = vm::run_ok(
            Command::new("losetup")
                .args(["--find", "--show", "--read-only"])
                .arg("--offset")
                .arg(offset.to_string())
                .arg("--sizelimit")
                .arg(bytes.to_string())
                .arg(file),
            Duration::from_secs(30),
        );
        let dev = out.trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {out:?}");
        LoopDev { dev }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let st = Command::new("losetup")
            .args(["--detach", &self.dev])
            .stderr(Stdio::null())
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("warning: could not detach {}", self.dev);
        }
    }
}
