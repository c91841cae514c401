//! CHAP and ACLs end to end with libiscsi's tools: credentials in the URL
//! (`iscsi://user%secret@host:port/IQN/LUN`), the target's own credentials
//! for mutual CHAP as `?target_user=..&target_password=..`, and `-i IQN`
//! for the initiator name. Also the start-up errors for a readable secrets
//! file and a short secret.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

const USER: &str = "bootuser";
const SECRET: &str = "initiator-secret-1";
const TARGET_USER: &str = "bootlun-target";
const TARGET_SECRET: &str = "target-secret-22";
const LIMIT: Duration = Duration::from_secs(60);

/// `iscsi://USER%SECRET@ADDR/IQN/LUN` (no credentials when `creds` is None).
fn url(server: &Server, creds: Option<(&str, &str)>, query: &str) -> String {
    let auth = creds.map(|(u, s)| format!("{u}%{s}@")).unwrap_or_default();
    format!(
        "iscsi://{auth}{}/{}/{}{query}",
        server.addr,
        server.iqn,
        server.lun(0)
    )
}

fn inq(url: &str) -> ToolOutput {
    run_tool(Command::new("iscsi-inq").arg(url), LIMIT)
}

/// Wait for the server's log line about a failed login that contains
/// `needle`; returns it.
fn failure_line(server: &Server, needle: &str) -> String {
    server
        .log
        .wait_for(Duration::from_secs(20), |l| {
            l.contains("login failed") && l.contains(needle)
        })
        .unwrap_or_else(|| {
            panic!(
                "no 'login failed' line containing {needle:?}:\n{}",
                server.output()
            )
        })
}

fn secrets_file(dir: &TempDir, text: &str, mode: u32) -> String {
    let p = dir.join("secrets.toml");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.to_string_lossy().into_owned()
}

fn ready() -> bool {
    bootlun_cli_available() && require_tool("iscsi-inq", "libiscsi-bin")
}

#[test]
fn one_way_chap_from_a_secrets_file() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("chap-one-way");
    let secrets = secrets_file(&dir, &format!("chap = \"{USER}:{SECRET}\"\n"), 0o600);
    let server = Server::start(&["ram:8M"], &["--secrets", &secrets]);

    let ok = inq(&url(&server, Some((USER, SECRET)), ""));
    ok.assert_success();
    assert!(ok.stdout.contains("BOOTLUN"), "{}", ok.stdout);

    // Wrong secret: refused, and the log says CHAP_R was wrong.
    let bad = inq(&url(&server, Some((USER, "wrong-secret-333")), ""));
    assert!(!bad.success(), "login with a wrong secret succeeded");
    let line = failure_line(&server, "CHAP_R");
    assert!(line.contains("0201"), "{line}");

    // Wrong user.
    let bad = inq(&url(&server, Some(("mallory", SECRET)), ""));
    assert!(!bad.success(), "login with a wrong user succeeded");
    let line = failure_line(&server, "CHAP_N");
    assert!(line.contains("mallory"), "{line}");

    // No credentials at all.
    let bad = inq(&url(&server, None, ""));
    assert!(!bad.success(), "login without CHAP succeeded");

    let log = server.output();
    assert!(!log.contains(SECRET), "secret in the log:\n{log}");
    assert!(
        !log.contains("wrong-secret-333"),
        "secret in the log:\n{log}"
    );
    // From a file: no command-line warning.
    assert!(!log.contains("visible to every user"), "{log}");
}

#[test]
fn mutual_chap() {
    if !ready() {
        return;
    }
    let chap = format!("{USER}:{SECRET}");
    let mutual = format!("{TARGET_USER}:{TARGET_SECRET}");
    let server = Server::start(&["ram:8M"], &["--chap", &chap, "--mutual-chap", &mutual]);

    let good = format!("?target_user={TARGET_USER}&target_password={TARGET_SECRET}");
    inq(&url(&server, Some((USER, SECRET)), &good)).assert_success();

    // The initiator expecting another target secret refuses our answer.
    let wrong = format!("?target_user={TARGET_USER}&target_password=not-the-target-1");
    let bad = inq(&url(&server, Some((USER, SECRET)), &wrong));
    assert!(!bad.success(), "initiator accepted a wrong target secret");

    // One-way CHAP still works against a target that can do mutual.
    inq(&url(&server, Some((USER, SECRET)), "")).assert_success();

    let log = server.output();
    assert!(
        log.contains("--chap: a secret on the command line is visible"),
        "{log}"
    );
    assert!(
        log.contains("--mutual-chap: a secret on the command line"),
        "{log}"
    );
    assert!(
        !log.contains(SECRET) && !log.contains(TARGET_SECRET),
        "{log}"
    );
}

