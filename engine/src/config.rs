//! Parsing of engine-related operator input. Every error is one line that
//! names what to change.

use serde::Deserialize;

/// How a reactor waits for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Never sleep: the reactor spins on its completion queue. Lowest
    /// latency, one core fully used per reactor.
    Busy,
    /// Spin for a bounded time after the last completion, then block in the
    /// kernel until the next one; spin at all only while short epochs
    /// measure that spinning moves at least 25 % more commands per second
    /// for at most 10 % more CPU per command (as at queue depth 1).
    #[default]
    Adaptive,
    /// Always block in the kernel while there is nothing to do.
    Interrupt,
}

impl std::str::FromStr for PollMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(PollMode::Busy),
            "adaptive" => Ok(PollMode::Adaptive),
            "interrupt" => Ok(PollMode::Interrupt),
            _ => Err(format!("--poll {s}: expected busy, adaptive or interrupt")),
        }
    }
}

/// Whether sends go out with zero-copy `sendmsg` (IORING_OP_SENDMSG_ZC):
/// the NIC reads Data-In straight from the pool buffers instead of the
/// kernel copying them into socket buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopySend {
    /// Zero-copy for large sends to peers that are not on this machine;
    /// a connection goes back to plain `sendmsg` once the kernel reports
    /// that it copied anyway (loopback, a NIC without scatter-gather).
    #[default]
    Auto,
    /// Zero-copy for every large send, whatever the kernel reports.
    On,
    /// Plain `sendmsg` always.
    Off,
}

impl std::str::FromStr for ZeroCopySend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ZeroCopySend::Auto),
            "on" => Ok(ZeroCopySend::On),
            "off" => Ok(ZeroCopySend::Off),
            _ => Err(format!("--zero-copy-send {s}: expected auto, on or off")),
        }
    }
}

/// Parse a core list such as `0,1`, `0-3` or `0-1,4`. Every core must exist
/// on this machine (`available` cores, numbered from 0).
pub fn parse_core_list(s: &str, available: usize) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!(
                "--cores {s}: empty element; use a list such as 0,1 or 0-3"
            ));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |x: &str| {
            x.parse::<usize>().map_err(|_| {
                format!("--cores {s}: '{x}' is not a core number; use a list such as 0,1 or 0-3")
            })
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            return Err(format!("--cores {s}: range {lo}-{hi} is backwards"));
        }
        for c in lo..=hi {
            if c >= available {
                return Err(format!(
                    "--cores {s}: core {c} does not exist (this machine has cores 0-{})",
                    available.saturating_sub(1)
                ));
            }
            if !cores.contains(&c) {
                cores.push(c);
            }
        }
    }
    Ok(cores)
}

/// Parse a size such as `512`, `64K`, `64M`, `1G`, `2T` (binary units; an
/// optional trailing `B` or `iB` is accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("size '{s}': unknown unit '{c}' (use K, M, G or T)")),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("size '{s}': not a number (examples: 64M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}': too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(parse_core_list("0,1", 2).unwrap(), vec![0, 1]);
        assert_eq!(parse_core_list("0-3", 8).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_core_list("1,0-1", 2).unwrap(), vec![1, 0]);
        assert!(parse_core_list("99", 2)
            .unwrap_err()
            .contains("does not exist"));
        assert!(parse_core_list("a", 2).is_err());
        assert!(parse_core_list("3-1", 8).is_err());
        assert!(parse_core_list("", 8).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn zero_copy_modes() {
        assert_eq!("auto".parse::<ZeroCopySend>().unwrap(), ZeroCopySend::Auto);
        assert_eq!("on".parse::<ZeroCopySend>().unwrap(), ZeroCopySend::On);
        assert_eq!("off".parse::<ZeroCopySend>().unwrap(), ZeroCopySend::Off);
        assert!("yes"
            .parse::<ZeroCopySend>()
            .unwrap_err()
            .contains("--zero-copy-send yes: expected auto, on or off"));
    }

    #[test]
    fn poll_modes() {
        assert_eq!("busy".parse::<PollMode>().unwrap(), PollMode::Busy);
        assert!("fast"
            .parse::<PollMode>()
            .unwrap_err()
            .contains("--poll fast"));
    }
}
