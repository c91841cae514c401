//! `/metrics`: the snapshot in the Prometheus text exposition format.

use super::status::Snapshot;
use std::fmt::Write;

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
}

pub(crate) fn render(s: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(8192));
    o.family(
        "bootlun_info",
        "gauge",
        "The target this bootlun serves (value 1).",
    );
    o.sample(
        "bootlun_info",
        &[
            ("version", &s.version),
            ("target", &s.target),
            ("portal", &s.portal),
        ],
        1,
    );
    o.family(
        "bootlun_uptime_seconds",
        "gauge",
        "Seconds since the target started.",
    );
    o.sample("bootlun_uptime_seconds", &[], s.uptime_secs);

    type LunField = fn(&super::status::LunRow) -> u64;
    let lun_families: [(&str, &str, &str, LunField); 6] = [
        (
            "bootlun_lun_size_bytes",
            "gauge",
            "Size of the LUN in bytes.",
            |l| l.size_bytes,
        ),
        (
            "bootlun_read_bytes_total",
            "counter",
            "Bytes READ commands sent to initiators.",
            |l| l.read_bytes,
        ),
        (
            "bootlun_write_bytes_total",
            "counter",
            "Bytes WRITE commands wrote to the medium.",
            |l| l.write_bytes,
        ),
        (
            "bootlun_read_commands_total",
            "counter",
            "READ commands completed.",
            |l| l.read_cmds,
        ),
        (
            "bootlun_write_commands_total",
            "counter",
            "WRITE commands completed with GOOD status.",
            |l| l.write_cmds,
        ),
        (
            "bootlun_command_errors_total",
            "counter",
            "Commands that ended with CHECK CONDITION.",
            |l| l.errors,
        ),
    ];
    for (name, kind, help, f) in lun_families {
        o.family(name, kind, help);
        for l in &s.luns {
            o.sample(name, &[("lun", &l.lun.to_string())], f(l));
        }
    }
    o.family(
        "bootlun_lun_read_only",
        "gauge",
        "1 if the LUN is write-protected.",
    );
    for l in &s.luns {
        o.sample(
            "bootlun_lun_read_only",
            &[("lun", &l.lun.to_string())],
            u8::from(l.read_only),
        );
    }

    o.family(
        "bootlun_command_duration_seconds",
        "histogram",
        "Time from a READ or WRITE command's arrival to its status being queued.",
    );
    for l in &s.luns {
        let lun = l.lun.to_string();
        for (op, h) in [("read", &l.read_latency), ("write", &l.write_latency)] {
            let mut cum = 0u64;
            for (i, n) in h.buckets.iter().enumerate() {
                cum += n;
                let le = match h.bounds_us.get(i) {
                    Some(us) => format!("{}", *us as f64 / 1e6),
                    None => "+Inf".to_string(),
                };
                o.sample(
                    "bootlun_command_duration_seconds_bucket",
                    &[("lun", &lun), ("op", op), ("le", &le)],
                    cum,
                );
            }
            o.sample(
                "bootlun_command_duration_seconds_sum",
                &[("lun", &lun), ("op", op)],
                h.sum_ns as f64 / 1e9,
            );
            o.sample(
                "bootlun_command_duration_seconds_count",
                &[("lun", &lun), ("op", op)],
                h.count,
            );
        }
    }

    o.family(
        "bootlun_sessions",
        "gauge",
        "Logged-in normal iSCSI sessions.",
    );
    o.sample("bootlun_sessions", &[], s.sessions.len());

    type RField = fn(&super::status::ReactorRow) -> u64;
    let reactor_families: [(&str, &str, &str, RField); 14] = [
        (
            "bootlun_reactor_connections",
            "gauge",
            "Connections the reactor serves now.",
            |r| r.connections_open,
        ),
        (
            "bootlun_reactor_connections_total",
            "counter",
            "Connections the reactor accepted.",
            |r| r.connections_total,
        ),
        (
            "bootlun_reactor_read_ops_total",
            "counter",
            "Disk reads the reactor issued.",
            |r| r.read_ops,
        ),
        (
            "bootlun_reactor_write_ops_total",
            "counter",
            "Disk writes the reactor issued.",
            |r| r.write_ops,
        ),
        (
            "bootlun_reactor_read_bytes_total",
            "counter",
            "Bytes the reactor read for initiators.",
            |r| r.read_bytes,
        ),
        (
            "bootlun_reactor_write_bytes_total",
            "counter",
            "Bytes the reactor wrote for initiators.",
            |r| r.write_bytes,
        ),
        (
            "bootlun_reactor_buffer_waits_total",
            "counter",
            "Commands that waited for an I/O buffer.",
            |r| r.buffer_waits,
        ),
        (
            "bootlun_reactor_loops_total",
            "counter",
            "Event loop iterations.",
            |r| r.loops,
        ),
        (
            "bootlun_reactor_sleeps_total",
            "counter",
            "Times the reactor slept waiting for completions.",
            |r| r.sleeps,
        ),
        (
            "bootlun_reactor_zero_copy_sends_total",
            "counter",
            "Sends that went out with zero-copy sendmsg (--zero-copy-send).",
            |r| r.zero_copy_sends,
        ),
        (
            "bootlun_reactor_zero_copy_copied_total",
            "counter",
            "Zero-copy sends the kernel reported it copied anyway.",
            |r| r.zero_copy_copied,
        ),
        (
            "bootlun_reactor_reads_in_place_total",
            "counter",
            "Read chunks sent straight from a memory-backed LU's mapping, with no copy into an I/O buffer.",
            |r| r.reads_in_place,
        ),
        (
            "bootlun_reactor_writes_in_place_total",
            "counter",
            "Receives of write data straight into a memory-backed LU's mapping, with no I/O buffer and no disk write.",
            |r| r.writes_in_place,
        ),
        (
            "bootlun_reactor_spin_window_microseconds",
            "gauge",
            "Adaptive polling: the learned spin window.",
            |r| r.spin_window_us,
        ),
    ];
    for (name, kind, help, f) in reactor_families {
        o.family(name, kind, help);
        for r in &s.reactors {
            o.sample(
                name,
                &[
                    ("reactor", &r.reactor.to_string()),
                    ("core", &r.core.to_string()),
                ],
                f(r),
            );
        }
    }
    o.family(
        "bootlun_reactor_polls_total",
        "counter",
        "Non-blocking completion polls: busy found work, idle found none.",
    );
    for r in &s.reactors {
        let (ri, c) = (r.reactor.to_string(), r.core.to_string());
        o.sample(
            "bootlun_reactor_polls_total",
            &[("reactor", &ri), ("core", &c), ("kind", "busy")],
            r.busy_polls,
        );
        o.sample(
            "bootlun_reactor_polls_total",
            &[("reactor", &ri), ("core", &c), ("kind", "idle")],
            r.idle_polls,
        );
    }
    if let Some(p) = &s.pxe {
        o.family(
            "bootlun_pxe_boot_entries",
            "gauge",
            "Boot menu entries found.",
        );
        o.sample(
            "bootlun_pxe_boot_entries",
            &[("interface", &p.interface)],
            p.boot_entries.len(),
        );
        o.family(
            "bootlun_pxe_clients",
            "gauge",
            "Network-booting clients by the last boot stage they reached.",
        );
        for stage in [
            "DHCP offer",
            "iPXE",
            "menu",
            "kernel",
            "initrd",
            "iSCSI login",
        ] {
            let n = s.pxe_clients.iter().filter(|c| c.stage == stage).count();
            o.sample("bootlun_pxe_clients", &[("stage", stage)], n);
        }
        o.family(
            "bootlun_dhcp_leases",
            "gauge",
            "Live DHCP leases: bound (ACKed) or only offered.",
        );
        for (state, bound) in [("bound", true), ("offered", false)] {
            let n = s.dhcp_leases.iter().filter(|l| l.bound == bound).count();
            o.sample("bootlun_dhcp_leases", &[("state", state)], n);
        }
        let t = bootlun_pxe::progress::totals();
        o.family(
            "bootlun_dhcp_offers_total",
            "counter",
            "DHCP and proxyDHCP offers made.",
        );
        o.sample("bootlun_dhcp_offers_total", &[], t.dhcp_offers);
        o.family(
            "bootlun_pxe_files_total",
            "counter",
            "Files requested over TFTP and HTTP: served, or failed (refused, or broken off before the end).",
        );
        for (proto, ok, failed) in [
            ("tftp", t.tftp_ok, t.tftp_failed),
            ("http", t.http_ok, t.http_failed),
        ] {
            o.sample(
                "bootlun_pxe_files_total",
                &[("protocol", proto), ("result", "served")],
                ok,
            );
            o.sample(
                "bootlun_pxe_files_total",
                &[("protocol", proto), ("result", "failed")],
                failed,
            );
        }
        o.family(
            "bootlun_pxe_sent_bytes_total",
            "counter",
            "Bytes of files sent over TFTP and HTTP.",
        );
        o.sample(
            "bootlun_pxe_sent_bytes_total",
            &[("protocol", "tftp")],
            t.tftp_bytes,
        );
        o.sample(
            "bootlun_pxe_sent_bytes_total",
            &[("protocol", "http")],
            t.http_bytes,
        );
        o.family(
            "bootlun_pxe_recent_transfers",
            "gauge",
            "Files served by TFTP and HTTP among the last 32 requests.",
        );
        for proto in ["tftp", "http"] {
            let n = s
                .pxe_transfers
                .iter()
                .filter(|t| t.protocol == proto)
                .count();
            o.sample("bootlun_pxe_recent_transfers", &[("protocol", proto)], n);
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaping() {
        assert_eq!(super::esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
