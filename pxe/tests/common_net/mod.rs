//! Network-namespace fixtures for the DHCP/TFTP integration tests.
//!
//! Each test builds its own pair of namespaces joined by a veth pair, with
//! addresses only inside them (10.77.x.y/24), and tears everything down in
//! `Drop`, also when the test panics. Servers run in the test process on a
//! thread that has entered the server namespace (sockets belong to the
//! namespace they are created in, and threads inherit their creator's);
//! clients run with `ip netns exec`, bounded by `timeout`.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Root and the tools (`ip`, `timeout` and `needs`) are required: missing,
/// the test fails naming the Debian package, unless
/// `BOOTLUN_SKIP_EXTERNAL=1` (then false, and the test returns).
pub fn can_run(needs: &[(&str, &str)]) -> bool {
    testkit::require_root()
        && [("ip", "iproute2"), ("timeout", "coreutils")]
            .iter()
            .chain(needs)
            .all(|(bin, pkg)| testkit::require_tool(bin, pkg))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair between a server and a client namespace.
pub struct Link {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
    pub server_ip: std::net::Ipv4Addr,
}

impl Link {
    /// `tag` (a few letters) and the PID make the names unique; `subnet`
    /// picks 10.77.`subnet`.0/24. With `client_addr`, the client side
    /// gets 10.77.`subnet`.2; otherwise it stays unaddressed (DHCP).
    pub fn new(tag: &str, subnet: u8, client_addr: bool) -> Link {
        let pid = std::process::id();
        let l = Link {
            server_ns: format!("bl-{tag}-s-{pid}"),
            client_ns: format!("bl-{tag}-c-{pid}"),
            // Interface names: at most 15 bytes.
            server_if: format!("{tag}s{}", pid % 1_000_000),
            client_if: format!("{tag}c{}", pid % 1_000_000),
            server_ip: std::net::Ipv4Addr::new(10, 77, subnet, 1),
        };
        // From here on Drop cleans up whatever was made.
        ip(&["netns", "add", &l.server_ns]);
        ip(&["netns", "add", &l.client_ns]);
        ip(&[
            "link",
            "add",
            &l.server_if,
            "netns",
            &l.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &l.client_if,
            "netns",
            &l.client_ns,
        ]);
        ip(&[
            "-n",
            &l.server_ns,
            "addr",
            "add",
            &format!("{}/24", l.server_ip),
            "dev",
            &l.server_if,
        ]);
        if client_addr {
            ip(&[
                "-n",
                &l.client_ns,
                "addr",
                "add",
                &format!("10.77.{subnet}.2/24"),
                "dev",
                &l.client_if,
            ]);
        }
        for (ns, dev) in [(&l.server_ns, &l.server_if), (&l.client_ns, &l.client_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        l
    }

    /// Give the client interface another MAC address (a different client).
    pub fn set_client_mac(&self, mac: &str) {
        ip(&[
            "-n",
            &self.client_ns,
            "link",
            "set",
            &self.client_if,
            "down",
        ]);
        ip(&[
            "-n",
            &self.client_ns,
            "link",
            "set",
            &self.client_if,
            "address",
            mac,
        ]);
        ip(&["-n", &self.client_ns, "link", "set", &self.client_if, "up"]);
    }

    /// Run `f` on a thread inside the server namespace; threads it spawns
    /// and sockets it creates stay in that namespace.
    pub fn in_server_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.server_ns, f)
    }

    /// Same for the client namespace.
    pub fn in_client_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.client_ns, f)
    }

    /// Run a command in the client namespace, killed after `secs`.
    pub fn client_cmd(&self, secs: u32, args: &[&str], envs: &[(&str, &Path)]) -> Output {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.client_ns,
            "timeout",
            "-s",
            "KILL",
            &secs.to_string(),
        ])
        .args(args)
        .stdin(Stdio::null());
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().expect("run client command")
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth, and with it
        // the peer.
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    testkit::enter_netns(ns, f)
}

/// FNV-1a, enough to compare file contents in assertion messages.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
