//! Stage times of the journey, printed as a table at the end.
//!
//! An initiator boot's stages are read from its console: iPXE's progress
//! lines (DHCP, the menu script, kernel and initramfs over HTTP), the
//! kernel's banner and the markers of the initramfs' /init. Each column is
//! the time since that QEMU was started.

use std::time::Duration;

use crate::vm::Capture;

/// A column and its predicate on a console line.
type Stage = (&'static str, fn(&str) -> bool);

/// The first matching line counts.
const BOOT_STAGES: &[Stage] = &[
    ("dhcp", |l| {
        (l.contains("DHCP") || l.contains("Configuring")) && l.contains("ok")
    }),
    ("menu", |l| l.contains("boot.ipxe") && l.contains("ok")),
    ("sanhook", |l| l.contains("Registered SAN device")),
    ("kernel", |l| {
        l.contains("/boot/vmlinuz-") && l.contains("ok")
    }),
    ("initrd", |l| {
        l.contains("/boot/initrd.img-") && l.contains("ok")
    }),
    ("linux", |l| l.contains("Linux version")),
    ("net up", |l| l.contains("E2E-STAGE network")),
    ("login", |l| l.contains("E2E-STAGE login")),
    ("BOOT-OK", |l| l.contains("BOOT-OK ")),
    ("done", |l| l.contains("BOOT-DONE")),
];

pub struct Report {
    notes: Vec<(String, Duration)>,
    boots: Vec<(String, Vec<Option<Duration>>, Option<Duration>)>,
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1}", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

impl Report {
    pub fn new() -> Report {
        Report {
            notes: Vec::new(),
            boots: Vec::new(),
        }
    }

    /// A single timed step (target start, power-off, image build, ...).
    pub fn note(&mut self, what: &str, d: Duration) {
        eprintln!("e2e: {what}: {:.1}s", d.as_secs_f64());
        self.notes.push((what.to_string(), d));
    }

    /// An initiator boot: stage times from its console, and when QEMU
    /// exited (None: it did not exit by itself).
    pub fn boot(&mut self, label: &str, console: &Capture, off: Option<Duration>) {
        let lines = console.lines();
        let stages = BOOT_STAGES
            .iter()
            .map(|(_, pred)| lines.iter().find(|(_, l)| pred(l)).map(|(t, _)| *t))
            .collect();
        self.boots.push((label.to_string(), stages, off));
    }

    pub fn print(&self, title: &str) {
        let mut s = format!("\n=== {title}: stage times ===\n");
        for (what, d) in &self.notes {
            s.push_str(&format!("  {what:<48} {:>7.1}s\n", d.as_secs_f64()));
        }
        s.push_str("\n  initiator boots: seconds since its QEMU started\n");
        s.push_str(&format!("  {:<28}", "boot"));
        for (name, _) in BOOT_STAGES {
            s.push_str(&format!(" {name:>8}"));
        }
        s.push_str(&format!(" {:>8}\n", "off"));
        for (label, stages, off) in &self.boots {
            s.push_str(&format!("  {label:<28}"));
            for d in stages {
                s.push_str(&format!(" {:>8}", secs(*d)));
            }
            s.push_str(&format!(" {:>8}\n", secs(*off)));
        }
        // stdout: `cargo test` shows it with --nocapture, and for a failing
        // test without.
        println!("{s}");
    }
}
