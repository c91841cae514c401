//! Acceptance: the `serve` command line. Bad flags and config values exit 2
//! with a one-line error naming what to change; config file values are used
//! and flags override them; SIGTERM/SIGINT exit 0.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const CLI_LIMIT: Duration = Duration::from_secs(30);

fn write_config(dir: &TempDir, text: &str) -> String {
    let p = dir.join("bootlun.toml");
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Runs bootlun with `args`; it must exit 2 with exactly one non-empty
/// stderr line that mentions `must_name`.
fn assert_rejected(args: &[&str], must_name: &str) {
    let out = run_tool(
        Command::new(bootlun_bin())
            .args(args)
            .env_remove("RUST_LOG"),
        CLI_LIMIT,
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    println!("bootlun {} -> {} / {:?}", args.join(" "), out.status, lines);
    assert_eq!(
        out.status.code(),
        Some(2),
        "`bootlun {}` must exit with status 2, got {}\n--- stderr ---\n{}",
        args.join(" "),
        out.status,
        out.stderr
    );
    assert_eq!(
        lines.len(),
        1,
        "`bootlun {}` must print a one-line error, got {} lines:\n{}",
        args.join(" "),
        lines.len(),
        out.stderr
    );
    assert!(
        lines[0].contains(must_name),
        "the error for `bootlun {}` must name `{must_name}`: {:?}",
        args.join(" "),
        lines[0]
    );
    assert!(
        !out.stderr.contains('\u{1b}'),
        "ANSI escapes in non-terminal stderr: {:?}",
        out.stderr
    );
}

#[test]
fn bad_flag_values_exit_2_naming_the_flag() {
    if !bootlun_cli_available() {
        return;
    }
    assert_rejected(
        &["serve", "--listen", "127.0.0.1:0", "--lun", "bogus:1"],
        "--lun",
    );
    assert_rejected(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--lun",
            "ram:16M",
            "--cores",
            "99",
        ],
        "--cores",
    );
    assert_rejected(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--lun",
            "ram:16M",
            "--poll",
            "fast",
        ],
        "--poll",
    );
}

#[test]
fn bad_config_file_exits_2_naming_the_key() {
    if !bootlun_cli_available() {
        return;
    }
    let dir = TempDir::new("cli-bad-config");
    let cfg = write_config(
        &dir,
        "listen = \"127.0.0.1:0\"\nlun = [\"ram:16M\"]\nbogus-key = 1\n",
    );
    assert_rejected(&["serve", "--config", &cfg], "bogus-key");
    let cfg = write_config(
        &dir,
        "listen = \"127.0.0.1:0\"\nlun = [\"ram:16M\"]\npoll = \"fast\"\n",
    );
    assert_rejected(&["serve", "--config", &cfg], "poll");
}

/// `iscsi-ls -s` against `server`: its targets, its LUNs and its whole
/// output.
fn iscsi_ls(server: &Server) -> (Vec<String>, testkit::LunListing, String) {
    let out = run_tool(
        Command::new("iscsi-ls").args(["-s", &server.portal_url()]),
        Duration::from_secs(60),
    );
    out.assert_success();
    let (t, l) = parse_iscsi_ls(&out.stdout);
    (t, l, out.stdout)
}

fn size_of(luns: &testkit::LunListing, lun: u32) -> Option<String> {
    luns.get(&lun).and_then(|(_, s)| s.clone())
}

const CONFIG: &str = "listen = \"127.0.0.1:0\"\n\
target-name = \"iqn.2026-11.org.bootlun:from-config\"\n\
lun = [\"ram:16M\", \"ram:32M\"]\n\
poll = \"adaptive\"\n";

#[test]
fn config_file_values_are_used() {
    if !bootlun_cli_available() || !require_tool("iscsi-ls", "libiscsi-bin") {
        return;
    }
    let dir = TempDir::new("cli-config");
    let cfg = write_config(&dir, CONFIG);
    let server = Server::bootlun(&["serve", "--config", &cfg]);
    // `listen` came from the file: loopback, ephemeral port (the default
    // would be 0.0.0.0:3260).
    assert_eq!(
        server.addr.ip().to_string(),
        "127.0.0.1",
        "{}",
        server.output()
    );
    assert_ne!(server.addr.port(), 3260);
    let (targets, luns, text) = iscsi_ls(&server);
    assert!(
        targets
            .iter()
            .any(|t| t == "iqn.2026-11.org.bootlun:from-config"),
        "target-name from config not used:\n{text}"
    );
    let base = server.lun(0);
    assert_eq!(
        size_of(&luns, base).as_deref(),
        Some(iscsi_ls_size(16 << 20, 512).as_str()),
        "LUN {base}:\n{text}"
    );
    assert_eq!(
        size_of(&luns, base + 1).as_deref(),
        Some(iscsi_ls_size(32 << 20, 512).as_str()),
        "LUN {}:\n{text}",
        base + 1
    );
}

