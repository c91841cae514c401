//! `bootlun config check FILE` and `bootlun config example`: the config
//! file is the `serve` flags as TOML keys, so both are derived from the
//! flag definitions and cannot drift from them.

use crate::cli::{check, ServeArgs};
use clap::CommandFactory;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Parser)]
struct ServeCommand {
    #[command(flatten)]
    serve: ServeArgs,
}

/// Every config key (long flag names of `serve`, without `config`).
fn keys() -> Vec<(String, String)> {
    key_args().into_iter().map(|(k, h, _)| (k, h)).collect()
}

/// How a key's value is written in TOML, from its flag definition.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    List,
    Bool,
    Scalar,
}

fn key_args() -> Vec<(String, String, Shape)> {
    ServeCommand::command()
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            if long == "config" || long == "help" {
                return None;
            }
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let shape = match a.get_action() {
                clap::ArgAction::Append => Shape::List,
                clap::ArgAction::SetTrue | clap::ArgAction::SetFalse => Shape::Bool,
                _ if a.get_num_args().is_some_and(|n| n.min_values() == 0) => Shape::Bool,
                _ => Shape::Scalar,
            };
            Some((long, help, shape))
        })
        .collect()
}

/// The sample value of a key without a hand-written one: its
/// `[default: N]` when that is a number, else an empty value of its shape.
fn generic_sample(help: &str, shape: Shape) -> String {
    match shape {
        Shape::List => "[]".into(),
        Shape::Bool => "false".into(),
        Shape::Scalar => help
            .split("[default: ")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .filter(|d| d.parse::<u64>().is_ok())
            .map(str::to_string)
            .unwrap_or_else(|| "\"\"".into()),
    }
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The valid key closest to `key`, when it is close enough to be a typo.
pub(crate) fn nearest_key(key: &str) -> Option<String> {
    keys()
        .into_iter()
        .map(|(k, _)| (distance(key, &k), k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min()
        .map(|(_, k)| k)
}

/// `line:column` (1-based) of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where `key = …` starts in `text`, for errors about a value.
fn key_position(text: &str, key: &str) -> Option<(usize, usize)> {
    let mut off = 0;
    for (n, l) in text.split_inclusive('\n').enumerate() {
        let t = l.trim_start();
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return Some((n + 1, l.len() - t.len() + 1));
            }
        }
        off += l.len();
    }
    let _ = off;
    None
}

/// Check `path` as `serve` would read it; one line per problem, exit 2.
pub(crate) fn check_file(path: &Path) -> ExitCode {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{shown}: {e}");
            return ExitCode::from(2);
        }
    };
    let args: ServeArgs = match toml::from_str(&text) {
        Ok(a) => a,
        Err(e) => {
            let (mut line, mut col) = e.span().map_or((1, 1), |s| line_col(&text, s.start));
            let mut msg = e.message().replace('\n', " ");
            if let Some(k) = msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                .map(str::to_string)
            {
                // Flattened tables lose the span of an unknown key.
                if let Some((l, c)) = key_position(&text, &k) {
                    (line, col) = (l, c);
                }
                msg = format!("unknown key `{k}`");
                if let Some(n) = nearest_key(&k) {
                    msg.push_str(&format!("; did you mean `{n}`?"));
                }
                msg.push_str(" (`bootlun config example` lists every key)");
            } else if let Some(k) = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !k.contains(' '))
            {
                msg = format!("{k}: {msg}");
            }
            eprintln!("{shown}:{line}:{col}: {msg}");
            return ExitCode::from(2);
        }
    };
    match check(&args) {
        Ok(_) => {
            println!("{shown}: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let msg = e.to_string();
            // "--flag value: why" names the key; point at its line.
            let key = msg
                .strip_prefix("--")
                .and_then(|r| r.split([' ', ':']).next())
                .unwrap_or("");
            let (line, col) = key_position(&text, key).unwrap_or((1, 1));
            let msg = msg.strip_prefix("--").unwrap_or(&msg);
            eprintln!("{shown}:{line}:{col}: {msg}");
            ExitCode::from(2)
        }
    }
}

