//! The journey's private L2: a network namespace with bridge `br0` and one
//! tap per QEMU, and router advertisements so iPXE does not wait for an
//! IPv6 router. Everything is deleted with the namespace.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::vm;

/// A namespace owned by this test; deleted on drop. Declare it before the
/// processes running inside it so they are dropped first.
pub struct Lan {
    pub name: String,
}

impl Lan {
    /// Namespace `name` with `br0` (holding `br_cidr` if given) and the taps
    /// `taps` enslaved to it, all up.
    pub fn create(name: &str, br_cidr: Option<&str>, taps: &[&str]) -> Lan {
        let t = Duration::from_secs(20);
        // A namespace with our exact name (same PID) can only be a leftover
        // of ours.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        vm::run_ok(Command::new("ip").args(["netns", "add", name]), t);
        let lan = Lan {
            name: name.to_string(),
        };
        let ip = |args: &[&str]| {
            vm::run_ok(Command::new("ip").arg("-n").arg(name).args(args), t);
        };
        for k in ["all", "default"] {
            let _ = Command::new("ip")
                .args(["netns", "exec", name, "sysctl", "-qw"])
                .arg(format!("net.ipv6.conf.{k}.accept_dad=0"))
                .status();
        }
        ip(&["link", "set", "lo", "up"]);
        ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ]);
        if let Some(c) = br_cidr {
            ip(&["addr", "add", c, "dev", "br0"]);
        }
        ip(&["link", "set", "br0", "up"]);
        for tap in taps {
            vm::run_ok(
                Command::new("ip").args([
                    "netns", "exec", name, "ip", "tuntap", "add", "dev", tap, "mode", "tap",
                ]),
                t,
            );
            ip(&["link", "set", tap, "master", "br0"]);
            ip(&["link", "set", tap, "up"]);
        }
        lan
    }

    /// `prog` run inside the namespace (`ip netns exec` execs it, so the
    /// child's PID is the program's).
    pub fn command(&self, prog: impl AsRef<Path>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog.as_ref());
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let st = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// Sends IPv6 router advertisements (router lifetime 0, no prefix) on br0
/// every 500 ms so iPXE ends IPv6 autoconfiguration at once instead of
/// waiting ~13 s for a router. Best effort: without it boots are slower.
pub struct RaSender {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RaSender {
    pub fn start(ns: &str) -> RaSender {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let path = format!("/run/netns/{ns}");
        let thread = std::thread::spawn(move || {
            let Ok(f) = std::fs::File::open(&path) else {
                return;
            };
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, raw socket calls on valid
            // descriptors and buffers that outlive the calls.
            unsafe {
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return;
                }
                let s = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
                if s < 0 {
                    return;
                }
                let dev = b"br0\0";
                libc::setsockopt(
                    s,
                    libc::SOL_SOCKET,
                    libc::SO_BINDTODEVICE,
                    dev.as_ptr().cast(),
                    4,
                );
                let hops: libc::c_int = 255;
                let hp = (&hops as *const libc::c_int).cast();
                let hl = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                libc::setsockopt(s, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, hp, hl);
                libc::setsockopt(s, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, hp, hl);
                let idx = libc::if_nametoindex(dev.as_ptr().cast()) as libc::c_int;
                libc::setsockopt(
                    s,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MULTICAST_IF,
                    (&idx as *const libc::c_int).cast(),
                    hl,
                );
                // Type 134, code 0, checksum (filled by the kernel), hop
                // limit, flags, router lifetime 0, reachable 0, retrans 0.
                let ra = [134u8, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let mut dst: libc::sockaddr_in6 = std::mem::zeroed();
                dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                dst.sin6_addr.s6_addr = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                dst.sin6_scope_id = idx as u32;
                while !stop2.load(Ordering::SeqCst) {
                    libc::sendto(
                        s,
                        ra.as_ptr().cast(),
                        ra.len(),
                        0,
                        (&dst as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    );
                    // A periodic beacon, not synchronisation.
                    std::thread::sleep(Duration::from_millis(500));
                }
                libc::close(s);
            }
        });
        RaSender {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RaSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

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
