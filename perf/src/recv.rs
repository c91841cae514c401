//! `bootlun-perf recv`: ways a reactor can take iSCSI data off a socket,
//! measured side by side on one loopback connection.
//!
//! - **direct + spill** (what the engine does): a 64 KiB staging receive
//!   for headers and small segments; the rest of a large data segment is
//!   received straight into the task's buffer, behind a raised
//!   SO_RCVLOWAT and a poll-first receive, so it is never copied again.
//!   The same receive (a `recvmsg` with a second iovec) takes the next
//!   header too if it has arrived, so a stream of large segments needs
//!   one receive per PDU and no `setsockopt` between them; if the header
//!   is not all there, the next receive takes only the rest of it.
//! - **direct, header first**: as the engine did before the spill: after
//!   a direct receive, a header-sized staging receive (with the low-water
//!   mark lowered for it), then the next direct one.
//! - **direct, MSG_WAITALL**: as the engine did before: no low-water mark
//!   (the receive wakes for every arriving piece) and a full staging
//!   receive after a direct one (the next segment's first bytes are
//!   copied out of staging).
//! - **multishot**: one multishot receive that fills buffers from a
//!   provided-buffer ring; every byte of data is then copied out of the
//!   ring buffer into the task's buffer, and the ring buffer goes back.
//!
//! A sender thread on one core writes PDU-shaped bytes (a 48-byte header
//! carrying the data segment length, then the data) as fast as it can;
//! the receiver on the other core parses them and places every data byte
//! in a task buffer, checking a byte per PDU. Reported per mode and size:
//! GB/s, and CPU seconds per GB of the receiver and of the sender (the
//! sender pays for waking the receiver).

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BHS: usize = 48;
const STAGING: usize = 64 * 1024;
/// Below this, the rest of a segment waits for the next staging receive
/// (the engine's DIRECT_MIN).
const DIRECT_MIN: usize = 8 * 1024;
const TASKS: usize = 64;
const RING_ENTRIES: u16 = 64;
const RING_BUF: usize = 64 * 1024;
const BGID: u16 = 7;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    DirectSpill,
    /// The engine's direct receive before the spill: a separate
    /// header-sized receive after each direct one.
    Direct,
    /// The engine's direct receive before SO_RCVLOWAT: MSG_WAITALL.
    DirectWaitall,
    Multishot,
}

struct Result1 {
    gbs: f64,
    rx_cpu_per_gb: f64,
    tx_cpu_per_gb: f64,
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // only touch the set they are given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `n` PDUs of `dsl` bytes of data: a header with the length, then data
/// whose first byte is the PDU's number (mod 256) and the rest 0xa5.
fn batch(dsl: usize, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * (BHS + dsl));
    for i in 0..n {
        let mut h = [0u8; BHS];
        h[0] = 0x05;
        h[5..8].copy_from_slice(&(dsl as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&h);
        let at = v.len();
        v.resize(at + dsl, 0xa5);
        v[at] = i as u8;
    }
    v
}

/// Where the receiver is within the stream.
struct Parser {
    dsl: usize,
    /// Header bytes gathered so far (a header may straddle receives).
    hdr: [u8; BHS],
    hdr_got: usize,
    /// Data bytes of the current PDU placed so far.
    got: usize,
    in_data: bool,
    pdus: u64,
    task: usize,
    tasks: Vec<Vec<u8>>,
    bad: u64,
}

impl Parser {
    fn new(dsl: usize) -> Parser {
        Parser {
            dsl,
            hdr: [0; BHS],
            hdr_got: 0,
            got: 0,
            in_data: false,
            pdus: 0,
            task: 0,
            tasks: (0..TASKS).map(|_| vec![0u8; dsl]).collect(),
            bad: 0,
        }
    }

