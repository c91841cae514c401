//! Child processes: bounded runs, and spawned children whose output is
//! captured line by line with timestamps and waited on with [`Capture::wait_for`].

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};
// ---------------------------------------------------------------------------
// Small process helpers
// ---------------------------------------------------------------------------

/// Runs `cmd` to completion within `limit` (killed on overrun) and returns
/// stdout as text; panics with the full output on failure.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    String::from_utf8_lossy(&run_bytes(cmd, limit)).into_owned()
}

/// Runs `cmd` to completion within `limit` (killed on overrun) and returns
/// stdout's raw bytes; panics with the full output on failure.
pub fn run_bytes(cmd: &mut Command, limit: Duration) -> Vec<u8> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, limit);
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => out,
        other => panic!(
            "{desc} failed ({other:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Waits for `child` at most `limit`; on overrun SIGKILLs exactly that child
/// and returns None.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // Polls the child's state; nothing is ordered by this sleep.
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Captured, timestamped output
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Lines {
    lines: Vec<(Duration, String)>,
    /// Every byte received, newlines or not: firmware consoles draw menus
    /// and forms with cursor moves and no newline.
    raw: Vec<u8>,
    open: usize,
}

/// Lines written by a child, each with the time since `origin`.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<(Mutex<Lines>, Condvar)>,
    origin: Instant,
}

impl Capture {
    pub fn new(origin: Instant) -> Capture {
        Capture {
            inner: Arc::default(),
            origin,
        }
    }

    /// Reads `r` line by line (lossy UTF-8, `\r` stripped) into the capture;
    /// with `echo`, also prints each line prefixed by `tag`.
    pub fn attach<R: Read + Send + 'static>(&self, r: R, tag: &'static str, echo: bool) {
        self.attach_prefixed(r, tag, echo, "");
    }

    /// Like [`Capture::attach`], storing each line behind `prefix` (to tell
    /// a child's stdout from its stderr in one log).
    pub fn attach_prefixed<R: Read + Send + 'static>(
        &self,
        r: R,
        tag: &'static str,
        echo: bool,
        prefix: &'static str,
    ) {
        self.inner.0.lock().unwrap().open += 1;
        let me = self.clone();
        thread::spawn(move || {
            let mut r = r;
            let mut chunk = [0u8; 4096];
            let mut pending: Vec<u8> = Vec::new();
            let push_line = |st: &mut Lines, bytes: &[u8]| {
                let line: String = String::from_utf8_lossy(bytes)
                    .chars()
                    .filter(|c| *c != '\r' && *c != '\n')
                    .collect();
                let t = me.origin.elapsed();
                if echo {
                    eprintln!("[{:7.2}s {tag}] {line}", t.as_secs_f64());
                }
                st.lines.push((t, format!("{prefix}{line}")));
            };
            loop {
                let n = match r.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let (lock, cv) = &*me.inner;
                let mut st = lock.lock().unwrap();
                st.raw.extend_from_slice(&chunk[..n]);
                pending.extend_from_slice(&chunk[..n]);
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    push_line(&mut st, &pending[..i]);
                    pending.drain(..=i);
                }
                drop(st);
                cv.notify_all();
            }
            if !pending.is_empty() {
                push_line(&mut me.inner.0.lock().unwrap(), &pending);
            }
            let (lock, cv) = &*me.inner;
            lock.lock().unwrap().open -= 1;
            cv.notify_all();
        });
    }

    pub fn text(&self) -> String {
        let st = self.inner.0.lock().unwrap();
        st.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn lines(&self) -> Vec<(Duration, String)> {
        self.inner.0.lock().unwrap().lines.clone()
    }

    /// Waits (at most `limit`) for a line satisfying `pred`; None if the
    /// streams closed or time ran out first.
    pub fn wait_for(
        &self,
        limit: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<(Duration, String)> {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap();
        let mut seen = 0;
        loop {
            while seen < st.lines.len() {
                if pred(&st.lines[seen].1) {
                    return Some(st.lines[seen].clone());
                }
                seen += 1;
            }
            let now = Instant::now();
            if st.open == 0 || now >= deadline {
                return None;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Everything received so far, including a line still being drawn.
    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.inner.0.lock().unwrap().raw).into_owned()
    }

    /// Waits (at most `limit`) until the raw output (newlines or not)
    /// satisfies `pred`; false if the streams closed or time ran out first.
    pub fn wait_raw(&self, limit: Duration, mut pred: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap();
        let mut seen = usize::MAX;
        loop {
            if st.raw.len() != seen {
                seen = st.raw.len();
                if pred(&String::from_utf8_lossy(&st.raw)) {
                    return true;
                }
            }
            let now = Instant::now();
            if st.open == 0 || now >= deadline {
                return false;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Waits (at most `limit`) until every attached stream reached EOF.
    pub fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap();
        loop {
            if st.open == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

/// A spawned child with captured stdout/stderr. Dropping it SIGKILLs the
/// child if it is still running (by its PID only).
pub struct Spawned {
    pub child: Option<Child>,
    /// The child's stdin when spawned with [`Spawned::interactive`].
    stdin: Option<ChildStdin>,
    pub out: Capture,
    pub name: &'static str,
}

impl Spawned {
    pub fn spawn(name: &'static str, cmd: &mut Command, origin: Instant, echo: bool) -> Spawned {
        cmd.stdin(Stdio::null());
        Spawned::start(name, cmd, origin, echo)
    }

    /// Like [`Spawned::spawn`], with stdin kept open for [`Spawned::type_text`]
    /// (a serial console on QEMU's stdio).
    pub fn interactive(
        name: &'static str,
        cmd: &mut Command,
        origin: Instant,
        echo: bool,
    ) -> Spawned {
        cmd.stdin(Stdio::piped());
        let mut s = Spawned::start(name, cmd, origin, echo);
        s.stdin = s.child.as_mut().and_then(|c| c.stdin.take());
        s
    }

    /// Writes `s` to the child's stdin (ignored if it has none or exited).
    pub fn type_text(&mut self, s: &str) {
        if let Some(i) = self.stdin.as_mut() {
            let _ = i.write_all(s.as_bytes());
            let _ = i.flush();
        }
    }

    fn start(name: &'static str, cmd: &mut Command, origin: Instant, echo: bool) -> Spawned {
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({desc}): {e}"));
        let out = Capture::new(origin);
        out.attach(child.stdout.take().unwrap(), name, echo);
        out.attach(child.stderr.take().unwrap(), name, echo);
        Spawned {
            child: Some(child),
            stdin: None,
            out,
            name,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `sig` to the child's PID (if it has not been reaped).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = self.child.as_ref() {
            // SAFETY: kill(2) on the PID of our own unreaped child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `sig` to the child's PID and waits at most `limit` for it to
    /// exit (SIGKILL after that; then None).
    pub fn stop(&mut self, sig: libc::c_int, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
        let st = wait_bounded(&mut child, limit);
        self.out.wait_closed(Duration::from_secs(5));
        st
    }

    /// Waits at most `limit` for the child to exit on its own; kills it on
    /// overrun (then None).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let st = wait_bounded(&mut child, limit);
        self.out.wait_closed(Duration::from_secs(5));
        st
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = wait_bounded(&mut c, Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------
