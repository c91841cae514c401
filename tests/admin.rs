//! The admin listener: `/metrics` in Prometheus text format counts what a
//! client moved, `/status.json` lists the logged-in session, basic auth,
//! hostile requests, `bootlun status`, and reactors that spin only as
//! `--poll` says.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// `serve` with an admin listener on a free loopback port, and that port.
fn start(luns: &[&str], extra: &[&str]) -> Option<(Server, SocketAddr)> {
    if !bootlun_cli_available() || target_kind() != TargetKind::Bootlun {
        return None;
    }
    let mut args = vec!["--admin-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Server::start(luns, &args);
    let line = server
        .log
        .wait_for(WAIT, |l| l.contains("admin page on http://"))
        .unwrap_or_else(|| panic!("no `admin page on` line:\n{}", server.output()));
    let rest = &line[line.find("http://").unwrap() + 7..];
    let addr: SocketAddr = rest.split('/').next().unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{line}");
    Some((server, addr))
}

struct Answer {
    code: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send `raw` and read the answer until the server closes.
fn exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(WAIT))?;
    s.set_write_timeout(Some(WAIT))?;
    s.write_all(raw)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(Answer {
        code,
        head,
        body: resp[split..].to_vec(),
    })
}

fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Answer {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    exchange(addr, req.as_bytes()).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

fn status_json(addr: SocketAddr) -> serde_json::Value {
    let a = get(addr, "/status.json", None);
    assert_eq!(a.code, 200, "{}{}", a.head, a.text());
    serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("status.json: {e}\n{}", a.text()))
}

fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let a = get(addr, "/metrics", None);
    assert_eq!(a.code, 200, "{}{}", a.head, a.text());
    assert!(a.head.contains("text/plain; version=0.0.4"), "{}", a.head);
    let text = a.text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("/metrics: {e}\n{text}"))
}

/// The value of `metric` with every label of `labels`.
fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {metric}{labels:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric}: unexpected value {other:?}"),
    }
}

#[test]
fn metrics_count_the_bytes_qemu_img_moved() {
    if !require_tool("qemu-img", "qemu-utils") {
        return;
    }
    const SIZE: usize = 16 << 20;
    let Some((server, admin)) = start(&["ram:16M"], &[]) else {
        return;
    };
    let before = scrape(admin);
    assert_eq!(
        value(&before, "bootlun_write_bytes_total", &[("lun", "0")]),
        0.0
    );
    assert_eq!(value(&before, "bootlun_sessions", &[]), 0.0);
    for name in [
        "bootlun_read_bytes_total",
        "bootlun_write_bytes_total",
        "bootlun_reactor_polls_total",
        "bootlun_sessions",
    ] {
        assert!(before.docs.contains_key(name), "no # HELP for {name}");
    }

    let dir = TempDir::new("admin-metrics");
    let src = dir.join("src.raw");
    std::fs::write(&src, pseudo_random_bytes(SIZE, 0xad31)).unwrap();
    let back = dir.join("back.raw");
    let url = server.url(0);
    qemu_img_write_and_read_back(&src, &url, &back);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap());

    let after = scrape(admin);
    let written = value(&after, "bootlun_write_bytes_total", &[("lun", "0")]);
    let read = value(&after, "bootlun_read_bytes_total", &[("lun", "0")]);
    println!("LUN 0: {written} bytes written, {read} bytes read");
    // Random data has no zero blocks to skip: every byte went over the wire.
    assert_eq!(
        written, SIZE as f64,
        "write counter vs the image qemu-img wrote"
    );
    assert!(read >= SIZE as f64, "read counter {read} < {SIZE}");
    assert!(value(&after, "bootlun_write_commands_total", &[("lun", "0")]) >= 1.0);
    // The reactors count the same bytes.
    let per_reactor = |m: &str| -> f64 {
        after
            .samples
            .iter()
            .filter(|x| x.metric == m)
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => panic!("{m} is not a counter"),
            })
            .sum()
    };
    assert_eq!(per_reactor("bootlun_reactor_write_bytes_total"), written);
    assert_eq!(per_reactor("bootlun_reactor_read_bytes_total"), read);
    assert!(
        after
            .samples
            .iter()
            .any(|x| x.metric == "bootlun_reactor_polls_total"
                && x.labels.get("kind") == Some("idle")),
        "no idle poll sample"
    );
    // Latency histograms: cumulative buckets ending in +Inf = every command.
    for (op, cmds) in [
        ("write", "bootlun_write_commands_total"),
        ("read", "bootlun_read_commands_total"),
    ] {
        let h = after
            .samples
            .iter()
            .find(|x| {
                x.metric == "bootlun_command_duration_seconds"
                    && x.labels.get("lun") == Some("0")
                    && x.labels.get("op") == Some(op)
            })
            .unwrap_or_else(|| panic!("no {op} latency histogram"));
        let prometheus_parse::Value::Histogram(buckets) = &h.value else {
            panic!("{op} latency is not a histogram: {:?}", h.value);
        };
        assert!(buckets
            .windows(2)
            .all(|w| w[0].count <= w[1].count && w[0].less_than < w[1].less_than));
        let last = buckets.last().unwrap();
        assert!(last.less_than.is_infinite(), "{buckets:?}");
        assert_eq!(last.count, value(&after, cmds, &[("lun", "0")]), "{op}");
        assert!(last.count >= 1.0);
    }
    let j = status_json(admin);
    assert_eq!(j["luns"][0]["write_bytes"].as_u64(), Some(SIZE as u64));
}

