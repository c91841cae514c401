//! `bootlun-perf profile`: where the CPU goes while one workload runs.
//!
//! A system-wide `perf record` covers the client's run against one target;
//! `perf report` gives each sample's thread name, object and function, and
//! this module sorts them into who spent it (the target, the client, the
//! idle loop) and on what (copies, TCP and loopback, wake-ups and the
//! scheduler, io_uring, the page cache, other kernel work, user space).
//! It is what the closing notes of issue 9 name a bottleneck with, in one
//! command anyone can rerun. (The `perf` tool itself does the sampling:
//! no crate reads perf.data as completely as `perf report`.)

use super::*;

/// Whose samples a line of `perf report` is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Who {
    Target,
    Client,
    Idle,
    Other,
}

impl Who {
    fn label(self) -> &'static str {
        match self {
            Who::Target => "target",
            Who::Client => "client",
            Who::Idle => "idle",
            Who::Other => "other",
        }
    }
}

/// What kind of work a sampled function is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Kind {
    Copy,
    Net,
    Sched,
    IoUring,
    PageCache,
    Syscall,
    Kernel,
    User,
}

const KINDS: [Kind; 8] = [
    Kind::Copy,
    Kind::Net,
    Kind::Sched,
    Kind::IoUring,
    Kind::PageCache,
    Kind::Syscall,
    Kind::Kernel,
    Kind::User,
];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Copy => "copies",
            Kind::Net => "TCP, loopback",
            Kind::Sched => "wake-ups, scheduler, IRQs",
            Kind::IoUring => "io_uring",
            Kind::PageCache => "page cache, tmpfs",
            Kind::Syscall => "system call entry, exit, checks",
            Kind::Kernel => "other kernel",
            Kind::User => "user space",
        }
    }
}

/// The thread names of each target's processes (`perf report`'s comm).
/// Threads of io_uring's workers are named `iou-wrk-TID` and `iou-sqp-TID`;
/// only bootlun uses io_uring here.
fn who(comm: &str, target: &str) -> Who {
    let is = |p: &[&str]| p.iter().any(|p| comm.starts_with(p));
    let target_threads: &[&str] = match target {
        "tgt" => &["tgtd"],
        "istgt" => &["istgt"],
        _ => &["reactor-", "acceptor", "bootlun", "iou-wrk-", "iou-sqp-"],
    };
    if is(target_threads) {
        Who::Target
    } else if is(&["iscsi-perf", "qemu-img"]) {
        Who::Client
    } else if is(&["swapper"]) {
        Who::Idle
    } else {
        Who::Other
    }
}

