//! Network namespaces owned by a test: created, entered (one thread, or a
//! command via `ip netns exec`) and deleted on drop. Declare a namespace
//! before the processes running inside it so they are dropped first.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::run_ok;

const IP_LIMIT: Duration = Duration::from_secs(20);

/// A network namespace owned by this test, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates namespace `name` with `lo` up.
    pub fn create(name: &str) -> NetNs {
        // A namespace left by a crashed run with our exact name (same PID)
        // would make `add` fail; it is ours by construction, so remove it.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run_ok(Command::new("ip").args(["netns", "add", name]), IP_LIMIT);
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`; panics with ip's output on failure.
    pub fn ip(&self, args: &[&str]) {
        run_ok(
            Command::new("ip").arg("-n").arg(&self.name).args(args),
            IP_LIMIT,
        );
    }

    /// Creates the namespace, brings `lo` up, and creates `tap` with `cidr`.
    pub fn with_tap(name: &str, tap: &str, cidr: &str) -> NetNs {
        let ns = NetNs::create(name);
        ns.add_tap(tap);
        ns.ip(&["addr", "add", cidr, "dev", tap]);
        ns.ip(&["link", "set", tap, "up"]);
        ns
    }

    /// Namespace `name` with bridge `br0` (holding `br_cidr` if given) and
    /// the taps `taps` enslaved to it, all up; IPv6 DAD off so the
    /// bridge's link-local address is usable at once (router adverts).
    pub fn lan(name: &str, br_cidr: Option<&str>, taps: &[&str]) -> NetNs {
        let ns = NetNs::create(name);
        for k in ["all", "default"] {
            let _ = ns
                .command("sysctl")
                .arg("-qw")
                .arg(format!("net.ipv6.conf.{k}.accept_dad=0"))
                .status();
        }
        ns.ip(&[
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
            ns.ip(&["addr", "add", c, "dev", "br0"]);
        }
        ns.ip(&["link", "set", "br0", "up"]);
        for tap in taps {
            ns.add_tap(tap);
            ns.ip(&["link", "set", tap, "master", "br0"]);
            ns.ip(&["link", "set", tap, "up"]);
        }
        ns
    }

    fn add_tap(&self, tap: &str) {
        run_ok(
            self.command("ip")
                .args(["tuntap", "add", "dev", tap, "mode", "tap"]),
            IP_LIMIT,
        );
    }

    /// A veth pair from `here` in this namespace to `there` in `peer`, both
    /// up, each side given its address when one is named. Its two ends
    /// lie in different namespaces, so traffic between them really crosses
    /// the pair (neither side sees the other's address as local).
    pub fn veth_to(&self, peer: &NetNs, here: (&str, Option<&str>), there: (&str, Option<&str>)) {
        self.ip(&[
            "link", "add", here.0, "type", "veth", "peer", "name", there.0, "netns", &peer.name,
        ]);
        for (ns, (dev, cidr)) in [(self, here), (peer, there)] {
            if let Some(c) = cidr {
                ns.ip(&["addr", "add", c, "dev", dev]);
            }
            ns.ip(&["link", "set", dev, "up"]);
        }
    }

    /// A command running `prog` inside the namespace (`ip netns exec`
    /// execs it, so the child's PID is the program's).
    pub fn command(&self, prog: impl AsRef<Path>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog.as_ref());
        c
    }

    /// Same as [`NetNs::command`].
    pub fn exec(&self, prog: impl AsRef<Path>) -> Command {
        self.command(prog)
    }

    /// Runs `f` on a thread that entered the namespace; threads it spawns
    /// and sockets it creates stay in that namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        enter(&self.name, f)
    }
}

/// Runs `f` on a new thread inside the named namespace and returns its
/// result (a panic in `f` propagates).
pub fn enter<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f_ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a descriptor we own; it only changes this thread.
        let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        drop(f_ns);
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

impl Drop for NetNs {
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
