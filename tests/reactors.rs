//! Acceptance: with `--cores 0,1`, two concurrent initiators are served by
//! different reactors (read from the `accepted connection from PEER on
//! reactor N` log lines).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Parses `accepted connection from IP:PORT on reactor N`.
fn parse_accept_line(line: &str) -> Option<(SocketAddr, u32)> {
    let key = "accepted connection from ";
    let rest = &line[line.find(key)? + key.len()..];
    let peer: SocketAddr = rest
        .split_whitespace()
        .next()?
        .trim_end_matches([',', ';'])
        .parse()
        .ok()?;
    let key = "on reactor ";
    let rest = &rest[rest.find(key)? + key.len()..];
    let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((peer, n.parse().ok()?))
}

#[test]
fn accept_line_parser() {
    let l =
        "2026-11-22T03:00:00Z  INFO bootlun: accepted connection from 127.0.0.1:41234 on reactor 1";
    assert_eq!(
        parse_accept_line(l),
        Some(("127.0.0.1:41234".parse().unwrap(), 1))
    );
    assert_eq!(
        parse_accept_line("accepted connection from 127.0.0.1:5 on reactor 12 (fd 7)").map(|x| x.1),
        Some(12)
    );
    assert_eq!(parse_accept_line("listening on 127.0.0.1:3260"), None);
}

#[test]
fn two_concurrent_initiators_land_on_different_reactors() {
    if !bootlun_cli_available() {
        return;
    }
    let server = Server::bootlun(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--lun",
        "ram:16M",
        "--cores",
        "0,1",
    ]);
    let lun = server.lun(0);

    // Two sessions, both logged in and held open at the same time.
    let mut a = IscsiConn::connect(server.addr);
    a.login(&initiator_name("reactor-a"), &server.iqn)
        .unwrap_or_else(|e| panic!("login a: {e}\n{}", server.output()));
    let mut b = IscsiConn::connect(server.addr);
    b.login(&initiator_name("reactor-b"), &server.iqn)
        .unwrap_or_else(|e| panic!("login b: {e}\n{}", server.output()));
    // Both are served while both are open.
    a.test_unit_ready(lun)
        .unwrap_or_else(|e| panic!("TUR a: {e}\n{}", server.output()));
    b.test_unit_ready(lun)
        .unwrap_or_else(|e| panic!("TUR b: {e}\n{}", server.output()));

    let mut reactors = BTreeSet::new();
    for (name, conn) in [("a", &a), ("b", &b)] {
        let me = conn.local_addr();
        let line = server
            .log
            .wait_for(Duration::from_secs(10), |l| parse_accept_line(l).map(|(p, _)| p == me).unwrap_or(false))
            .unwrap_or_else(|| {
                panic!(
                    "no `accepted connection from {me} on reactor N` line for connection {name}:\n{}",
                    server.output()
                )
            });
        let (_, reactor) = parse_accept_line(&line).unwrap();
        println!("connection {name} ({me}) -> reactor {reactor}");
        reactors.insert(reactor);
    }
    assert_eq!(
        reactors,
        BTreeSet::from([0, 1]),
        "two concurrent connections with --cores 0,1 must be served by reactors 0 and 1:\n{}",
        server.output()
    );
    a.logout();
    b.logout();
}
