//! Data integrity under concurrency: many overlapping-in-time writes of
//! odd sizes and offsets (crossing buffer-sized chunks, R2T bursts and
//! immediate data) from a real initiator (QEMU's libiscsi via qemu-io),
//! then reads that check every byte against the pattern written.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// (offset, length, pattern byte) of each request: lengths from 512 bytes
/// to a bit over 2 MiB, offsets block aligned but not chunk aligned.
fn requests() -> Vec<(u64, u64, u8)> {
    (0..24u64)
        .map(|i| {
            let off = i * 3 * 1024 * 1024 + i * 512;
            let len = match i % 4 {
                0 => 512,
                1 => (i + 1) * 4096,
                2 => (i + 1) * 131072 + 512 * i,
                _ => 2 * 1024 * 1024 + 4096,
            };
            (off, len, (i + 1) as u8)
        })
        .collect()
}

fn qemu_io(url: &str, cmds: &[String]) -> ToolOutput {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg("raw");
    for x in cmds {
        c.arg("-c").arg(x);
    }
    c.arg(url);
    run_tool(&mut c, Duration::from_secs(120))
}

/// Every request as `aio_write` (or `aio_read`) with its pattern, all in
/// flight at once, then a flush.
fn all_requests(op: &str) -> Vec<String> {
    let mut cmds: Vec<String> = requests()
        .iter()
        .map(|(o, l, p)| format!("{op} -P {p} {o} {l}"))
        .collect();
    cmds.push("aio_flush".into());
    cmds
}

fn write_all(url: &str) {
    let out = qemu_io(url, &all_requests("aio_write"));
    out.assert_success();
    assert!(
        !out.stdout.contains("error") && !out.stderr.contains("error"),
        "{}",
        out.stderr
    );
}

/// Every read finished and matched the pattern written.
fn assert_reads_intact(out: &ToolOutput) {
    out.assert_success();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !text.contains("Pattern verification failed"),
        "data mismatch:\n{text}"
    );
    assert_eq!(
        text.matches("read ").count(),
        requests().len(),
        "every read completed:\n{text}"
    );
}

fn check(url: &str) {
    write_all(url);
    // Read back in a separate session, again all requests in flight.
    assert_reads_intact(&qemu_io(url, &all_requests("aio_read")));
}

#[test]
fn concurrent_writes_read_back_intact() {
    if !require_tool("qemu-io", "qemu-utils") {
        return;
    }
    // Small buffers force multi-chunk commands; few buffers force
    // TASK SET FULL / buffer waits, which the initiator must ride out.
    let mut server = Server::start(&["ram:96M"], &["--buffer-size", "256K", "--buffers", "16"]);
    check(&server.url(0));
    server.stop();
}

#[test]
fn concurrent_io_with_default_buffers_on_two_reactors() {
    if !require_tool("qemu-io", "qemu-utils") {
        return;
    }
    let mut server = Server::start(&["ram:96M"], &["--cores", "0,1"]);
    check(&server.url(0));
    server.stop();
}

#[test]
fn reads_waiting_for_buffers_across_connections_all_complete() {
    if !require_tool("qemu-io", "qemu-utils") {
        return;
    }
    // One reactor with 8 small buffers shared by two sessions that each
    // keep 24 reads in flight: reads must queue for buffers freed by the
    // other connection and all of them must finish.
    let mut server = Server::start(
        &["ram:96M"],
        &["--cores", "0", "--buffers", "8", "--buffer-size", "64K"],
    );
    let url = server.url(0);
    write_all(&url);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || qemu_io(&url, &all_requests("aio_read")))
        })
        .collect();
    for h in readers {
        assert_reads_intact(&h.join().unwrap());
    }
    server.stop();
}