#[test]
fn flags_override_config_file() {
    if !bootlun_cli_available() || !require_tool("iscsi-ls", "libiscsi-bin") {
        return;
    }
    let dir = TempDir::new("cli-override");
    let cfg = write_config(&dir, CONFIG);
    let server = Server::bootlun(&[
        "serve",
        "--config",
        &cfg,
        "--target-name",
        "iqn.2026-11.org.bootlun:from-flag",
        "--lun",
        "ram:48M",
    ]);
    let (targets, luns, text) = iscsi_ls(&server);
    assert!(
        targets
            .iter()
            .any(|t| t == "iqn.2026-11.org.bootlun:from-flag"),
        "--target-name did not override:\n{text}"
    );
    assert!(
        !targets.iter().any(|t| t.ends_with(":from-config")),
        "config target-name still served:\n{text}"
    );
    let base = server.lun(0);
    // --lun replaces the file's list: exactly one disk, the 48M one.
    assert_eq!(
        size_of(&luns, base).as_deref(),
        Some(iscsi_ls_size(48 << 20, 512).as_str()),
        "LUN {base}:\n{text}"
    );
    assert!(
        !luns.contains_key(&(base + 1)),
        "config LUNs still served although --lun was given:\n{text}"
    );
}

#[test]
fn sigterm_with_open_session_exits_0() {
    if !bootlun_cli_available() {
        return;
    }
    let mut server = Server::bootlun(&["serve", "--listen", "127.0.0.1:0", "--lun", "ram:16M"]);
    let mut c = IscsiConn::connect(server.addr);
    c.login(&initiator_name("sigterm"), &server.iqn)
        .unwrap_or_else(|e| panic!("login: {e}\n{}", server.output()));
    let status = server.stop_with(libc::SIGTERM);
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}\n{}",
        server.output()
    );
    drop(c);
}

#[test]
fn sigint_exits_0() {
    if !bootlun_cli_available() {
        return;
    }
    let mut server = Server::bootlun(&["serve", "--listen", "127.0.0.1:0", "--lun", "ram:16M"]);
    let status = server.stop_with(libc::SIGINT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGINT: {status}\n{}",
        server.output()
    );
}

#[test]
fn bad_log_filter_is_refused() {
    if !bootlun_cli_available() {
        return;
    }
    // A bare word that is not a level would silence every log line.
    assert_rejected(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--lun",
            "ram:16M",
            "--log",
            "inf",
        ],
        "--log inf",
    );
    assert_rejected(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--lun",
            "ram:16M",
            "--log",
            "bootlun=loud",
        ],
        "--log",
    );
}

#[test]
fn config_check_points_at_the_line_and_suggests_keys() {
    if !bootlun_cli_available() {
        return;
    }
    let dir = TempDir::new("cli-config-check");
    let check = |text: &str| {
        let cfg = write_config(&dir, text);
        let out = run_tool(
            Command::new(bootlun_bin()).args(["config", "check", &cfg]),
            CLI_LIMIT,
        );
        (out.status.code(), out.stdout, out.stderr, cfg)
    };
    let (code, _, err, cfg) = check("lun = [\"ram:1G\"]\nlsten = \"1.2.3.4:3260\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        format!("{cfg}:2:1: unknown key `lsten`; did you mean `listen`? (`bootlun config example` lists every key)")
    );
    let (code, _, err, cfg) = check("lun = [\"ram:1G\"]\n  queue-depth = 0\n");
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        format!("{cfg}:2:3: queue-depth 0: must be between 1 and 4096")
    );
    let (code, _, err, cfg) = check("lun = [\"ram:1G\"]\nbuffers = \"x\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with(&format!("{cfg}:2:11: buffers: invalid type")),
        "{err}"
    );
    let (code, _, err, _) = check("lun = [\"ram:1G\"]\nnet-address = \"10.1.2.3\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(":2:1: net-address 10.1.2.3: expected"),
        "{err}"
    );
    let (code, out, err, cfg) = check("lun = [\"ram:1G\"]\nlisten = \"127.0.0.1:3260\"\n");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("{cfg}: ok"));
}

