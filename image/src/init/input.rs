//! The power button, read from evdev devices (`/dev/input/event*`).
//!
//! ACPI's power button (and keyboards with a power key) report KEY_POWER
//! through the input layer once the `button` and `evdev` drivers are
//! loaded (coldplug loads them from the devices' modaliases). Devices can
//! appear after PID 1 starts, so the directory is scanned again from time
//! to time.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `KEY_POWER` from linux/input-event-codes.h.
pub const KEY_POWER: u16 = 116;
const EV_KEY: u16 = 1;
/// Highest key code (KEY_MAX) + 1, in bits.
const KEY_CNT: usize = 0x300;

/// One evdev event, without its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    /// `EV_*` type.
    pub kind: u16,
    /// Key or axis code.
    pub code: u16,
    /// 1 press, 0 release, 2 autorepeat (for keys).
    pub value: i32,
}

/// Split what a read from an evdev device returned into events (the
/// kernel's `struct input_event`: a timeval, then type, code, value). A
/// trailing partial record is ignored.
pub fn parse_events(buf: &[u8]) -> Vec<InputEvent> {
    let size = std::mem::size_of::<libc::input_event>();
    buf.chunks_exact(size)
        .map(|r| {
            let t = size - 8;
            InputEvent {
                kind: u16::from_ne_bytes([r[t], r[t + 1]]),
                code: u16::from_ne_bytes([r[t + 2], r[t + 3]]),
                value: i32::from_ne_bytes([r[t + 4], r[t + 5], r[t + 6], r[t + 7]]),
            }
        })
        .collect()
}

/// A press of the power key (not its release or autorepeat).
pub fn is_power_press(e: &InputEvent) -> bool {
    e.kind == EV_KEY && e.code == KEY_POWER && e.value == 1
}

/// Whether a key bitmap (as EVIOCGBIT(EV_KEY) fills it) has `key`.
pub fn has_key(bits: &[u8], key: u16) -> bool {
    let k = usize::from(key);
    bits.get(k / 8).is_some_and(|b| b & (1 << (k % 8)) != 0)
}

/// `_IOC(_IOC_READ, 'E', nr, len)`.
fn eviocg(nr: u64, len: usize) -> u64 {
    (2u64 << 30) | ((len as u64) << 16) | (u64::from(b'E') << 8) | nr
}

/// The device's name (EVIOCGNAME), for messages.
fn device_name(f: &File) -> String {
    let mut buf = [0u8; 128];
    // SAFETY: the buffer is as long as the size encoded in the request.
    let n = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            eviocg(0x06, buf.len()) as _,
            buf.as_mut_ptr(),
        )
    };
    if n <= 0 {
        return "input device".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Does the device report KEY_POWER (EVIOCGBIT(EV_KEY))?
fn reports_power(f: &File) -> bool {
    let mut bits = [0u8; KEY_CNT / 8];
    // SAFETY: the buffer is as long as the size encoded in the request.
    let n = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            eviocg(0x20 + u64::from(EV_KEY), bits.len()) as _,
            bits.as_mut_ptr(),
        )
    };
    n > 0 && has_key(&bits[..(n as usize).min(bits.len())], KEY_POWER)
}

/// The evdev devices that have a power key, kept open.
pub(crate) struct PowerButtons {
    dir: PathBuf,
    /// Watched devices: path → (file, device number, name).
    open: HashMap<PathBuf, (File, u64, String)>,
    /// Devices looked at that have no power key, by device number (a
    /// node reused for another device is looked at again).
    skipped: HashMap<PathBuf, u64>,
}

impl PowerButtons {
    pub(crate) fn new(dir: &Path) -> PowerButtons {
        PowerButtons {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
            skipped: HashMap::new(),
        }
    }

    /// Look for new event devices; returns the names of those now
    /// watched, for the console.
    pub(crate) fn rescan(&mut self) -> Vec<String> {
        let mut added = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return added;
        };
        for e in rd.flatten() {
            let path = e.path();
            if !e.file_name().to_string_lossy().starts_with("event") {
                continue;
            }
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            if !md.file_type().is_char_device() {
                continue;
            }
            let rdev = md.rdev();
            if self.open.get(&path).is_some_and(|o| o.1 == rdev)
                || self.skipped.get(&path) == Some(&rdev)
            {
                continue;
            }
            let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&path)
            else {
                continue;
            };
            if reports_power(&f) {
                let name = device_name(&f);
                added.push(format!("{name} ({})", path.display()));
                self.open.insert(path, (f, rdev, name));
            } else {
                self.skipped.insert(path, rdev);
            }
        }
        added
    }

    pub(crate) fn fds(&self) -> Vec<RawFd> {
        self.open.values().map(|o| o.0.as_raw_fd()).collect()
    }

    /// Read what `fd` has; true on a power key press. A device that went
    /// away is dropped.
    pub(crate) fn pressed(&mut self, fd: RawFd) -> Option<String> {
        let key = self
            .open
            .iter()
            .find(|(_, o)| o.0.as_raw_fd() == fd)
            .map(|(p, _)| p.clone())?;
        let size = std::mem::size_of::<libc::input_event>();
        let mut buf = vec![0u8; size * 64];
        let mut hit = None;
        loop {
            let f = &self.open.get(&key)?.0;
            // SAFETY: valid buffer.
            let n = unsafe { libc::read(f.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                if e.raw_os_error() != Some(libc::EAGAIN) {
                    self.open.remove(&key);
                }
                break;
            }
            if n == 0 {
                self.open.remove(&key);
                break;
            }
            if parse_events(&buf[..n as usize]).iter().any(is_power_press) {
                hit = self.open.get(&key).map(|o| o.2.clone());
            }
            if (n as usize) < buf.len() {
                break;
            }
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let size = std::mem::size_of::<libc::input_event>();
        let mut r = vec![0xAAu8; size - 8];
        r.extend_from_slice(&kind.to_ne_bytes());
        r.extend_from_slice(&code.to_ne_bytes());
        r.extend_from_slice(&value.to_ne_bytes());
        r
    }

    #[test]
    fn power_press_among_other_events() {
        let mut b = raw(EV_KEY, KEY_POWER, 1);
        b.extend(raw(0, 0, 0)); // SYN_REPORT
        b.extend(raw(EV_KEY, KEY_POWER, 0));
        b.extend(raw(EV_KEY, 30, 1)); // KEY_A
        b.extend_from_slice(&[1, 2, 3]); // a torn record
        let ev = parse_events(&b);
        assert_eq!(ev.len(), 4);
        assert_eq!(
            ev[0],
            InputEvent {
                kind: 1,
                code: 116,
                value: 1
            }
        );
        let presses: Vec<bool> = ev.iter().map(is_power_press).collect();
        assert_eq!(presses, [true, false, false, false]);
        // Autorepeat is not a new press.
        assert!(!is_power_press(
            &parse_events(&raw(EV_KEY, KEY_POWER, 2))[0]
        ));
        assert!(parse_events(&[0u8; 5]).is_empty());
    }

    #[test]
    fn key_bitmap() {
        let mut bits = [0u8; KEY_CNT / 8];
        assert!(!has_key(&bits, KEY_POWER));
        bits[116 / 8] |= 1 << (116 % 8);
        assert!(has_key(&bits, KEY_POWER));
        assert!(!has_key(&bits, 117));
        assert!(!has_key(&bits[..4], KEY_POWER), "short bitmap");
        // The ioctl numbers the kernel headers define.
        assert_eq!(eviocg(0x21, 96), 0x8060_4521);
        assert_eq!(eviocg(0x06, 128), 0x8080_4506);
    }
}
