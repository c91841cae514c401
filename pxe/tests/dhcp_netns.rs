//! DHCP server against busybox `udhcpc` across a veth pair between two
//! network namespaces: lease of the single pool address, boot file per
//! firmware (plain, BIOS PXE, UEFI PXE, ARM64 UEFI, iPXE), root path and
//! initiator IQN, no lease for a second client, and garbage on port 67
//! survived.

mod common_net;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Instant;

use bootlun_pxe::dhcp::{self, BootFiles, DhcpConfig};
use common_net::{can_run, Link};
use testkit::TempDir;

const ROOT_PATH: &str = "iscsi:10.77.1.1:::0:iqn.2026-11.org.bootlun:target";
const INITIATOR: &str = "iqn.2026-11.org.bootlun:initiator";

/// The udhcpc event script: on `bound`, dump the environment it was given.
const SCRIPT: &str = "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nenv > \"$LEASE_OUT.tmp\" && mv \"$LEASE_OUT.tmp\" \"$LEASE_OUT\"\n";

struct Udhcpc<'a> {
    link: &'a Link,
    dir: &'a TempDir,
    runs: usize,
}

impl Udhcpc<'_> {
    /// Run udhcpc once with `extra` arguments; the lease variables, or
    /// `None` when it got no lease.
    fn run(&mut self, tries: u32, extra: &[&str]) -> Option<HashMap<String, String>> {
        self.runs += 1;
        let out = self.dir.join(&format!("lease{}", self.runs));
        let script = self.dir.join("script");
        let (t, iface) = (tries.to_string(), self.link.client_if.clone());
        let mut args = vec![
            "busybox",
            "udhcpc",
            "-i",
            &iface,
            "-n",
            "-q",
            "-f",
            "-t",
            &t,
            "-T",
            "1",
            "-A",
            "1",
            "-s",
            script.to_str().unwrap(),
            "-O",
            "17",
            "-O",
            "43",
            "-O",
            "60",
            "-O",
            "203",
            "-O",
            "175",
        ];
        args.extend_from_slice(extra);
        let res = self
            .link
            .client_cmd(tries * 2 + 10, &args, &[("LEASE_OUT", &out)]);
        let log = String::from_utf8_lossy(&res.stderr);
        match std::fs::read_to_string(&out) {
            Ok(env) => {
                assert!(res.status.success(), "udhcpc failed after a lease: {log}");
                Some(
                    env.lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
            }
            Err(_) => {
                assert!(
                    !res.status.success(),
                    "udhcpc succeeded without a lease: {log}"
                );
                None
            }
        }
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Datagrams that must be dropped without harm.
fn garbage() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        vec![0; 1400],
    ];
    let mut hdr = vec![0u8; 240];
    hdr[0] = 1;
    hdr[1] = 1;
    hdr[2] = 255; // absurd hlen
    hdr[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let mut h = hdr.clone();
    h.extend_from_slice(&[53, 1, 1, 255]);
    v.push(h);
    let mut h = hdr.clone();
    h[2] = 6;
    h.extend_from_slice(&[53, 1, 1, 60, 250, b'P', b'X']); // option past the end
    v.push(h);
    let mut h = hdr.clone();
    h[0] = 2; // a BOOTREPLY
    h[2] = 6;
    h.extend_from_slice(&[53, 1, 2, 255]);
    v.push(h);
    let mut h = hdr;
    h[2] = 6;
    h.extend_from_slice(&[52, 1, 3, 53, 1, 1, 255]); // overload with junk fields
    h[44..236].fill(0x33);
    v.push(h);
    // Pseudo-random bytes.
    let mut x = 0x9e37_79b9u32;
    for len in [1usize, 17, 239, 240, 300, 576] {
        v.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect(),
        );
    }
    v
}

/// Broadcast the garbage to port 67, then a DHCPINFORM (which changes no
/// lease) and wait for its ACK: the server, which handles packets in
/// order, has then read and survived every piece of garbage.
fn send_garbage(link: &Link) {
    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    let iface = link.client_if.clone();
    link.in_client_ns(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.bind_device(Some(iface.as_bytes())).unwrap();
        s.set_broadcast(true).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into())
            .unwrap();
        let s: UdpSocket = s.into();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        for g in garbage() {
            s.send_to(&g, to).unwrap();
        }
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(0xb007_1077, z, z, z, z, &[2, 0x77, 0, 0, 0xee, 1]);
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Inform));
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        s.send_to(&buf, to).unwrap();
        let mut r = [0u8; 1500];
        loop {
            let (n, _) = s
                .recv_from(&mut r)
                .expect("no ACK to the INFORM sent after the garbage");
            let Ok(ack) = Message::decode(&mut Decoder::new(&r[..n])) else {
                continue;
            };
            if ack.xid() == 0xb007_1077 {
                assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
                break;
            }
        }
    });
}