#[test]
fn config_example_is_a_valid_config_naming_every_flag() {
    if !bootlun_cli_available() {
        return;
    }
    let out = run_tool(
        Command::new(bootlun_bin()).args(["config", "example"]),
        CLI_LIMIT,
    );
    out.assert_success();
    let help = run_tool(
        Command::new(bootlun_bin()).args(["serve", "--help"]),
        CLI_LIMIT,
    );
    for flag in help
        .stdout
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .filter(|w| !w.is_empty() && *w != "help" && *w != "config")
    {
        assert!(
            out.stdout.contains(&format!("# {flag} = ")),
            "`config example` lacks {flag}"
        );
    }
    // Uncommented, the example is accepted by `config check`.
    let dir = TempDir::new("cli-config-example");
    let body: String = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.split(" = ").next().is_some_and(|k| !k.contains(' ')) && l.contains(" = "))
        // The secrets and admin password files of the example do not
        // exist here (and the admin user needs its password file).
        .filter(|l| {
            !["secrets = ", "admin-user = ", "admin-password-file = "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = write_config(&dir, &body);
    let chk = run_tool(
        Command::new(bootlun_bin()).args(["config", "check", &cfg]),
        CLI_LIMIT,
    );
    // The sample menu user/password and pool are consistent; the sample
    // LUN path need not exist, since check opens nothing.
    assert_eq!(chk.status.code(), Some(0), "{}\n{body}", chk.stderr);
}

#[test]
fn sighup_rereads_config_and_sigusr1_logs_counters() {
    if !bootlun_cli_available() {
        return;
    }
    let dir = TempDir::new("cli-sighup");
    let cfg = write_config(
        &dir,
        "listen = \"127.0.0.1:0\"\nlun = [\"ram:16M\"]\nqueue-depth = 64\nlog = \"info\"\n",
    );
    let notify = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut srv = Server::bootlun_env(
        &["serve", "--config", &cfg],
        |a| a.ip().is_loopback(),
        &[("NOTIFY_SOCKET", notify.as_os_str())],
    );
    // systemd readiness (Type=notify) once the portal listens.
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

    srv.signal(libc::SIGUSR1);
    assert!(
        srv.log
            .wait_for(CLI_LIMIT, |l| l.contains("reactor 0 (core")
                && l.contains("latency p50"))
            .is_some(),
        "{}",
        srv.output()
    );
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nlun = [\"ram:16M\"]\nqueue-depth = 32\nlog = \"debug\"\n",
    )
    .unwrap();
    srv.signal(libc::SIGHUP);
    assert!(
        srv.log
            .wait_for(CLI_LIMIT, |l| l
                .contains("SIGHUP: log filter is now \"debug\""))
            .is_some(),
        "{}",
        srv.output()
    );
    let changed = srv
        .log
        .wait_for(CLI_LIMIT, |l| {
            l.contains("take effect only after a restart")
        })
        .unwrap_or_else(|| panic!("{}", srv.output()));
    assert!(changed.contains("changed queue-depth;"), "{changed}");
    // A broken file is refused and the target keeps serving.
    std::fs::write(&cfg, "lun = [\"ram:16M\"]\nqueue-depth = 0\n").unwrap();
    srv.signal(libc::SIGHUP);
    assert!(
        srv.log
            .wait_for(CLI_LIMIT, |l| l
                .contains("keeping the running configuration"))
            .is_some(),
        "{}",
        srv.output()
    );
    assert!(srv.is_running());
    assert!(srv.stop().success(), "{}", srv.output());
}

#[test]
fn completions_and_man_page() {
    if !bootlun_cli_available() {
        return;
    }
    let bash = run_tool(
        Command::new(bootlun_bin()).args(["completions", "bash"]),
        CLI_LIMIT,
    );
    bash.assert_success();
    assert!(
        bash.stdout.contains("--net-address"),
        "bash completion lacks serve flags"
    );
    let man = run_tool(Command::new(bootlun_bin()).arg("man"), CLI_LIMIT);
    man.assert_success();
    assert!(man.stdout.starts_with(".ie") || man.stdout.contains(".TH bootlun 1"));
}

#[test]
fn bootentries_dry_run_follows_the_serve_config() {
    if !bootlun_cli_available() {
        return;
    }
    let dir = TempDir::new("cli-bootentries");
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pxe/tests/fixtures/debian");
    let cfg = write_config(
        &dir,
        &format!(
            "lun = [\"ram:16M\"]\ntarget-name = \"iqn.2026-11.org.example:laptop\"\n\
             net-address = \"10.9.8.7/24\"\nboot-dir = \"{}\"\ncmdline-default = \"root=UUID=1 ro\"\n",
            fixtures.display()
        ),
    );
    let out = run_tool(
        Command::new(bootlun_bin()).args(["bootentries", "--config", &cfg]),
        CLI_LIMIT,
    );
    out.assert_success();
    assert!(
        out.stdout
            .contains("netroot=iscsi:10.9.8.7::::iqn.2026-11.org.example:laptop"),
        "{}",
        out.stdout
    );
    // Without a config, serve's own defaults: its IQN and the ramdisk's address.
    let out = run_tool(
        Command::new(bootlun_bin()).args(["bootentries", "--boot-dir", fixtures.to_str().unwrap()]),
        CLI_LIMIT,
    );
    out.assert_success();
    assert!(
        out.stdout
            .contains("netroot=iscsi:192.168.200.1::::iqn.2026-11.org.bootlun:target"),
        "{}",
        out.stdout
    );
    assert_rejected(&["bootentries"], "--boot-dir");
}

#[test]
fn json_log_lines() {
    if !bootlun_cli_available() {
        return;
    }
    let mut srv = Server::bootlun(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--lun",
        "ram:16M",
        "--log-format",
        "json",
    ]);
    let line = srv
        .log
        .wait_for(CLI_LIMIT, |l| l.contains("listening on"))
        .unwrap_or_else(|| panic!("{}", srv.output()));
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO", "{line}");
    assert!(srv.stop().success());
}
