//! The status page's PXE side, inside a network namespace this test
//! creates: a client at 10.204.0.2 fetches the boot script, a kernel and
//! an initrd over HTTP; `/status.json` then lists the boot entries, the
//! transfers and the client at the initrd stage, `/metrics` counts it, and
//! each stage reached is a log line.

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

fn curl(ns: &NetNs, args: &[&str]) -> String {
    let out = run_tool(
        ns.command("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args),
        LIMIT,
    );
    out.assert_success();
    out.stdout
}

/// bootlun in `ns` on v0 with `{net}.1/24`, PXE on v0 (HTTP on a free
/// port, the Debian fixture boot tree) and its admin page on a free
/// loopback port; `extra` flags are added. Returns the server and the
/// admin page's ADDR:PORT.
fn serve_pxe(ns: &NetNs, net: &str, extra: &[&str]) -> (Server, String) {
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pxe/tests/fixtures/debian");
    let address = format!("{net}.1/24");
    let args: Vec<String> = [
        "serve",
        "--lun",
        "ram:4M",
        "--net-interface",
        "v0",
        "--net-address",
        &address,
        "--pxe-interface",
        "v0",
        "--http-port",
        "0",
        "--boot-dir",
        fixtures.to_str().unwrap(),
        "--cmdline-default",
        "root=UUID=1 ro",
        "--admin-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let prefix = format!("{net}.");
    let server = ns
        .enter(move || Server::bootlun_on(&args, move |a| a.ip().to_string().starts_with(&prefix)));
    let line = server
        .log
        .wait_for(LIMIT, |l| l.contains("admin page on http://"))
        .unwrap_or_else(|| panic!("no admin line:\n{}", server.output()));
    let admin = line[line.find("http://").unwrap() + 7..]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    (server, admin)
}

/// Root, ip and curl, and the bootlun binary under test (these tests
/// drive its PXE services and admin page).
fn can_run() -> bool {
    require_root()
        && require_tool("ip", "iproute2")
        && require_tool("curl", "curl")
        && bootlun_cli_available()
        && target_kind() == TargetKind::Bootlun
}

#[test]
fn pxe_clients_and_transfers_on_the_status_page() {
    if !can_run() {
        return;
    }
    let ns = NetNs::create(&format!("bl-admpxe-{}", std::process::id()));
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["addr", "add", "10.204.0.2/24", "dev", "v1"]);
    ns.ip(&["link", "set", "v1", "up"]);
    let (server, admin) = serve_pxe(&ns, "10.204.0", &["--dhcp-mode", "off"]);
    let find = |what: &str| -> String {
        let line = server
            .log
            .wait_for(LIMIT, |l| l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` line:\n{}", server.output()));
        line[line.find(what).unwrap() + what.len()..]
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap()
            .to_string()
    };
    let http = find("http: serving on ");

    for path in [
        "/boot.ipxe",
        "/boot/vmlinuz-6.1.0-18-amd64",
        "/boot/initrd.img-6.1.0-18-amd64",
    ] {
        curl(
            &ns,
            &[
                "--interface",
                "10.204.0.2",
                "-o",
                "/dev/null",
                &format!("http://{http}{path}"),
            ],
        );
    }
    // The sidecar records a transfer after its last byte went out; poll.
    let deadline = std::time::Instant::now() + LIMIT;
    let j = loop {
        let j: serde_json::Value =
            serde_json::from_str(&curl(&ns, &[&format!("http://{admin}/status.json")])).unwrap();
        let stage = j["pxe_clients"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["ip"] == "10.204.0.2"))
            .and_then(|c| c["stage"].as_str())
            .unwrap_or("")
            .to_string();
        if stage == "initrd" {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "client stage {stage:?}: {j:#}"
        );
        std::thread::yield_now();
    };
    assert_eq!(j["pxe"]["interface"], "v0");
    assert!(
        j["pxe"]["boot_entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|b| b["kernel"] == "vmlinuz-6.1.0-18-amd64")),
        "{j:#}"
    );
    let transfers = j["pxe_transfers"].as_array().unwrap();
    assert!(
        transfers
            .iter()
            .any(|t| t["file"] == "/boot/vmlinuz-6.1.0-18-amd64"
                && t["status"] == 200
                && t["peer"] == "10.204.0.2"),
        "{j:#}"
    );
    let page = curl(&ns, &[&format!("http://{admin}/")]);
    assert!(
        page.contains("10.204.0.2") && page.contains("<b>initrd</b>"),
        "{page}"
    );
    let metrics = curl(&ns, &[&format!("http://{admin}/metrics")]);
    assert!(
        metrics.contains("bootlun_pxe_clients{stage=\"initrd\"} 1"),
        "{metrics}"
    );
    // Running totals: the three files, served over HTTP.
    assert!(
        metrics.contains("bootlun_pxe_files_total{protocol=\"http\",result=\"served\"} 3"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("bootlun_pxe_sent_bytes_total{protocol=\"http\"} 0\n"),
        "{metrics}"
    );
    for stage in ["menu", "kernel", "initrd"] {
        let want = format!("pxe: 10.204.0.2 reached {stage}");
        assert!(
            server.output().contains(&want),
            "no `{want}` line:\n{}",
            server.output()
        );
    }
}

#[test]
fn dhcp_lease_and_offer_on_the_status_page() {
    if !can_run() || !require_tool("udhcpc", "udhcpc") {
        return;
    }
    let ns = NetNs::create(&format!("bl-admdhcp-{}", std::process::id()));
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v1", "up"]);
    let (server, admin) = serve_pxe(&ns, "10.205.0", &[]);
    // A plain DHCP client: gets the pool's one address; its script does nothing.
    let out = run_tool(
        ns.command("udhcpc").args([
            "-i",
            "v1",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "2",
            "-s",
            "/bin/true",
        ]),
        Duration::from_secs(60),
    );
    assert!(
        out.success(),
        "udhcpc: {}\n{}\n{}",
        out.stdout,
        out.stderr,
        server.output()
    );
    let j: serde_json::Value =
        serde_json::from_str(&curl(&ns, &[&format!("http://{admin}/status.json")])).unwrap();
    let leases = j["dhcp_leases"].as_array().unwrap();
    assert!(
        leases
            .iter()
            .any(|l| l["addr"] == "10.205.0.2" && l["bound"] == true),
        "{j:#}"
    );
    let client = j["pxe_clients"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["ip"] == "10.205.0.2"))
        .unwrap_or_else(|| panic!("no client 10.205.0.2: {j:#}"));
    assert_eq!(client["stage"], "DHCP offer", "{j:#}");
    assert!(
        client["mac"].as_str().is_some_and(|m| m.len() == 17),
        "{j:#}"
    );
    let metrics = curl(&ns, &[&format!("http://{admin}/metrics")]);
    assert!(
        !metrics.contains("bootlun_dhcp_offers_total 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bootlun_dhcp_leases{state=\"bound\"} 1"),
        "{metrics}"
    );
    assert!(
        server.output().contains("reached DHCP offer"),
        "{}",
        server.output()
    );
}

/// A TFTP client in the namespace fetches 64 KiB in 512-byte blocks,
/// acknowledges two blocks and stops: the status page lists the transfer
/// as under way with the 1024 bytes acknowledged, and drops it from the
/// list once the client sends ERROR.
#[test]
fn a_tftp_transfer_under_way_shows_its_progress() {
    if !can_run() {
        return;
    }
    // The client has a namespace of its own: replies from the server's
    // interface-bound socket must cross the veth pair.
    let client_ns = NetNs::create(&format!("bl-admtftpc-{}", std::process::id()));
    let ns = NetNs::create(&format!("bl-admtftp-{}", std::process::id()));
    // bootlun gives v0 its address (--net-address).
    ns.veth_to(&client_ns, ("v0", None), ("v1", Some("10.206.0.2/24")));
    let ipxe = TempDir::new("admtftp");
    std::fs::write(ipxe.path().join("undionly.kpxe"), vec![0x5a; 65536]).unwrap();
    let ipxe_dir = ipxe.path().to_str().unwrap().to_string();
    let (_server, admin) = serve_pxe(
        &ns,
        "10.206.0",
        &["--dhcp-mode", "off", "--ipxe-dir", &ipxe_dir],
    );
    let sock = client_ns.enter(|| std::net::UdpSocket::bind("10.206.0.2:0").unwrap());
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    let rrq = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x00512\x00";
    sock.send_to(rrq, "10.206.0.1:69").unwrap();
    let mut buf = [0u8; 1024];
    let (n, tid) = sock.recv_from(&mut buf).expect("OACK");
    assert_eq!(&buf[..2], b"\x00\x06", "OACK expected: {:?}", &buf[..n]);
    for ack in 0u16..=2 {
        sock.send_to(&[0, 4, (ack >> 8) as u8, ack as u8], tid)
            .unwrap();
        let (n, _) = sock.recv_from(&mut buf).expect("DATA");
        assert_eq!(&buf[..4], &[0, 3, 0, ack as u8 + 1], "block {}", ack + 1);
        assert_eq!(n, 4 + 512);
    }
    let status = || -> serde_json::Value {
        serde_json::from_str(&curl(&ns, &[&format!("http://{admin}/status.json")])).unwrap()
    };
    let mine = |j: &serde_json::Value| -> Option<serde_json::Value> {
        j["pxe_transfers"].as_array().and_then(|v| {
            v.iter()
                .find(|t| t["peer"] == "10.206.0.2" && t["protocol"] == "tftp")
                .cloned()
        })
    };
    let j = status();
    let t = mine(&j).unwrap_or_else(|| panic!("no transfer listed: {j:#}"));
    assert_eq!(t["in_progress"], true, "{t:#}");
    assert_eq!(t["file"], "undionly.kpxe", "{t:#}");
    assert_eq!(t["bytes"], 1024, "{t:#}");
    assert_eq!(t["total"], 65536, "{t:#}");
    let page = curl(&ns, &[&format!("http://{admin}/")]);
    assert!(
        page.contains("1.0 KiB of 64.0 KiB") && page.contains("sending 1%"),
        "{page}"
    );
    // The client gives up: the transfer is listed as failed, with why.
    sock.send_to(b"\x00\x05\x00\x00stop\0", tid).unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    let t = loop {
        let j = status();
        if let Some(t) = mine(&j).filter(|t| t["in_progress"] == false) {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still under way: {j:#}"
        );
        std::thread::yield_now();
    };
    assert_eq!(t["error"], "client sent error 0: stop", "{t:#}");
    assert_eq!(t["bytes"], 1024, "{t:#}");
    let metrics = curl(&ns, &[&format!("http://{admin}/metrics")]);
    assert!(
        metrics.contains("bootlun_pxe_files_total{protocol=\"tftp\",result=\"failed\"} 1"),
        "{metrics}"
    );
}