#[test]
fn status_json_lists_the_logged_in_session() {
    let Some((server, admin)) = start(&["ram:4M"], &[]) else {
        return;
    };
    let j = status_json(admin);
    assert_eq!(j["target"].as_str(), Some(server.iqn.as_str()));
    assert_eq!(j["luns"][0]["size_bytes"].as_u64(), Some(4 << 20));
    assert_eq!(j["sessions"].as_array().map(Vec::len), Some(0));

    let name = initiator_name("admin-status");
    let mut conn = IscsiConn::connect(server.addr);
    conn.login(&name, &server.iqn).unwrap();
    conn.test_unit_ready(0).unwrap();
    let j = status_json(admin);
    let sessions = j["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{j:#}");
    assert_eq!(sessions[0]["initiator"].as_str(), Some(name.as_str()));
    assert_eq!(
        sessions[0]["peer"].as_str(),
        Some(conn.local_addr().to_string().as_str())
    );
    let page = get(admin, "/", None);
    assert_eq!(page.code, 200);
    assert!(page.text().contains(&name), "page lacks the session row");
    let m = scrape(admin);
    assert_eq!(value(&m, "bootlun_sessions", &[]), 1.0);

    conn.logout();
    drop(conn);
    // The session leaves the table once its connection has drained.
    let deadline = Instant::now() + WAIT;
    loop {
        let j = status_json(admin);
        if j["sessions"].as_array().map(Vec::len) == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "session still listed: {j:#}");
        std::thread::yield_now();
    }
    assert!(
        server
            .output()
            .contains(&format!("logout of initiator {name}")),
        "{}",
        server.output()
    );
}

fn password_file(dir: &TempDir, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("admin-password");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn basic_auth_refuses_wrong_credentials() {
    let dir = TempDir::new("admin-auth");
    let pw = password_file(&dir, "correct horse battery\n", 0o600);
    let pw_s = pw.to_string_lossy().into_owned();
    let Some((_server, admin)) = start(
        &["ram:1M"],
        &["--admin-user", "operator", "--admin-password-file", &pw_s],
    ) else {
        return;
    };
    let basic = |s: &str| {
        // A tiny base64 encoder keeps the test free of the code under test.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut o = String::from("Basic ");
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    o.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    o.push('=');
                }
            }
        }
        o
    };
    for path in ["/", "/status.json", "/metrics"] {
        let a = get(admin, path, None);
        assert_eq!(a.code, 401, "{path} without credentials: {}", a.head);
        assert!(
            a.head.contains("WWW-Authenticate: Basic realm=\"bootlun\""),
            "{}",
            a.head
        );
        let a = get(admin, path, Some(&basic("operator:wrong password")));
        assert_eq!(a.code, 401, "{path} with a wrong password");
        let a = get(admin, path, Some(&basic("intruder:correct horse battery")));
        assert_eq!(a.code, 401, "{path} with a wrong user");
        let a = get(admin, path, Some(&basic("operator:correct horse battery")));
        assert_eq!(a.code, 200, "{path} with the right credentials: {}", a.head);
    }

    // `bootlun status` with and without them.
    let bin = bootlun_bin();
    let out = run_tool(
        Command::new(&bin).args(["status", "--admin", &admin.to_string()]),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("--admin-user"), "{}", out.stderr);
    let out = run_tool(
        Command::new(&bin).args([
            "status",
            "--admin",
            &admin.to_string(),
            "--admin-user",
            "operator",
            "--admin-password-file",
            &pw_s,
        ]),
        WAIT,
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("LUN 0"), "{}", out.stdout);
}

#[test]
fn a_readable_password_file_is_refused() {
    if !bootlun_cli_available() || target_kind() != TargetKind::Bootlun {
        return;
    }
    let dir = TempDir::new("admin-auth-mode");
    let pw = password_file(&dir, "correct horse battery\n", 0o644);
    let out = run_tool(
        Command::new(bootlun_bin()).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--lun",
            "ram:1M",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-user",
            "operator",
            "--admin-password-file",
            &pw.to_string_lossy(),
        ]),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
}

