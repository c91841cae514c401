//! `bootlun_pxe::netlink` inside a network namespace this test creates
//! (veth pairs), checked with `ip -4 addr show`. Needs root and iproute2.

use bootlun_pxe::netlink;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skip_or_fail(why: &str) -> bool {
    if std::env::var("BOOTLUN_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipped: {why}");
        return true;
    }
    panic!("{why} (or set BOOTLUN_SKIP_EXTERNAL=1)");
}

/// Run a command with a deadline and return its stdout; panic on failure.
fn run(args: &[&str]) -> String {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: still running after 30 s, killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Run `f` on a thread that has entered the namespace.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let fd = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn addresses_and_carrier_in_a_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && skip_or_fail("needs root for ip netns") {
        return;
    }
    if Command::new("ip").arg("-V").output().is_err()
        && skip_or_fail("ip not found: install the Debian package iproute2")
    {
        return;
    }
    let ns = Netns(format!("bootlun-nl-{}", std::process::id()));
    let n = ns.0.clone();
    run(&["ip", "netns", "add", &n]);
    run(&[
        "ip", "-n", &n, "link", "add", "a0", "type", "veth", "peer", "name", "b0",
    ]);
    run(&[
        "ip", "-n", &n, "link", "add", "a1", "type", "veth", "peer", "name", "b1",
    ]);
    run(&["ip", "-n", &n, "link", "set", "b1", "up"]);

    let show = |n: &str, dev: &str| run(&["ip", "-n", n, "-4", "addr", "show", "dev", dev]);

    let r = in_ns(&n, || {
        netlink::link_up("a0").unwrap();
        let before = netlink::ipv4_addrs("a0").unwrap();
        let a = Ipv4Addr::new(10, 77, 9, 1);
        let added = netlink::add_ipv4("a0", a, 24).unwrap();
        let again = netlink::add_ipv4("a0", a, 24).unwrap();
        let second = netlink::add_ipv4("a0", Ipv4Addr::new(10, 77, 10, 1), 16).unwrap();
        let after = netlink::ipv4_addrs("a0").unwrap();
        let other = netlink::ipv4_addrs("a1").unwrap();
        (before, added, again, second, after, other)
    });
    assert_eq!(r.0, []);
    assert!(r.1, "first add reports a change");
    assert!(!r.2, "second add of the same address reports none");
    assert!(r.3);
    assert_eq!(
        r.4,
        [
            (Ipv4Addr::new(10, 77, 9, 1), 24),
            (Ipv4Addr::new(10, 77, 10, 1), 16)
        ]
    );
    assert_eq!(r.5, [], "addresses of another interface are not listed");
    let s = show(&n, "a0");
    assert!(s.contains("inet 10.77.9.1/24 brd 10.77.9.255"), "{s}");
    assert!(s.contains("inet 10.77.10.1/16 brd 10.77.255.255"), "{s}");
    assert!(s.contains("state") && s.contains(",UP"), "{s}");

    in_ns(&n, || {
        netlink::del_ipv4("a0", Ipv4Addr::new(10, 77, 9, 1), 24).unwrap();
        // Deleting what is not there is fine.
        netlink::del_ipv4("a0", Ipv4Addr::new(10, 77, 9, 1), 24).unwrap();
    });
    let s = show(&n, "a0");
    assert!(!s.contains("10.77.9.1/"), "{s}");
    // (A different subnet: deleting a primary address also deletes its
    // secondaries unless promote_secondaries is set.)
    assert!(s.contains("10.77.10.1/16"), "{s}");

    // Errors name the interface.
    let e = in_ns(&n, || netlink::link_up("eth9").unwrap_err());
    assert_eq!(e, "--net-interface eth9: no such interface");

    // Carrier: a0's peer is down, a1's is up.
    let got = in_ns(&n, || {
        let c = |s: &str| s.to_string();
        (
            netlink::first_with_link(&[c("a0"), c("a1")], Duration::from_secs(20)),
            netlink::has_carrier("a0").unwrap(),
            netlink::has_carrier("a1").unwrap(),
            netlink::first_with_link(&[c("nosuch0"), c("a1")], Duration::from_secs(20)),
            netlink::first_with_link(&[], Duration::from_secs(1)),
        )
    });
    assert_eq!(got.0.as_deref(), Some("a1"));
    assert!(!got.1 && got.2);
    assert_eq!(got.3.as_deref(), Some("a1"));
    assert_eq!(got.4, None);
    let s = run(&["ip", "-n", &n, "link", "show", "a1"]);
    assert!(s.contains("LOWER_UP"), "{s}");

    // Once a0 has carrier too, the first in order wins.
    run(&["ip", "-n", &n, "link", "set", "b0", "up"]);
    let got = in_ns(&n, || {
        netlink::first_with_link(&["a0".into(), "a1".into()], Duration::from_secs(20))
    });
    assert_eq!(got.as_deref(), Some("a0"));
}