/// A config with every key, commented out, each with its help text.
pub(crate) fn example() -> String {
    let mut out = String::from(
        "# bootlun configuration: the `serve` flags as TOML keys (kebab-case).\n\
         # Flags on the command line, and bootlun.KEY=VALUE words on the\n\
         # ramdisk's kernel command line, win over this file.\n\
         # Check a file with `bootlun config check FILE`.\n\n",
    );
    for (k, help, shape) in key_args() {
        for l in help.lines() {
            out.push_str(&format!("# {l}\n"));
        }
        let sample = match k.as_str() {
            "lun" => "[\"/dev/nvme0n1\", \"ram:1G\"]".to_string(),
            "listen" => "\"0.0.0.0:3260\"".into(),
            "target-name" => "\"iqn.2026-11.org.bootlun:target\"".into(),
            "cores" => "\"0-1\"".into(),
            "poll" => "\"adaptive\"".into(),
            "poll-spin-us" => "50".into(),
            "zero-copy-send" => "\"auto\"".into(),
            "buffers" => "128".into(),
            "buffer-size" => "\"1M\"".into(),
            "queue-depth" => "128".into(),
            "login-timeout" => "30".into(),
            "log" => "\"info\"".into(),
            "log-format" => "\"text\"".into(),
            "net-interface" | "pxe-interface" => "\"eth0\"".into(),
            "net-address" => "\"192.168.200.1/24\"".into(),
            "disk-timeout" => "60".into(),
            "boot-config" => "\"bootlun.toml\"".into(),
            "boot-dir" => "\"/boot\"".into(),
            "boot-device" => "\"UUID=3e6d2c4a-1b2f-4c1e-9a77-5b8f0e2d4c11\"".into(),
            "boot-path" => "\"/\"".into(),
            "cmdline-default" => "\"root=UUID=… ro\"".into(),
            "boot-method" => "\"netroot\"".into(),
            "menu-timeout" => "5".into(),
            "menu-user" => "\"boot\"".into(),
            "menu-password" => "\"a long passphrase\"".into(),
            "ipxe-dir" => "\"/usr/lib/ipxe\"".into(),
            "dhcp-mode" => "\"server\"".into(),
            "dhcp-pool" => "\"192.168.200.2-192.168.200.2\"".into(),
            "http-port" => "80".into(),
            "strip-args" => "\"quiet\"".into(),
            "cmdline-chap" => "false".into(),
            "chap" => "\"initiator-user:a-long-shared-secret\"".into(),
            "mutual-chap" => "\"target-user:another-long-secret\"".into(),
            "discovery-chap" => "\"discovery-user:a-third-long-secret\"".into(),
            "secrets" => "\"/etc/bootlun/secrets.toml\"".into(),
            "allow-initiator" => "[\"iqn.2026-11.org.example:laptop\"]".into(),
            "allow-address" => "[\"192.168.200.0/24\"]".into(),
            "admin-listen" => "\"127.0.0.1:8080\"".into(),
            "admin-user" => "\"admin\"".into(),
            "admin-password-file" => "\"/etc/bootlun/admin-password\"".into(),
            _ => generic_sample(&help, shape),
        };
        out.push_str(&format!("# {k} = {sample}\n\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(nearest_key("lsten").as_deref(), Some("listen"));
        assert_eq!(nearest_key("net_address").as_deref(), Some("net-address"));
        assert_eq!(nearest_key("completely-unrelated-thing"), None);
    }

    #[test]
    fn example_names_every_key_and_parses_when_uncommented() {
        let ex = example();
        let mut uncommented = String::new();
        for l in ex.lines() {
            if let Some(kv) = l.strip_prefix("# ").filter(|kv| kv.contains(" = ")) {
                let key = kv.split(" = ").next().unwrap_or("");
                if !key.contains(' ') {
                    uncommented.push_str(kv);
                    uncommented.push('\n');
                }
            }
        }
        for (k, _) in keys() {
            assert!(uncommented.contains(&format!("{k} = ")), "{k} missing");
        }
        let parsed: Result<ServeArgs, _> = toml::from_str(&uncommented);
        assert!(parsed.is_ok(), "{parsed:?}\n{uncommented}");
    }

    #[test]
    fn positions() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(key_position("x = 1\n  lun = []\n", "lun"), Some((2, 3)));
    }
}