/// The kind of work of a sampled function: `kernel` tells whether it is
/// in the kernel (perf's `[k]`).
fn kind(sym: &str, kernel: bool) -> Kind {
    if !kernel {
        // memcpy in user space is still a copy.
        if sym.contains("memcpy") || sym.contains("memmove") {
            return Kind::Copy;
        }
        return Kind::User;
    }
    let has = |p: &[&str]| p.iter().any(|p| sym.contains(p));
    let starts = |p: &[&str]| p.iter().any(|p| sym.starts_with(p));
    if has(&[
        "copy_user",
        "copy_to_iter",
        "copy_from_iter",
        "copy_page",
        "copy_folio",
        "rep_movs",
        "memcpy",
        "memmove",
        "csum_partial_copy",
    ]) {
        Kind::Copy
    } else if starts(&["io_", "__io_", "io_uring"]) {
        Kind::IoUring
    } else if starts(&[
        "tcp_",
        "__tcp_",
        "ip_",
        "__ip_",
        "ipv4_",
        "inet_",
        "__inet_",
        "sock_",
        "__sock_",
        "sk_",
        "__sk_",
        "skb_",
        "__skb_",
        "kfree_skb",
        "__kfree_skb",
        "consume_skb",
        "__alloc_skb",
        "alloc_skb",
        "napi_",
        "__napi_",
        "netif_",
        "__netif_",
        "net_rx_action",
        "process_backlog",
        "dev_hard_start_xmit",
        "__dev_queue_xmit",
        "loopback_",
        "validate_xmit",
        "dst_",
        "lock_sock",
        "release_sock",
        "__release_sock",
        "sk_stream",
        "raw_local_deliver",
        "nf_",
        "neigh_",
        "__neigh_",
        "eth_type",
        "csum_",
        "__sys_sendmsg",
        "__sys_recvmsg",
        "___sys_sendmsg",
        "___sys_recvmsg",
        "sock_sendmsg",
        "sock_recvmsg",
        "____sys_sendmsg",
        "____sys_recvmsg",
    ]) {
        Kind::Net
    } else if starts(&[
        "schedule",
        "__schedule",
        "try_to_wake_up",
        "ttwu_",
        "finish_task_switch",
        "enqueue_",
        "dequeue_",
        "pick_next",
        "__pick_next",
        "update_curr",
        "update_load",
        "select_task_rq",
        "select_idle",
        "__wake_up",
        "wake_up",
        "autoremove_wake",
        "native_",
        "_raw_spin_unlock_irq",
        "__raw_spin_unlock_irq",
        "sched_",
        "__sched",
        "psi_",
        "set_next_entity",
        "put_prev",
        "newidle_balance",
        "sched_balance",
        "load_balance",
        "idle_",
        "do_idle",
        "cpuidle",
        "default_idle",
        "pv_",
        "kvm_",
        "__sysvec",
        "sysvec_",
        "asm_sysvec",
        "irq_",
        "__irq",
        "irqentry",
        "handle_irq",
        "__do_softirq",
        "do_softirq",
        "__local_bh_enable",
        "raise_softirq",
        "hrtimer",
        "__hrtimer",
        "tick_",
        "clockevents",
        "lapic",
        "x2apic",
        "flush_smp",
        "smp_call",
        "generic_exec_single",
        "send_call_function",
        "llist_",
    ]) {
        Kind::Sched
    } else if starts(&[
        "shmem_",
        "filemap_",
        "__filemap",
        "folio_",
        "__folio",
        "generic_perform_write",
        "generic_file",
        "page_cache",
        "mark_page",
        "mark_buffer",
        "find_lock",
        "find_get",
        "pagecache",
        "xas_",
        "xa_",
        "balance_dirty",
        "file_update_time",
        "lru_",
        "__lru",
        "touch_atime",
        "iov_iter",
        "copy_page_",
        "blk_",
        "__blk",
        "bio_",
        "submit_bio",
        "lo_",
        "loop_",
        "iomap_",
        "__iomap",
    ]) {
        Kind::PageCache
    } else if starts(&[
        "entry_SYSCALL",
        "do_syscall",
        "syscall_",
        "x64_sys_call",
        "__x64_sys",
        "__sys_",
        "ksys_",
        "exit_to_user_mode",
        "__fget",
        "fget",
        "fput",
        "__fdget",
        "fdget",
        "__check_object_size",
        "check_heap_object",
        "rw_verify_area",
        "security_",
        "apparmor",
        "import_iovec",
        "__import_iovec",
        "rseq_",
        "vfs_",
    ]) {
        Kind::Syscall
    } else {
        Kind::Kernel
    }
}

/// One line of `perf report --no-children --sort comm,dso,sym
/// --field-separator '\t'`: share in per cent, thread name, object,
/// function (with its `[k]` or `[.]` mark).
#[derive(Debug, PartialEq)]
pub(crate) struct Line {
    pct: f64,
    comm: String,
    dso: String,
    sym: String,
    kernel: bool,
}

pub(crate) fn parse_report(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.split('\t');
            let pct = f.next()?.trim().strip_suffix('%')?.trim().parse().ok()?;
            let comm = f.next()?.trim().to_string();
            let dso = f.next()?.trim().to_string();
            let sym = f.next()?.trim();
            let (kernel, sym) = if let Some(s) = sym.strip_prefix("[k]") {
                (true, s)
            } else if let Some(s) = sym.strip_prefix("[.]") {
                (false, s)
            } else {
                (dso.contains("kernel"), sym)
            };
            Some(Line {
                pct,
                comm,
                dso,
                sym: sym.trim().to_string(),
                kernel,
            })
        })
        .collect()
}

