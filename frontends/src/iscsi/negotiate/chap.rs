//! CHAP primitives for iSCSI login (RFC 7143 section 12.1.3, RFC 1994):
//! algorithms, responses, challenge generation.

use md5::Md5;
use sha2::{Digest, Sha256};

/// CHAP algorithms by their PPP authentication algorithm number (CHAP_A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapAlgorithm {
    /// 5: CHAP with MD5.
    Md5,
    /// 7: CHAP with SHA-256.
    Sha256,
}

impl ChapAlgorithm {
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            5 => Some(ChapAlgorithm::Md5),
            7 => Some(ChapAlgorithm::Sha256),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha256 => 7,
        }
    }

    /// Length of the response, and of the challenge the target sends.
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha256 => 32,
        }
    }

    /// H(identifier || secret || challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut h = D::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        match self {
            ChapAlgorithm::Md5 => run::<Md5>(id, secret, challenge),
            ChapAlgorithm::Sha256 => run::<Sha256>(id, secret, challenge),
        }
    }
}

/// Comparison whose time does not depend on where the inputs differ, so a
/// peer timing its failed logins learns nothing about the expected
/// response. (The length is not secret: it follows from the algorithm.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Fill `buf` from the kernel's random source. False if none is usable.
pub fn random_bytes(buf: &mut [u8]) -> bool {
    getrandom::fill(buf).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::negotiate::text::encode_hex;

    #[test]
    fn md5_vector() {
        let challenge: Vec<u8> = (1..=16).collect();
        let r = ChapAlgorithm::Md5.response(0x2a, b"verysecretpw", &challenge);
        assert_eq!(encode_hex(&r), "0xdcff8b6a836896fa609ec24c742b0517");
    }

    #[test]
    fn sha256_vector() {
        let challenge: Vec<u8> = (1..=32).collect();
        let r = ChapAlgorithm::Sha256.response(0x2a, b"verysecretpw", &challenge);
        assert_eq!(
            encode_hex(&r),
            "0xb22c82574ceb2c3ad6ac41f868697e6dfe3485001e2128dbebd96599ba4ac8a6"
        );
    }

    #[test]
    fn random_and_compare() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        assert!(random_bytes(&mut a));
        assert!(random_bytes(&mut b));
        assert_ne!(a, b);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