#[test]
fn hostile_requests_get_an_error_and_the_page_keeps_serving() {
    let Some((mut server, admin)) = start(&["ram:1M"], &[]) else {
        return;
    };
    let mut oversize = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    oversize.extend(std::iter::repeat_n(b'a', 64 * 1024));
    oversize.extend(b"\r\n\r\n");
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        many.extend(format!("X-{i}: y\r\n").bytes());
    }
    many.extend(b"\r\n");
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            &[400],
        ),
        ("no method", b" / HTTP/1.1\r\n\r\n".to_vec(), &[400]),
        (
            "bad version",
            b"GET / HTTP/9.9\r\n\r\n".to_vec(),
            &[400, 505],
        ),
        (
            "POST",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            &[405],
        ),
        ("oversize header", oversize, &[431]),
        ("too many headers", many, &[431]),
        (
            "unknown path",
            b"GET /../../etc/passwd HTTP/1.1\r\n\r\n".to_vec(),
            &[404],
        ),
        (
            "binary path",
            b"GET /\xff\xfe HTTP/1.1\r\n\r\n".to_vec(),
            &[400, 404],
        ),
    ];
    for (what, raw, codes) in cases {
        match exchange(admin, &raw) {
            // A reset is a close too.
            Err(e) => println!("{what}: connection closed ({e})"),
            Ok(a) if a.code == 0 => println!("{what}: closed without an answer"),
            Ok(a) => {
                println!("{what}: {}", a.head.lines().next().unwrap_or(""));
                assert!(codes.contains(&a.code), "{what}: {}", a.head);
            }
        }
        assert!(server.is_running(), "server died after {what}");
        assert_eq!(get(admin, "/metrics", None).code, 200, "after {what}");
    }
    // A client that connects and says nothing does not block others.
    let _idle = TcpStream::connect(admin).unwrap();
    assert_eq!(get(admin, "/status.json", None).code, 200);
    assert!(server.is_running());
}