    /// Consume bytes from a receive buffer, copying data into the task.
    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if !self.in_data {
                let n = (BHS - self.hdr_got).min(b.len());
                self.hdr[self.hdr_got..self.hdr_got + n].copy_from_slice(&b[..n]);
                self.hdr_got += n;
                b = &b[n..];
                if self.hdr_got == BHS {
                    let len = u32::from_be_bytes([0, self.hdr[5], self.hdr[6], self.hdr[7]]);
                    if len as usize != self.dsl {
                        self.bad += 1;
                    }
                    self.hdr_got = 0;
                    self.in_data = true;
                    self.got = 0;
                }
                continue;
            }
            let n = (self.dsl - self.got).min(b.len());
            let t = &mut self.tasks[self.task];
            t[self.got..self.got + n].copy_from_slice(&b[..n]);
            self.got += n;
            b = &b[n..];
            if self.got == self.dsl {
                self.end_pdu();
            }
        }
    }

    /// The PDU's data is all in its task buffer: check its first and last
    /// byte (the sender sends 256 PDUs in turn, numbered from 0).
    fn end_pdu(&mut self) {
        let t = &self.tasks[self.task];
        if t[0] != self.pdus as u8 || t[self.dsl - 1] != 0xa5 {
            self.bad += 1;
        }
        self.pdus += 1;
        self.in_data = false;
        self.task = (self.task + 1) % TASKS;
    }
}

fn set_lowat(fd: i32, n: usize) {
    let v = n as libc::c_int;
    // SAFETY: `v` lives across the call and its size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            4,
        )
    };
}

/// One completion (user data, result, flags).
type Cqe = (u64, i32, u32);

/// Submit, wait for at least one completion, and copy every completion out
/// into `cqes` (the handlers push new entries, so the queue cannot be
/// walked while they run; the vector is reused, not allocated per wake-up).
fn wait(ring: &mut IoUring, cqes: &mut Vec<Cqe>) -> std::io::Result<()> {
    ring.submit_and_wait(1)?;
    cqes.clear();
    cqes.extend(
        ring.completion()
            .map(|c| (c.user_data(), c.result(), c.flags())),
    );
    Ok(())
}

fn ring() -> std::io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(256)
}