/// The Markdown section of one profile: a table of who spent the samples
/// and on what (shares of all samples, both cores), then the target's
/// top functions as shares of the target's own samples.
pub(crate) fn section(title: &str, target: &str, lines: &[Line], samples: &str) -> String {
    let mut by: BTreeMap<(Who, Kind), f64> = BTreeMap::new();
    let mut whos: BTreeMap<Who, f64> = BTreeMap::new();
    for l in lines {
        let w = who(&l.comm, target);
        *by.entry((w, kind(&l.sym, l.kernel))).or_default() += l.pct;
        *whos.entry(w).or_default() += l.pct;
    }
    let mut s = String::new();
    let _ = writeln!(s, "\n### {title}\n");
    let _ = writeln!(
        s,
        "{samples} samples over both cores; per cent of all of them.\n"
    );
    let _ = write!(s, "| who | all |");
    for k in KINDS {
        let _ = write!(s, " {} |", k.label());
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|---|---:|{}", "---:|".repeat(KINDS.len()));
    for (&w, &total) in &whos {
        let name = match w {
            Who::Target => format!("target ({target})"),
            Who::Client => "client".to_string(),
            w => w.label().to_string(),
        };
        let _ = write!(s, "| {name} | {:.1} |", total);
        for k in KINDS {
            let v = by.get(&(w, k)).copied().unwrap_or(0.0);
            if v > 0.0 {
                let _ = write!(s, " {v:.1} |");
            } else {
                s.push_str(" |");
            }
        }
        let _ = writeln!(s);
    }
    let total = whos.get(&Who::Target).copied().unwrap_or(0.0);
    if total > 0.0 {
        // One function's samples, summed over the target's threads.
        let mut per_fn: BTreeMap<(&str, bool), f64> = BTreeMap::new();
        for l in lines.iter().filter(|l| who(&l.comm, target) == Who::Target) {
            *per_fn.entry((l.sym.as_str(), l.kernel)).or_default() += l.pct;
        }
        let mut merged: Vec<((&str, bool), f64)> = per_fn.into_iter().collect();
        merged.sort_by(|a, b| b.1.total_cmp(&a.1));
        let _ = writeln!(
            s,
            "\nThe target's top functions, per cent of the target's samples:\n"
        );
        let _ = writeln!(s, "| function | kind | % |");
        let _ = writeln!(s, "|---|---|---:|");
        for &((sym, k), p) in merged.iter().take(12) {
            let _ = writeln!(
                s,
                "| `{}` | {} | {:.1} |",
                sym.replace('|', "\\|"),
                kind(sym, k).label(),
                p * 100.0 / total
            );
        }
    }
    s
}

/// The targets `profile` can run, in the order it runs them.
pub(crate) const TARGETS: [&str; 4] = ["bootlun", "null", "tgt", "istgt"];

/// Profiles each workload in `keys` against each target in `targets`
/// (`null` is bootlun on a `null:` LUN) and returns the Markdown.
pub(crate) fn profile_in(
    ctx: &Ctx,
    keys: &[&'static Workload],
    targets: &[&str],
    extra: &str,
    stop: &AtomicBool,
) -> Result<String, String> {
    let o = Opts {
        seconds: env_num("SECONDS", 5),
        bench_bytes_4k: 1 << 30,
        bench_bytes_128k: 8 << 30,
    };
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let mut md = String::new();
    for &name in targets {
        let started = match name {
            "tgt" => start_tgt(ctx),
            "istgt" => start_istgt(ctx),
            "null" => start_bootlun(ctx, "bootlun-null", PORT_NULL, "null:1G", &extra),
            _ => start_bootlun(
                ctx,
                "bootlun",
                PORT_BOOTLUN,
                &format!("/dev/shm/{}-bootlun.img", ctx.tag),
                &extra,
            ),
        };
        let _ = writeln!(
            md,
            "\n## {}",
            match name {
                "null" => "bootlun, `null:` LUN (no I/O)".to_string(),
                "bootlun" => "bootlun, file LUN".to_string(),
                n => format!("{n} (tuned as in `compare`), file LUN"),
            }
        );
        let mut t = match started {
            Ok(t) => t,
            Err(e) => {
                // A missing peer loses its section, as in `compare`.
                log(format!("profile {name}: {e}"));
                let _ = writeln!(md, "\nNot run: {e}");
                continue;
            }
        };
        let comm = if name == "null" { "bootlun" } else { name };
        for w in keys {
            if stop.load(Ordering::Relaxed) {
                t.stop();
                return Err("interrupted".into());
            }
            match profile_one(ctx, &t, w, &o) {
                Ok((s, samples, lines)) => {
                    log(format!(
                        "profile {name:<7} {:<11} {} IOPS {} MB/s {} CPU s/GB, {samples} samples",
                        w.key,
                        fmt_num(s.iops),
                        fmt_num(s.mbs),
                        fmt_num(s.cpu_per_gb)
                    ));
                    md.push_str(&section(
                        &format!(
                            "{}: {} IOPS, {} MB/s, target {} CPU s/GB, {} cores, client {} cores",
                            w.label,
                            fmt_num(s.iops),
                            fmt_num(s.mbs),
                            fmt_num(s.cpu_per_gb),
                            fmt_num(s.cpu_cores),
                            fmt_num(s.client_cores)
                        ),
                        comm,
                        &lines,
                        &samples,
                    ));
                }
                Err(e) => {
                    log(format!("profile {name} {}: FAILED {e}", w.key));
                    let _ = writeln!(md, "\n### {}: FAILED {e}", w.label);
                }
            }
        }
        t.stop();
    }
    Ok(md)
}

/// One workload under a system-wide `perf record`: the run's sample, the
/// sample count perf reports, and its lines.
fn profile_one(
    ctx: &Ctx,
    t: &Target,
    w: &Workload,
    o: &Opts,
) -> Result<(Sample, String, Vec<Line>), String> {
    let data = ctx.work.join(format!("{}-{}.data", t.name, w.key));
    let logp = ctx.work.join(format!("{}-{}.perf.log", t.name, w.key));
    let f = File::create(&logp).map_err(|e| e.to_string())?;
    let mut rec = Command::new("perf")
        .args(["record", "-a", "-F", "1999", "-o"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|e| e.to_string())?)
        .stderr(f)
        .spawn()
        .map_err(|e| format!("perf: {e} (apt-get install linux-perf)"))?;
    // perf writes the file's header once its events are open.
    let ready = wait_until("perf record", &mut rec, &logp, || {
        std::fs::metadata(&data).is_ok_and(|m| m.len() > 0)
    });
    let run = ready.and_then(|()| run_workload(ctx, t, w, o));
    // SIGINT makes perf record write out its samples and exit.
    if !signal_and_reap(&mut rec, libc::SIGINT, Duration::from_secs(60)) {
        return Err("perf record did not stop within 60 s of SIGINT".into());
    }
    let s = run?;
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "comm,dso,sym",
        ])
        .args(["--field-separator", "\t", "--percent-limit", "0", "-i"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    let _ = std::fs::remove_file(&data);
    let text = String::from_utf8_lossy(&out.stdout);
    let samples = text
        .lines()
        .find_map(|l| l.strip_prefix("# Samples: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let lines = parse_report(&text);
    if lines.is_empty() {
        return Err(format!(
            "perf report gave no samples (exit {}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 5)
        ));
    }
    Ok((s, samples, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of `perf report --field-separator '\t'` are split into share,
    /// thread, object and function; header lines and blank ones are not
    /// samples.
    #[test]
    fn report_lines_parse_and_sort_into_who_and_what() {
        let text = "# Samples: 31K of event 'cpu-clock:ppp'\n\
                    #\n\
                    30.00%\treactor-0\t[kernel.kallsyms]\t[k] _copy_to_iter\n\
                    20.00%\treactor-0\t[kernel.kallsyms]\t[k] tcp_sendmsg_locked\n\
                    5.00%\treactor-1\t[kernel.kallsyms]\t[k] _copy_to_iter\n\
                    5.00%\treactor-0\tbootlun\t[.] bootlun_frontends::iscsi::conn::Conn::on_pdu\n\
                    25.00%\tiscsi-perf\t[kernel.kallsyms]\t[k] try_to_wake_up\n\
                    15.00%\tswapper\t[kernel.kallsyms]\t[k] default_idle\n\
                    not a line\n";
        let lines = parse_report(text);
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[3],
            Line {
                pct: 5.0,
                comm: "reactor-0".into(),
                dso: "bootlun".into(),
                sym: "bootlun_frontends::iscsi::conn::Conn::on_pdu".into(),
                kernel: false,
            }
        );
        assert_eq!(who("reactor-1", "bootlun"), Who::Target);
        assert_eq!(who("iou-wrk-77", "bootlun"), Who::Target);
        assert_eq!(who("tgtd", "tgt"), Who::Target);
        assert_eq!(who("tgtd", "bootlun"), Who::Other);
        assert_eq!(who("qemu-img", "tgt"), Who::Client);
        assert_eq!(kind("_copy_from_iter", true), Kind::Copy);
        assert_eq!(kind("__memcpy_avx_unaligned_erms", false), Kind::Copy);
        assert_eq!(kind("io_submit_sqes", true), Kind::IoUring);
        assert_eq!(kind("shmem_write_begin", true), Kind::PageCache);
        assert_eq!(kind("copy_folio_from_iter_atomic", true), Kind::Copy);
        assert_eq!(kind("entry_SYSCALL_64", true), Kind::Syscall);
        assert_eq!(kind("read_tsc", true), Kind::Kernel);

        let md = section("rr4k-d32", "bootlun", &lines, "31K");
        // The target's row: 60 % of all samples, 35 of them copies (both
        // reactors), 20 TCP, 5 user space.
        assert!(
            md.contains("| target (bootlun) | 60.0 | 35.0 | 20.0 | | | | | | 5.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| client | 25.0 | | | 25.0 | | | | | |"),
            "{md}"
        );
        assert!(md.contains("| idle | 15.0 | | | 15.0 | | | | | |"), "{md}");
        // Top functions merge the reactors and are shares of the target.
        assert!(md.contains("| `_copy_to_iter` | copies | 58.3 |"), "{md}");
        assert!(md.contains("31K samples over both cores"), "{md}");
    }
}
