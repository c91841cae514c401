//! `bootlun status`: fetch `/status.json` from a running `serve` and print it.

use super::page::{human_bytes, human_secs};
use super::status::Snapshot;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `bootlun status` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// Address of the admin listener (`serve --admin-listen`).
    #[arg(long, value_name = "ADDR:PORT", default_value = super::DEFAULT_ADMIN)]
    admin: String,
    /// User name for an admin listener protected with --admin-user.
    #[arg(long, value_name = "NAME")]
    admin_user: Option<String>,
    /// File holding its password (mode 0600).
    #[arg(long, value_name = "FILE")]
    admin_password_file: Option<PathBuf>,
    /// Print the raw JSON instead of the summary.
    #[arg(long)]
    json: bool,
}

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 32 << 20;

fn fail(msg: String) -> ExitCode {
    eprintln!("bootlun status: {msg}");
    ExitCode::from(1)
}

pub(crate) fn main(args: &StatusArgs) -> ExitCode {
    let auth = match (&args.admin_user, &args.admin_password_file) {
        (None, None) => None,
        (Some(u), Some(f)) => match super::read_password_file("--admin-password-file", f) {
            Ok(p) => Some(super::Credentials {
                user: u.clone(),
                password: p,
            }),
            Err(e) => {
                eprintln!("bootlun status: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!(
                "bootlun status: --admin-user and --admin-password-file must be given together"
            );
            return ExitCode::from(2);
        }
    };
    let addrs: Vec<SocketAddr> = match args.admin.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => {
            eprintln!(
                "bootlun status: --admin {}: expected ADDR:PORT, for example 127.0.0.1:8080",
                args.admin
            );
            return ExitCode::from(2);
        }
    };
    let Some(mut sock) = addrs
        .iter()
        .find_map(|a| TcpStream::connect_timeout(a, TIMEOUT).ok())
    else {
        return fail(format!(
            "no bootlun admin listener on {}: is `bootlun serve` running? (--admin-listen)",
            args.admin
        ));
    };
    let _ = sock.set_read_timeout(Some(TIMEOUT));
    let _ = sock.set_write_timeout(Some(TIMEOUT));
    let mut req = format!(
        "GET /status.json HTTP/1.0\r\nHost: {}\r\nUser-Agent: bootlun-status\r\n",
        args.admin
    );
    if let Some(c) = &auth {
        req.push_str(&format!("Authorization: {}\r\n", c.header()));
    }
    req.push_str("\r\n");
    if let Err(e) = sock.write_all(req.as_bytes()) {
        return fail(format!("{}: {e}", args.admin));
    }
    let mut resp = Vec::new();
    if let Err(e) = sock.take(MAX_BODY as u64).read_to_end(&mut resp) {
        return fail(format!("{}: reading the answer: {e}", args.admin));
    }
    let Some(split) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return fail(format!("{}: not an HTTP answer", args.admin));
    };
    let head = String::from_utf8_lossy(&resp[..split]);
    let body = &resp[split + 4..];
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    match code {
        200 => {}
        401 => {
            return fail(format!(
                "{} wants a user name and password: give --admin-user and --admin-password-file{}",
                args.admin,
                if auth.is_some() {
                    " (the ones given were refused)"
                } else {
                    ""
                }
            ))
        }
        _ => {
            return fail(format!(
                "{}: answered {}; is this a bootlun admin listener?",
                args.admin,
                head.lines().next().unwrap_or("")
            ))
        }
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(body));
        return ExitCode::SUCCESS;
    }
    match serde_json::from_slice::<Snapshot>(body) {
        Ok(s) => {
            print!("{}", summary(&s));
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{}: unreadable status.json: {e}", args.admin)),
    }
}

/// The terminal summary of a snapshot.
pub(crate) fn summary(s: &Snapshot) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "bootlun {}: target {} on {}, up {}",
        s.version,
        s.target,
        s.portal,
        human_secs(s.uptime_secs)
    );
    let last = |v: &[u64]| v.last().copied().unwrap_or(0);
    let h = &s.history;
    let _ = writeln!(
        o,
        "now: read {}/s ({} IOPS), write {}/s ({} IOPS)",
        human_bytes(last(&h.read_bytes_per_sec)),
        last(&h.read_iops),
        human_bytes(last(&h.write_bytes_per_sec)),
        last(&h.write_iops)
    );
    let _ = writeln!(o, "\nLUNs:");
    for l in &s.luns {
        let mut flags = vec![if l.write_cache {
            "write-back"
        } else {
            "write-through"
        }];
        if l.read_only {
            flags.push("read-only");
        }
        if l.thin {
            flags.push("thin");
        }
        let _ = writeln!(
            o,
            "  LUN {}: {} {} ({}-byte blocks, {}); read {} in {} cmds (mean {} us), wrote {} in {} cmds (mean {} us), {} errors{}",
            l.lun,
            l.backend,
            human_bytes(l.size_bytes),
            l.block_size,
            flags.join(", "),
            human_bytes(l.read_bytes),
            l.read_cmds,
            l.read_latency.mean_us(),
            human_bytes(l.write_bytes),
            l.write_cmds,
            l.write_latency.mean_us(),
            l.errors,
            l.sanitize_percent
                .map(|p| format!(", sanitize {p}% done"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(o, "\nSessions: {}", s.sessions.len());
    for x in &s.sessions {
        let d = |b: bool| if b { "CRC32C" } else { "None" };
        let _ = writeln!(
            o,
            "  {} from {} on reactor {} (core {}), up {}, digests {}/{}, MaxRecvDataSegmentLength {}/{}; read {}, wrote {}, {} commands",
            x.initiator,
            x.peer,
            x.reactor,
            x.core,
            human_secs(x.uptime_secs),
            d(x.header_digest),
            d(x.data_digest),
            x.initiator_max_recv_dsl,
            x.target_max_recv_dsl,
            human_bytes(x.read_bytes),
            human_bytes(x.write_bytes),
            x.commands
        );
    }
    let _ = writeln!(o, "\nReactors:");
    for r in &s.reactors {
        let _ = writeln!(
            o,
            "  reactor {} (core {}): {} connections open, read {}, wrote {}, polls {} busy / {} idle",
            r.reactor,
            r.core,
            r.connections_open,
            human_bytes(r.read_bytes),
            human_bytes(r.write_bytes),
            r.busy_polls,
            r.idle_polls
        );
    }
    if let Some(p) = &s.pxe {
        let _ = writeln!(
            o,
            "\nPXE on {} ({}): {} boot entries",
            p.interface,
            p.server,
            p.boot_entries.len()
        );
        for b in &p.boot_entries {
            let _ = writeln!(o, "  {}: {}", b.id, b.title);
        }
        for l in &s.dhcp_leases {
            let _ = writeln!(
                o,
                "  lease {} -> {} ({})",
                l.client,
                l.addr,
                if l.bound { "bound" } else { "offered" }
            );
        }
        for c in &s.pxe_clients {
            let _ = writeln!(
                o,
                "  client {} {}: reached {} ({})",
                c.mac.as_deref().unwrap_or("-"),
                c.ip.as_deref().unwrap_or("-"),
                c.stage,
                c.detail
            );
        }
    }
    o
}