fn receive(
    mode: Mode,
    sock: TcpStream,
    dsl: usize,
    stop: &AtomicBool,
) -> std::io::Result<(u64, f64, u64)> {
    let fd = sock.as_raw_fd();
    let mut ring = ring()?;
    let mut p = Parser::new(dsl);
    let mut cqes: Vec<Cqe> = Vec::with_capacity(64);
    let cpu0 = thread_cpu();
    match mode {
        Mode::DirectSpill | Mode::Direct | Mode::DirectWaitall => {
            let lowat_mode = mode != Mode::DirectWaitall;
            let spill_mode = mode == Mode::DirectSpill;
            let mut staging = vec![0u8; STAGING];
            let mut spill = Box::new([0u8; BHS]);
            // The direct receive's recvmsg arguments (spill mode), boxed so
            // they stay put while the kernel reads them.
            let mut msg: Box<(libc::msghdr, [libc::iovec; 2])> = Box::new((
                // SAFETY: plain data; all zeros is an empty msghdr.
                unsafe { std::mem::zeroed() },
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; 2],
            ));
            let mut lowat = 1usize;
            // user_data 1: staging receive; 2: direct receive.
            let post_staging =
                |ring: &mut IoUring, staging: &mut [u8], lowat: &mut usize, len: usize| {
                    if *lowat != 1 {
                        set_lowat(fd, 1);
                        *lowat = 1;
                    }
                    let e = opcode::Recv::new(types::Fd(fd), staging.as_mut_ptr(), len as u32)
                        .build()
                        .user_data(1);
                    // SAFETY: `staging` outlives the ring's use of it: the loop
                    // waits for this completion before touching it again.
                    unsafe { ring.submission().push(&e).expect("queue has room") };
                };
            post_staging(&mut ring, &mut staging, &mut lowat, STAGING);
            let mut direct_len;
            while !stop.load(Ordering::Relaxed) {
                wait(&mut ring, &mut cqes)?;
                for &(ud, res, _) in &cqes {
                    if res <= 0 {
                        return Ok((p.pdus, thread_cpu() - cpu0, p.bad));
                    }
                    let n = res as usize;
                    if ud == 2 {
                        let data = n.min(p.dsl - p.got);
                        p.got += data;
                        if p.got == p.dsl {
                            p.end_pdu();
                            // What came past the data: the next header, or
                            // part of it.
                            p.feed(&spill[..n - data]);
                            if p.in_data && p.dsl - p.got >= DIRECT_MIN {
                                direct_len = p.dsl - p.got;
                            } else {
                                let next = if lowat_mode { BHS - p.hdr_got } else { STAGING };
                                post_staging(&mut ring, &mut staging, &mut lowat, next);
                                continue;
                            }
                        } else {
                            direct_len = p.dsl - p.got;
                        }
                    } else {
                        // Parse and place what arrived; a large
                        // remainder of the last PDU goes direct.
                        p.feed(&staging[..n]);
                        if p.in_data && p.dsl - p.got >= DIRECT_MIN {
                            direct_len = p.dsl - p.got;
                        } else {
                            post_staging(&mut ring, &mut staging, &mut lowat, STAGING);
                            continue;
                        }
                    }
                    if direct_len >= DIRECT_MIN {
                        let t = &mut p.tasks[p.task];
                        let dst = t[p.got..].as_mut_ptr();
                        if lowat_mode && lowat != direct_len {
                            set_lowat(fd, direct_len);
                            lowat = direct_len;
                        }
                        let e = if spill_mode {
                            let m = &mut *msg;
                            m.1 = [
                                libc::iovec {
                                    iov_base: dst.cast(),
                                    iov_len: direct_len,
                                },
                                libc::iovec {
                                    iov_base: spill.as_mut_ptr().cast(),
                                    iov_len: BHS,
                                },
                            ];
                            m.0.msg_iov = m.1.as_mut_ptr();
                            m.0.msg_iovlen = 2;
                            opcode::RecvMsg::new(types::Fd(fd), &mut m.0 as *mut _)
                                .ioprio(1) // IORING_RECVSEND_POLL_FIRST
                                .build()
                        } else {
                            let r = opcode::Recv::new(types::Fd(fd), dst, direct_len as u32);
                            if lowat_mode {
                                r.ioprio(1).build()
                            } else {
                                r.flags(libc::MSG_WAITALL).build()
                            }
                        };
                        let e = e.user_data(2);
                        // SAFETY: the task buffer, the spill and the boxed
                        // msghdr are not touched until this completion
                        // arrives.
                        unsafe { ring.submission().push(&e).expect("queue has room") };
                    } else {
                        post_staging(&mut ring, &mut staging, &mut lowat, STAGING);
                    }
                }
            }
        }
        Mode::Multishot => {
            // The ring of buffer descriptors, page aligned, and the
            // buffers it hands out.
            let ring_bytes = RING_ENTRIES as usize * std::mem::size_of::<types::BufRingEntry>();
            let layout = std::alloc::Layout::from_size_align(ring_bytes, 4096).expect("layout");
            // SAFETY: non-zero size.
            let base = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
            let mut bufs = vec![0u8; RING_ENTRIES as usize * RING_BUF];
            // SAFETY: `base` is a zeroed, page-aligned array of
            // RING_ENTRIES entries that outlives the registration (it is
            // unregistered below before being freed).
            unsafe {
                ring.submitter()
                    .register_buf_ring_with_flags(base as u64, RING_ENTRIES, BGID, 0)?
            };
            let mask = RING_ENTRIES - 1;
            let mut tail: u16 = 0;
            let add = |tail: &mut u16, bid: u16, bufs: &mut [u8]| {
                // SAFETY: index is masked into the ring; the tail store is
                // a release so the kernel sees the entry first.
                unsafe {
                    let e = &mut *base.add((*tail & mask) as usize);
                    e.set_addr(bufs.as_mut_ptr().add(bid as usize * RING_BUF) as u64);
                    e.set_len(RING_BUF as u32);
                    e.set_bid(bid);
                    *tail = tail.wrapping_add(1);
                    let t = types::BufRingEntry::tail(base) as *const std::sync::atomic::AtomicU16;
                    (*t).store(*tail, Ordering::Release);
                }
            };
            for bid in 0..RING_ENTRIES {
                add(&mut tail, bid, &mut bufs);
            }
            let arm = |ring: &mut IoUring| {
                let e: squeue::Entry = opcode::RecvMulti::new(types::Fd(fd), BGID)
                    .build()
                    .user_data(3);
                // SAFETY: the buffers belong to the registered ring.
                unsafe { ring.submission().push(&e).expect("queue has room") };
            };
            arm(&mut ring);
            'outer: while !stop.load(Ordering::Relaxed) {
                wait(&mut ring, &mut cqes)?;
                for &(_, res, flags) in &cqes {
                    if res == -libc::ENOBUFS {
                        arm(&mut ring);
                        continue;
                    }
                    if res <= 0 {
                        break 'outer;
                    }
                    let Some(bid) = cqueue::buffer_select(flags) else {
                        break 'outer;
                    };
                    let off = bid as usize * RING_BUF;
                    p.feed(&bufs[off..off + res as usize]);
                    add(&mut tail, bid, &mut bufs);
                    if !cqueue::more(flags) {
                        arm(&mut ring);
                    }
                }
            }
            let _ = ring.submitter().unregister_buf_ring(BGID);
            drop(ring);
            // SAFETY: allocated above with this layout; unregistered.
            unsafe { std::alloc::dealloc(base.cast(), layout) };
            return Ok((p.pdus, thread_cpu() - cpu0, p.bad));
        }
    }
    Ok((p.pdus, thread_cpu() - cpu0, p.bad))
}

