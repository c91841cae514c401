//! `serve --net-interface/--net-address` inside a network namespace this
//! test creates: the address is added when missing and removed at exit
//! only if bootlun added it, and with `--pxe-interface` the portal listens
//! on that interface's address rather than on every address.

mod common;

use common::*;
use std::time::Duration;

/// A namespace (testkit's, deleted on drop) with a veth pair `v0`/`v1`.
struct Ns(NetNs);

impl Ns {
    fn new(tag: &str) -> Ns {
        let ns = NetNs::create(&format!("bl-{tag}-{}", std::process::id()));
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ns.ip(&["link", "set", "v1", "up"]);
        Ns(ns)
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = run_tool(self.0.command("ip").args(args), Duration::from_secs(20));
        out.assert_success();
        out.stdout.clone()
    }

    fn v4_of(&self, dev: &str) -> String {
        self.ip(&["-4", "-o", "addr", "show", "dev", dev])
    }

    /// Starts bootlun from a thread inside the namespace (the child
    /// inherits it), waiting for a portal that satisfies `portal`.
    fn bootlun(&self, args: Vec<String>, portal: fn(&std::net::SocketAddr) -> bool) -> Server {
        self.0.enter(move || Server::bootlun_on(&args, portal))
    }
}

fn ready() -> bool {
    require_root() && require_tool("ip", "iproute2")
}

fn serve_args(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "serve",
        "--lun",
        "ram:16M",
        "--dhcp-mode",
        "off",
        "--http-port",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn net_address_added_then_removed_and_portal_on_it() {
    if !ready() {
        return;
    }
    let ns = Ns::new("net");
    assert!(!ns.v4_of("v0").contains("10.201.0.1"));
    let mut srv = ns.bootlun(
        serve_args(&[
            "--net-interface",
            "v0",
            "--net-address",
            "10.201.0.1/24",
            "--pxe-interface",
            "v0",
            "--boot-method",
            "sanboot",
        ]),
        |a| a.ip().to_string().starts_with("10.201."),
    );
    assert_eq!(srv.addr.to_string(), "10.201.0.1:3260", "{}", srv.output());
    let addrs = ns.v4_of("v0");
    assert!(addrs.contains("10.201.0.1/24"), "{addrs}");
    assert!(ns.ip(&["-o", "link", "show", "v0"]).contains(",UP"));
    let st = srv.stop();
    assert!(st.success(), "{}", srv.output());
    let addrs = ns.v4_of("v0");
    assert!(
        !addrs.contains("10.201.0.1"),
        "the address bootlun added must go at exit: {addrs}\n{}",
        srv.output()
    );
}

#[test]
fn an_address_already_there_is_left_alone() {
    if !ready() {
        return;
    }
    let ns = Ns::new("netkeep");
    ns.ip(&["addr", "add", "10.202.0.1/24", "dev", "v0"]);
    let mut srv = ns.bootlun(
        serve_args(&[
            "--listen",
            "127.0.0.1:0",
            "--net-interface",
            "v0",
            "--net-address",
            "10.202.0.1/24",
        ]),
        |a| a.ip().is_loopback(),
    );
    assert!(
        srv.log
            .wait_for(Duration::from_secs(10), |l| l
                .contains("v0 already has 10.202.0.1/24"))
            .is_some(),
        "{}",
        srv.output()
    );
    assert!(srv.stop().success(), "{}", srv.output());
    assert!(ns.v4_of("v0").contains("10.202.0.1/24"));
}

#[test]
fn net_flag_errors_name_the_flag() {
    if !ready() {
        return;
    }
    let ns = Ns::new("neterr");
    let bin = bootlun_bin();
    for (args, want) in [
        (
            vec!["--net-interface", "v0", "--net-address", "10.203.0.1"],
            "--net-address 10.203.0.1: expected IPv4ADDRESS/PREFIX",
        ),
        (
            vec![
                "--net-interface",
                "nosuch0",
                "--net-address",
                "10.203.0.1/24",
            ],
            "nosuch0",
        ),
        (
            vec!["--net-address", "10.203.0.1/24"],
            "--net-address 10.203.0.1/24: needs --net-interface",
        ),
    ] {
        let out = run_tool(
            ns.0.command(&bin).args(serve_args(&args)),
            Duration::from_secs(30),
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
}