#[test]
fn bootlun_status_prints_the_luns_or_says_nothing_listens() {
    let Some((server, admin)) = start(
        &["ram:2M"],
        &["--target-name", "iqn.2026-11.org.bootlun:status-test"],
    ) else {
        return;
    };
    let bin = bootlun_bin();
    let out = run_tool(
        Command::new(&bin).args(["status", "--admin", &admin.to_string()]),
        WAIT,
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("iqn.2026-11.org.bootlun:status-test"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("LUN 0: ram"), "{}", out.stdout);
    assert!(out.stdout.contains("Sessions: 0"), "{}", out.stdout);
    drop(server);

    // A port nobody listens on: bind one, note it, release it.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let out = run_tool(Command::new(&bin).args(["status", "--admin", &addr]), WAIT);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let want = format!(
        "no bootlun admin listener on {addr}: is `bootlun serve` running? (--admin-listen)"
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
}

/// Headless Chromium loads the page while `qemu-img bench` writes: after
/// the script ran, the DOM holds the session row and a nonzero write
/// rate. The screenshot is saved as target/admin-page.png.
#[test]
fn chromium_shows_the_session_and_live_throughput() {
    if !require_tool("chromium", "chromium") || !require_tool("qemu-img", "qemu-utils") {
        return;
    }
    let Some((server, admin)) = start(&["ram:64M"], &[]) else {
        return;
    };
    // Bounded (the count), and stopped by its PID once the page is read.
    let mut bench = Spawned::spawn(
        "qemu-img-bench",
        Command::new("qemu-img").args([
            "bench",
            "-w",
            "-c",
            "2000000",
            "-s",
            "65536",
            "-d",
            "8",
            "-f",
            "raw",
            &server.url(0),
        ]),
        Instant::now(),
        false,
    );
    // Wait until the session is listed and bytes are moving.
    let deadline = Instant::now() + Duration::from_secs(60);
    let initiator = loop {
        let j = status_json(admin);
        let moving = j["history"]["write_bytes_per_sec"]
            .as_array()
            .and_then(|v| v.last())
            .and_then(|v| v.as_u64())
            .is_some_and(|v| v > 0);
        if let (Some(name), true) = (j["sessions"][0]["initiator"].as_str(), moving) {
            break name.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no session with moving bytes: {j:#}\n{}",
            bench.out.text()
        );
        std::thread::yield_now();
    };
    let url = format!("http://{admin}/");
    let chromium = |extra: &str| {
        let out = run_tool(
            Command::new("chromium").args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1200,1600",
                "--virtual-time-budget=3000",
                extra,
                &url,
            ]),
            Duration::from_secs(120),
        );
        assert!(out.success(), "chromium {extra} failed: {}", out.stderr);
        out
    };
    let dom = chromium("--dump-dom").stdout;
    let shot = target_dir().join("admin-page.png");
    chromium(&format!("--screenshot={}", shot.display()));
    bench.stop(libc::SIGTERM, Duration::from_secs(10));
    drop(server);

    assert!(
        dom.contains("data-live=\"1\""),
        "the script did not run:\n{dom}"
    );
    assert!(
        dom.contains("class=\"session\"") && dom.contains(&initiator),
        "no session row for {initiator}:\n{dom}"
    );
    // The LUN and reactor tables were redrawn from /status.json too.
    for table in ["luns-body", "reactors-body"] {
        let redrawn = format!("id=\"{table}\" data-live=\"1\"");
        assert!(dom.contains(&redrawn), "{table} not redrawn:\n{dom}");
    }
    assert!(
        dom.contains("<tr class=\"lun\"><td class=\"n\">0</td>"),
        "no LUN 0 row:\n{dom}"
    );
    let rate = dom
        .split("id=\"tp-b\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or("");
    assert!(
        rate.starts_with("write ") && !rate.starts_with("write 0 B/s"),
        "write throughput in the DOM: {rate:?}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        shot.display()
    );
    println!(
        "screenshot: {} ({} bytes); {rate}",
        shot.display(),
        png.len()
    );
}

#[test]
fn admin_flag_errors_name_the_flag() {
    if !bootlun_cli_available() || target_kind() != TargetKind::Bootlun {
        return;
    }
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--lun", "ram:1M"];
        args.extend_from_slice(extra);
        run_tool(Command::new(bootlun_bin()).args(&args), WAIT)
    };
    let out = serve(&["--admin-listen", "localhost-8080"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--admin-listen localhost-8080: expected ADDR:PORT"),
        "{}",
        out.stderr
    );
    let out = serve(&["--admin-user", "operator"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--admin-user and --admin-password-file must be given together"),
        "{}",
        out.stderr
    );
    // A port the operator named that is taken is an error, not a warning.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = serve(&["--admin-listen", &addr]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("--admin-listen {addr}: cannot listen")),
        "{}",
        out.stderr
    );
    // `off` starts no listener.
    let server = Server::start(&["ram:1M"], &["--admin-listen", "off"]);
    assert!(
        !server.output().contains("admin page on"),
        "{}",
        server.output()
    );
}

/// How reactors wait, as `/status.json` counts it: with `--poll busy` a
/// reactor spins while it has a connection, and only then; with `--poll
/// interrupt` it never spins; with the default (adaptive) a reactor
/// without a connection never spins either. Spinning is counted as polls
/// (`busy_polls`, `idle_polls`); the status reads in between give a
/// spinning reactor all the time it needs to show up there.
#[test]
fn reactors_spin_only_as_the_poll_mode_says() {
    let polls = |j: &serde_json::Value| -> u64 {
        j["reactors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["busy_polls"].as_u64().unwrap() + r["idle_polls"].as_u64().unwrap())
            .sum()
    };
    for (mode, spins) in [
        ("busy", Some(true)),
        ("interrupt", Some(false)),
        ("adaptive", None),
    ] {
        let Some((server, admin)) = start(&["ram:4M"], &["--poll", mode]) else {
            return;
        };
        for _ in 0..20 {
            status_json(admin);
        }
        assert_eq!(
            polls(&status_json(admin)),
            0,
            "--poll {mode}: spun with no connection"
        );

        let name = initiator_name(&format!("poll-{mode}"));
        let mut conn = IscsiConn::connect(server.addr);
        conn.login(&name, &server.iqn).unwrap();
        conn.test_unit_ready(0).unwrap();
        for _ in 0..20 {
            status_json(admin);
        }
        let open = polls(&status_json(admin));
        if let Some(spins) = spins {
            assert_eq!(
                open > 0,
                spins,
                "--poll {mode}: {open} polls with a connection"
            );
        }

        conn.logout();
        drop(conn);
        let deadline = Instant::now() + WAIT;
        let closed = loop {
            let j = status_json(admin);
            let live: u64 = j["reactors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["connections_open"].as_u64().unwrap())
                .sum();
            if live == 0 {
                break polls(&j);
            }
            assert!(Instant::now() < deadline, "connection still open: {j:#}");
            std::thread::yield_now();
        };
        for _ in 0..20 {
            status_json(admin);
        }
        assert_eq!(
            polls(&status_json(admin)),
            closed,
            "--poll {mode}: spun after its connection closed"
        );
    }
}