fn run_one(mode: Mode, dsl: usize, secs: f64) -> Result<Result1, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let sender = std::thread::spawn(move || -> (f64, u64) {
        pin(1);
        let Ok(mut s) = TcpStream::connect(addr) else {
            return (0.0, 0);
        };
        let _ = s.set_nodelay(true);
        // One PDU per write, as an initiator sends them.
        let b = batch(dsl, 256);
        let pdu = BHS + dsl;
        let c0 = thread_cpu();
        let mut sent = 0u64;
        'send: while !st.load(Ordering::Relaxed) {
            for p in b.chunks(pdu) {
                if s.write_all(p).is_err() {
                    break 'send;
                }
                sent += pdu as u64;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        (thread_cpu() - c0, sent)
    });
    let (sock, _) = l.accept().map_err(|e| e.to_string())?;
    let stop2 = stop.clone();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop2.store(true, Ordering::Relaxed);
    });
    pin(0);
    let start = Instant::now();
    let r = receive(mode, sock, dsl, &stop);
    let wall = start.elapsed().as_secs_f64();
    let _ = timer.join();
    // The receiver's socket is closed by now, so a blocked sender returns.
    let (tx_cpu, _) = sender.join().map_err(|_| "sender thread panicked")?;
    let (pdus, rx_cpu, bad) = r.map_err(|e| format!("{mode:?}: {e}"))?;
    if bad > 0 {
        return Err(format!("{mode:?}: {bad} PDUs placed wrongly"));
    }
    let gb = pdus as f64 * dsl as f64 / 1e9;
    Ok(Result1 {
        gbs: gb / wall,
        rx_cpu_per_gb: rx_cpu / gb,
        tx_cpu_per_gb: tx_cpu / gb,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run both modes for 4 KiB and 128 KiB data segments, alternating, and
/// print (and return) a Markdown table.
pub fn main(rounds: usize, secs: f64) -> Result<String, String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| data segment | receive | GB/s | receiver CPU s/GB | sender CPU s/GB |\n|---|---|---:|---:|---:|"
    );
    for dsl in [4096usize, 128 * 1024] {
        let mut res: Vec<(Mode, Vec<Result1>)> = vec![
            (Mode::DirectSpill, Vec::new()),
            (Mode::Direct, Vec::new()),
            (Mode::DirectWaitall, Vec::new()),
            (Mode::Multishot, Vec::new()),
        ];
        let modes = res.len();
        for r in 0..rounds {
            for k in 0..modes {
                let i = (k + r) % modes;
                let mode = res[i].0;
                let x = run_one(mode, dsl, secs)?;
                eprintln!(
                    "recv {:>6} B {:<9} {:.2} GB/s  rx {:.3} s/GB  tx {:.3} s/GB",
                    dsl,
                    format!("{mode:?}"),
                    x.gbs,
                    x.rx_cpu_per_gb,
                    x.tx_cpu_per_gb
                );
                res[i].1.push(x);
            }
        }
        for (mode, v) in res {
            let mut g: Vec<f64> = v.iter().map(|x| x.gbs).collect();
            let mut rc: Vec<f64> = v.iter().map(|x| x.rx_cpu_per_gb).collect();
            let mut tc: Vec<f64> = v.iter().map(|x| x.tx_cpu_per_gb).collect();
            let _ = writeln!(
                out,
                "| {} KiB | {} | {:.2} | {:.3} | {:.3} |",
                dsl / 1024,
                match mode {
                    Mode::DirectSpill =>
                        "direct, SO_RCVLOWAT + next header in the same receive (today)",
                    Mode::Direct => "direct, SO_RCVLOWAT + header first (before)",
                    Mode::DirectWaitall => "direct, MSG_WAITALL (before that)",
                    Mode::Multishot => "multishot, provided-buffer ring",
                },
                median(&mut g),
                median(&mut rc),
                median(&mut tc)
            );
        }
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(out)
}