#[test]
fn discovery_chap() {
    if !ready() || !require_tool("iscsi-ls", "libiscsi-bin") {
        return;
    }
    let dir = TempDir::new("chap-discovery");
    let secrets = secrets_file(
        &dir,
        "discovery-chap = \"finder:discovery-secret\"\n",
        0o400,
    );
    let server = Server::start(&["ram:8M"], &["--secrets", &secrets]);
    let portal = |creds: &str| format!("iscsi://{creds}{}", server.addr);

    let ok = run_tool(
        Command::new("iscsi-ls").arg(portal("finder%discovery-secret@")),
        LIMIT,
    );
    ok.assert_success();
    assert!(ok.stdout.contains(&server.iqn), "{}", ok.stdout);

    let bad = run_tool(Command::new("iscsi-ls").arg(portal("")), LIMIT);
    assert!(
        !bad.success() && !bad.stdout.contains(&server.iqn),
        "discovery without CHAP listed the target:\n{}",
        bad.stdout
    );
    failure_line(&server, "Discovery");
    let bad = run_tool(
        Command::new("iscsi-ls").arg(portal("finder%discovery-secreX@")),
        LIMIT,
    );
    assert!(!bad.stdout.contains(&server.iqn), "{}", bad.stdout);
    failure_line(&server, "CHAP_R");

    // Only discovery is protected: the disk itself needs no CHAP here.
    inq(&url(&server, None, "")).assert_success();
}

#[test]
fn acl_refuses_initiator_and_address_with_one_line() {
    if !ready() || !require_tool("iscsi-ls", "libiscsi-bin") {
        return;
    }
    let good = "iqn.2026-11.org.example:allowed";
    let bad = "iqn.2026-11.org.example:intruder";
    let server = Server::start(
        &["ram:8M"],
        &["--allow-initiator", good, "--allow-address", "127.0.0.0/8"],
    );
    let ls = |iqn: &str| {
        run_tool(
            Command::new("iscsi-ls")
                .args(["-s", "-i", iqn])
                .arg(server.portal_url()),
            LIMIT,
        )
    };
    let ok = ls(good);
    ok.assert_success();
    assert!(ok.stdout.contains(&server.iqn), "{}", ok.stdout);

    let refused = ls(bad);
    assert!(
        !refused.stdout.contains(&server.iqn),
        "a refused initiator saw the target:\n{}",
        refused.stdout
    );
    let line = failure_line(&server, bad);
    assert!(
        line.contains("0202"),
        "not an authorization failure: {line}"
    );
    assert!(line.contains("127.0.0.1"), "address missing: {line}");
    assert!(line.contains("allow-initiator"), "key missing: {line}");
    let n = server.output().lines().filter(|l| l.contains(bad)).count();
    assert_eq!(n, 1, "one log line per refused login:\n{}", server.output());

    // A portal that allows no loopback address refuses everyone here.
    let server = Server::start(&["ram:8M"], &["--allow-address", "192.0.2.0/24"]);
    let bad = inq(&url(&server, None, ""));
    assert!(!bad.success(), "login from an address outside the ACL");
    let line = failure_line(&server, "allow-address");
    assert!(
        line.contains("0202") && line.contains("127.0.0.1"),
        "{line}"
    );
}

/// `bootlun serve` that must fail at start-up: its stderr.
fn start_error(args: &[&str]) -> String {
    let out = run_tool(
        Command::new(bootlun_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--lun", "ram:1M"])
            .args(args),
        LIMIT,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a usage error:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stderr
}

#[test]
fn start_up_refuses_readable_secrets_and_short_secrets() {
    if !bootlun_cli_available() {
        return;
    }
    let dir = TempDir::new("chap-cli");
    let secrets = secrets_file(&dir, &format!("chap = \"{USER}:{SECRET}\"\n"), 0o644);
    let err = start_error(&["--secrets", &secrets]);
    assert!(err.contains("--secrets"), "{err}");
    assert!(err.contains("mode 0644"), "{err}");
    assert!(err.contains(&format!("chmod 600 {secrets}")), "{err}");
    assert!(!err.contains(SECRET), "{err}");

    let err = start_error(&["--chap", "user:short-11ch"]);
    assert!(err.contains("--chap") && err.contains("12 bytes"), "{err}");
    assert!(!err.contains("short-11ch"), "secret in the error: {err}");

    let secrets = secrets_file(&dir, "mutual-chap = \"t:tiny\"\n", 0o600);
    let err = start_error(&["--secrets", &secrets, "--chap", "u:long-enough-secret"]);
    assert!(
        err.contains("mutual-chap") && err.contains("12 bytes"),
        "{err}"
    );
    assert!(!err.contains("tiny"), "{err}");

    let err = start_error(&[
        "--chap",
        "u:same-secret-here",
        "--mutual-chap",
        "t:same-secret-here",
    ]);
    assert!(
        err.contains("--mutual-chap") && err.contains("differ"),
        "{err}"
    );
    assert!(!err.contains("same-secret-here"), "{err}");

    let err = start_error(&["--allow-address", "10.0.0.0/33"]);
    assert!(err.contains("--allow-address 10.0.0.0/33"), "{err}");
    let err = start_error(&["--allow-initiator", "bogus"]);
    assert!(err.contains("--allow-initiator bogus"), "{err}");
}
