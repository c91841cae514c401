//! Feeds a sequence of DHCP packets (raw, or a BOOTP header plus
//! arbitrary options) to `dhcp::handle_packet_at` in server, proxy and off
//! mode against one lease table. Replies must be well-formed BOOTP replies
//! whose offered address is usable on the subnet.
#![no_main]

use arbitrary::Arbitrary;
use bootlun_pxe::dhcp::{handle_packet_at, BootFiles, DhcpConfig, DhcpMode, LeaseTable, RecvInfo};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

#[derive(Arbitrary, Debug)]
enum Packet {
    Raw(Vec<u8>),
    Built {
        op: u8,
        htype: u8,
        hlen: u8,
        xid: u32,
        flags: u16,
        ciaddr: [u8; 4],
        giaddr: [u8; 4],
        chaddr: [u8; 16],
        /// Message type (option 53), when `Some`.
        msg_type: Option<u8>,
        /// Requested address (option 50): offset in the subnet.
        requested: Option<u8>,
        /// Server identifier (option 54): ours or not.
        server_id: Option<bool>,
        /// PXEClient vendor class (option 60) and architecture (option 93).
        pxe: bool,
        arch: Option<u16>,
        /// "iPXE" user class (option 77).
        ipxe: bool,
        options: Vec<(u8, Vec<u8>)>,
        /// Overloaded `file` / `sname` areas (option 52).
        overload: Option<(u8, Vec<u8>, Vec<u8>)>,
        end: bool,
        trailing: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Step {
    packet: Packet,
    pxe_port: bool,
    src: Option<([u8; 4], u16)>,
    /// Seconds the clock moves forward before this packet.
    advance: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    mode: u8,
    pool_lo: u8,
    pool_len: u8,
    prefix: u8,
    lease_secs: Option<u32>,
    statics: Vec<([u8; 6], u8)>,
    root_path: bool,
    steps: Vec<Step>,
}

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

fn build(p: &Packet) -> Vec<u8> {
    match p {
        Packet::Raw(b) => b.clone(),
        Packet::Built {
            op,
            htype,
            hlen,
            xid,
            flags,
            ciaddr,
            giaddr,
            chaddr,
            msg_type,
            requested,
            server_id,
            pxe,
            arch,
            ipxe,
            options,
            overload,
            end,
            trailing,
        } => {
            let mut b = vec![0u8; 236];
            b[0] = if *op < 200 { 1 } else { *op };
            b[1] = *htype;
            b[2] = if *hlen < 200 { 6 } else { *hlen };
            b[4..8].copy_from_slice(&xid.to_be_bytes());
            b[10..12].copy_from_slice(&flags.to_be_bytes());
            b[12..16].copy_from_slice(ciaddr);
            b[24..28].copy_from_slice(giaddr);
            b[28..44].copy_from_slice(chaddr);
            b.extend_from_slice(&[99, 130, 83, 99]);
            if let Some(t) = msg_type {
                b.extend_from_slice(&[53, 1, *t % 10]);
            }
            if let Some(r) = requested {
                b.extend_from_slice(&[50, 4, 192, 168, 77, *r]);
            }
            if let Some(ours) = server_id {
                let ip = if *ours { SERVER.octets() } else { [10, 0, 0, 1] };
                b.extend_from_slice(&[54, 4]);
                b.extend_from_slice(&ip);
            }
            if *pxe {
                let v = b"PXEClient:Arch:00007:UNDI:003016";
                b.extend_from_slice(&[60, v.len() as u8]);
                b.extend_from_slice(v);
            }
            if let Some(a) = arch {
                b.extend_from_slice(&[93, 2]);
                b.extend_from_slice(&a.to_be_bytes());
            }
            if *ipxe {
                b.extend_from_slice(&[77, 4]);
                b.extend_from_slice(b"iPXE");
            }
            for (code, data) in options.iter().take(32) {
                let d = &data[..data.len().min(255)];
                b.push(*code);
                b.push(d.len() as u8);
                b.extend_from_slice(d);
            }
            if let Some((o, file, sname)) = overload {
                b.extend_from_slice(&[52, 1, *o]);
                let f = &file[..file.len().min(128)];
                b[108..108 + f.len()].copy_from_slice(f);
                let s = &sname[..sname.len().min(64)];
                b[44..44 + s.len()].copy_from_slice(s);
            }
            if *end {
                b.push(255);
            }
            b.extend_from_slice(&trailing[..trailing.len().min(64)]);
            b
        }
    }
}

fuzz_target!(|input: Input| {
    let prefix = 16 + u32::from(input.prefix % 16); // /16 ... /31
    let netmask = Ipv4Addr::from(u32::MAX << (32 - prefix));
    let mut boot = BootFiles::defaults_for(SERVER);
    if input.root_path {
        boot.root_path = Some(format!("iscsi:{SERVER}::::iqn.2026-11.org.bootlun:target"));
        boot.initiator_iqn = Some("iqn.2026-11.org.bootlun:client".into());
    }
    let mut cfg = DhcpConfig::new("fuzz0", SERVER, netmask, boot);
    cfg.mode = match input.mode % 3 {
        0 => DhcpMode::Server,
        1 => DhcpMode::Proxy,
        _ => DhcpMode::Off,
    };
    let lo = u32::from(SERVER) + u32::from(input.pool_lo);
    cfg.pool = (Ipv4Addr::from(lo), Ipv4Addr::from(lo + u32::from(input.pool_len)));
    cfg.lease_secs = input.lease_secs;
    cfg.static_leases = input
        .statics
        .iter()
        .take(8)
        .map(|(m, o)| (*m, Ipv4Addr::new(192, 168, 77, *o)))
        .collect();

    let mut table = LeaseTable::new();
    let mut now = Instant::now();
    for step in input.steps.iter().take(32) {
        now += Duration::from_secs(u64::from(step.advance));
        let pkt = build(&step.packet);
        let info = RecvInfo {
            local_port: if step.pxe_port { 4011 } else { 67 },
            src: step.src.map(|(a, p)| SocketAddrV4::new(Ipv4Addr::from(a), p)),
        };
        let Some(reply) = handle_packet_at(&mut table, &cfg, &pkt, info, now) else {
            continue;
        };
        assert!(cfg.mode != DhcpMode::Off, "reply in off mode");
        assert!(matches!(reply.msg_type, 2 | 5 | 6), "reply type {}", reply.msg_type);
        let b = &reply.bytes;
        assert!(b.len() >= 240, "short reply");
        assert_eq!(b[0], 2, "reply op");
        assert_eq!(&b[236..240], &[99, 130, 83, 99], "reply magic");
        assert_eq!(&b[4..8], &pkt[4..8], "reply xid");
        let yiaddr = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
        if reply.msg_type == 6 || cfg.mode == DhcpMode::Proxy || yiaddr.is_unspecified() {
            continue;
        }
        if cfg.static_leases.iter().any(|(_, a)| *a == yiaddr) {
            // Fixed addresses are the operator's choice.
            continue;
        }
        let m = u32::from(netmask);
        assert_eq!(u32::from(yiaddr) & m, u32::from(SERVER) & m, "offered {yiaddr} off the subnet");
        assert_ne!(yiaddr, SERVER, "offered the server's own address");
        if prefix < 31 {
            let host = u32::from(yiaddr) & !m;
            assert!(host != 0 && host != !m, "offered network/broadcast address {yiaddr}");
        }
    }
});