#[test]
fn udhcpc_leases_boot_files_and_pool_exhaustion() {
    if !can_run(&[("busybox", "busybox")]) {
        return;
    }
    let t0 = Instant::now();
    let link = Link::new("dh", 1, false);
    let dir = TempDir::new("dhcp-netns");
    std::fs::write(dir.join("script"), SCRIPT).unwrap();
    std::fs::set_permissions(
        dir.join("script"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let server = link.server_ip;
    let mut cfg = DhcpConfig::new(
        &link.server_if,
        server,
        Ipv4Addr::new(255, 255, 255, 0),
        BootFiles::defaults_for(server),
    );
    cfg.boot.root_path = Some(ROOT_PATH.into());
    cfg.boot.initiator_iqn = Some(INITIATOR.into());
    cfg.boot.arm64_file = "snponly-arm64.efi".into();
    let handle = link
        .in_server_ns(move || dhcp::spawn(cfg))
        .expect("start DHCP server");
    eprintln!("setup: {:?}", t0.elapsed());

    let t = Instant::now();
    send_garbage(&link);
    eprintln!("garbage before: {:?}", t.elapsed());

    let mut c = Udhcpc {
        link: &link,
        dir: &dir,
        runs: 0,
    };
    let pool = "10.77.1.2";
    let cases: [(&str, Vec<String>, &str); 6] = [
        ("plain client", vec![], "undionly.kpxe"),
        (
            "BIOS PXE",
            vec![
                "-V".into(),
                "PXEClient:Arch:00000:UNDI:002001".into(),
                "-x".into(),
                "0x5d:0000".into(),
            ],
            "undionly.kpxe",
        ),
        (
            "UEFI x86-64 PXE",
            vec![
                "-V".into(),
                "PXEClient:Arch:00007:UNDI:003016".into(),
                "-x".into(),
                "0x5d:0007".into(),
            ],
            "snponly.efi",
        ),
        (
            "UEFI ARM64 PXE",
            vec![
                "-V".into(),
                "PXEClient:Arch:00011:UNDI:003016".into(),
                "-x".into(),
                "0x5d:000b".into(),
            ],
            "snponly-arm64.efi",
        ),
        (
            // UEFI HTTP boot (client architecture 16, x86-64 UEFI HTTP):
            // the boot file is a URL and the vendor class comes back.
            "UEFI x86-64 HTTP boot",
            vec![
                "-V".into(),
                "HTTPClient:Arch:00016:UNDI:003001".into(),
                "-x".into(),
                "0x5d:0010".into(),
            ],
            "http://10.77.1.1/ipxe/snponly.efi",
        ),
        (
            "iPXE",
            vec![
                "-V".into(),
                "PXEClient:Arch:00000:UNDI:002001".into(),
                "-x".into(),
                format!("0x4d:{}", hex("iPXE")),
                "-x".into(),
                "0xaf:b1050180861000".into(),
            ],
            "http://10.77.1.1/boot.ipxe",
        ),
    ];
    for (what, extra, file) in &cases {
        let t = Instant::now();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let env = c
            .run(3, &extra)
            .unwrap_or_else(|| panic!("{what}: no lease"));
        let get = |k: &str| {
            env.get(k)
                .map(String::as_str)
                .unwrap_or_else(|| panic!("{what}: no {k} in {env:?}"))
        };
        assert_eq!(get("ip"), pool, "{what}");
        assert_eq!(get("siaddr"), "10.77.1.1", "{what}");
        assert_eq!(get("serverid"), "10.77.1.1", "{what}");
        assert_eq!(get("router"), "10.77.1.1", "{what}");
        assert_eq!(get("subnet"), "255.255.255.0", "{what}");
        assert_eq!(get("broadcast"), "10.77.1.255", "{what}");
        assert_eq!(get("lease"), "4294967295", "{what}");
        assert_eq!(get("boot_file"), *file, "{what}");
        assert_eq!(get("bootfile"), *file, "{what}");
        assert_eq!(get("tftp"), "10.77.1.1", "{what}");
        assert_eq!(get("rootpath"), ROOT_PATH, "{what}");
        assert_eq!(get("opt203"), hex(INITIATOR), "{what}");
        let http_boot = extra.iter().any(|a| a.starts_with("HTTPClient"));
        let pxe = extra.contains(&"-V") && !http_boot;
        let class = if http_boot {
            Some("HTTPClient")
        } else {
            pxe.then_some("PXEClient")
        };
        assert_eq!(env.get("vendor").map(String::as_str), class, "{what}");
        assert_eq!(
            env.get("opt43").map(String::as_str),
            pxe.then_some("060108ff"),
            "{what}"
        );
        let ipxe = extra.iter().any(|a| a.starts_with("0xaf"));
        assert_eq!(
            env.get("opt175").map(String::as_str),
            ipxe.then_some("b00101"),
            "{what}"
        );
        if *what == "plain client" {
            // The reply was unicast via an ARP entry the server added.
            let n = std::process::Command::new("ip")
                .args([
                    "-n",
                    &link.server_ns,
                    "neigh",
                    "show",
                    pool,
                    "dev",
                    &link.server_if,
                ])
                .output()
                .unwrap();
            let n = String::from_utf8_lossy(&n.stdout).to_lowercase();
            let l = std::process::Command::new("ip")
                .args(["-n", &link.client_ns, "-o", "link", "show", &link.client_if])
                .output()
                .unwrap();
            let l = String::from_utf8_lossy(&l.stdout).to_lowercase();
            let mac = l
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .expect("client MAC");
            assert!(
                n.contains(&format!("lladdr {mac}")),
                "no ARP entry {pool} -> {mac} for the unicast reply: {n:?}"
            );
        }
        eprintln!("{what}: lease {pool}, boot file {file}: {:?}", t.elapsed());
    }

    let t = Instant::now();
    send_garbage(&link);
    // This time with the broadcast flag (-B): replies are broadcast
    // instead of unicast through an ARP entry.
    let env = c.run(3, &["-B"]).expect("no lease after garbage");
    assert_eq!(env.get("ip").map(String::as_str), Some(pool));
    eprintln!(
        "garbage after, then a lease again (broadcast flag): {:?}",
        t.elapsed()
    );

    // Another machine (other MAC, hence other client id): the one pool
    // address is taken, so no offer at all.
    let t = Instant::now();
    link.set_client_mac("02:77:00:00:00:02");
    assert!(
        c.run(2, &[]).is_none(),
        "second client got a lease from a full pool"
    );
    eprintln!("second client, pool full, no lease: {:?}", t.elapsed());

    assert!(!handle.is_finished(), "DHCP server thread ended");
    eprintln!("total: {:?}", t0.elapsed());
}

/// ProxyDHCP over real sockets: a PXE DISCOVER broadcast to port 67 gets
/// boot information without an address (a non-PXE one gets nothing), and
/// a REQUEST to port 4011 gets a unicast ACK.
#[test]
fn proxy_dhcp_on_67_and_4011() {
    use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    if !can_run(&[]) {
        return;
    }
    let t0 = Instant::now();
    let link = Link::new("dp", 3, true);
    let server = link.server_ip;
    let mut cfg = DhcpConfig::new(
        &link.server_if,
        server,
        Ipv4Addr::new(255, 255, 255, 0),
        BootFiles::defaults_for(server),
    );
    cfg.mode = dhcp::DhcpMode::Proxy;
    let handle = link
        .in_server_ns(move || dhcp::spawn(cfg))
        .expect("start ProxyDHCP");
    let iface = link.client_if.clone();
    link.in_client_ns(move || {
        let mac = [2, 0x77, 0, 0, 3, 2];
        let msg = |xid: u32, t: MessageType, pxe: bool, ciaddr: Ipv4Addr| {
            let mut m = Message::new_with_id(
                xid,
                ciaddr,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                &mac,
            );
            m.opts_mut().insert(DhcpOption::MessageType(t));
            if pxe {
                m.opts_mut().insert(DhcpOption::ClassIdentifier(
                    b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
                ));
                m.opts_mut()
                    .insert(DhcpOption::ClientSystemArchitecture(Architecture::BC));
            }
            let mut buf = Vec::new();
            m.encode(&mut Encoder::new(&mut buf)).unwrap();
            buf
        };
        let recv = |s: &UdpSocket| {
            let mut buf = [0u8; 1500];
            let (n, from) = s.recv_from(&mut buf).expect("no reply from ProxyDHCP");
            (Message::decode(&mut Decoder::new(&buf[..n])).unwrap(), from)
        };
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.bind_device(Some(iface.as_bytes())).unwrap();
        s.set_broadcast(true).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into())
            .unwrap();
        let s: UdpSocket = s.into();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        s.send_to(
            &msg(1, MessageType::Discover, false, Ipv4Addr::UNSPECIFIED),
            bcast,
        )
        .unwrap();
        s.send_to(
            &msg(2, MessageType::Discover, true, Ipv4Addr::UNSPECIFIED),
            bcast,
        )
        .unwrap();
        let (offer, _) = recv(&s);
        assert_eq!(offer.xid(), 2, "the non-PXE DISCOVER was answered");
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.siaddr(), Ipv4Addr::new(10, 77, 3, 1));
        assert!(offer.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert_eq!(
            offer.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"snponly.efi".to_vec()))
        );
        assert_eq!(
            offer.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );

        let ciaddr = Ipv4Addr::new(10, 77, 3, 2);
        let u = UdpSocket::bind((ciaddr, 0)).unwrap();
        u.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        u.send_to(
            &msg(3, MessageType::Request, true, ciaddr),
            (Ipv4Addr::new(10, 77, 3, 1), 4011),
        )
        .unwrap();
        let (ack, from) = recv(&u);
        assert_eq!(from, SocketAddr::from(([10, 77, 3, 1], 4011)));
        assert_eq!(ack.xid(), 3);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            ack.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"snponly.efi".to_vec()))
        );
    });
    assert!(!handle.is_finished(), "ProxyDHCP thread ended");
    eprintln!("proxyDHCP offer on 67 and ACK on 4011: {:?}", t0.elapsed());
}
