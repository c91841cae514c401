//! Signals for PID 1: real handlers that write the signal number to a
//! pipe the supervisor polls.
//!
//! Why handlers and not signalfd alone: the kernel discards a signal sent
//! to PID 1 when the thread it is delivered to has it unblocked with the
//! default action. With signalfd every thread must keep the signal blocked,
//! and one thread started before the mask was set (or that unblocks it)
//! silently loses shutdown requests. A handler works in any thread. The
//! signals are still blocked everywhere but in the supervisor (see
//! [`block_in_this_thread`]) so that reactor threads are not interrupted in
//! their system calls.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

/// Signals PID 1 acts on.
pub(crate) const HANDLED: [libc::c_int; 6] = [
    libc::SIGCHLD,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
];

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);
static READ_FD: AtomicI32 = AtomicI32::new(-1);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here; errno is preserved for the code
    // the signal interrupted.
    // SAFETY: __errno_location is the thread's errno; write(2) is
    // async-signal-safe and the pipe is non-blocking (a full pipe already
    // holds a wake-up).
    unsafe {
        let e = *libc::__errno_location();
        let fd = WRITE_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let b = sig as u8;
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
        *libc::__errno_location() = e;
    }
}

fn sigset(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Install the handlers (once per process). SIGHUP is ignored: a console
/// hang-up must not reach PID 1's default action.
pub(crate) fn install() -> Result<(), String> {
    INSTALLED
        .get_or_init(|| {
            let mut fds = [0; 2];
            // SAFETY: fds has room for two descriptors.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
                return Err(format!("signal pipe: {}", std::io::Error::last_os_error()));
            }
            READ_FD.store(fds[0], Ordering::Relaxed);
            WRITE_FD.store(fds[1], Ordering::Relaxed);
            for &s in &HANDLED {
                // SAFETY: a zeroed sigaction with a valid handler and mask.
                unsafe {
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                    sa.sa_flags = libc::SA_RESTART
                        | if s == libc::SIGCHLD {
                            libc::SA_NOCLDSTOP
                        } else {
                            0
                        };
                    libc::sigemptyset(&mut sa.sa_mask);
                    if libc::sigaction(s, &sa, std::ptr::null_mut()) != 0 {
                        return Err(format!("signal {s}: {}", std::io::Error::last_os_error()));
                    }
                }
            }
            // SAFETY: setting a disposition to SIG_IGN.
            unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
            Ok(())
        })
        .clone()
}

/// Block the handled signals in the calling thread; threads it starts
/// later inherit the mask.
pub(crate) fn block_in_this_thread() {
    let set = sigset(&HANDLED);
    // SAFETY: valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Unblock them in the calling thread (the supervisor), so the kernel
/// delivers process-directed signals here.
pub(crate) fn unblock_in_this_thread() {
    let set = sigset(&HANDLED);
    // SAFETY: valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// The read end of the signal pipe (-1 before [`install`]).
pub(crate) fn read_fd() -> i32 {
    READ_FD.load(Ordering::Relaxed)
}

/// Signals received since the last call, oldest first (non-blocking).
pub(crate) fn drain() -> Vec<libc::c_int> {
    let fd = read_fd();
    let mut out = Vec::new();
    if fd < 0 {
        return out;
    }
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: valid buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend(buf[..n as usize].iter().map(|&b| libc::c_int::from(b)));
    }
    out
}
