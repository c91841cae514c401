//! CHAP primitives for iSCSI login (RFC 7143 section 12.1.3, RFC 1994):
//! algorithms, responses, challenge generation.

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use sha3::Sha3_256;

/// CHAP algorithms by their PPP authentication algorithm number (CHAP_A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapAlgorithm {
    /// 5: CHAP with MD5.
    Md5,
    /// 6: CHAP with SHA-1.
    Sha1,
    /// 7: CHAP with SHA-256.
    Sha256,
    /// 8: CHAP with SHA3-256.
    Sha3_256,
}

impl ChapAlgorithm {
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            5 => Some(ChapAlgorithm::Md5),
            6 => Some(ChapAlgorithm::Sha1),
            7 => Some(ChapAlgorithm::Sha256),
            8 => Some(ChapAlgorithm::Sha3_256),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha1 => 6,
            ChapAlgorithm::Sha256 => 7,
            ChapAlgorithm::Sha3_256 => 8,
        }
    }

    /// Length of the response, and of the challenge the target sends.
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha1 => 20,
            ChapAlgorithm::Sha256 | ChapAlgorithm::Sha3_256 => 32,
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
            ChapAlgorithm::Sha1 => run::<Sha1>(id, secret, challenge),
            ChapAlgorithm::Sha256 => run::<Sha256>(id, secret, challenge),
            ChapAlgorithm::Sha3_256 => run::<Sha3_256>(id, secret, challenge),
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
    fn sha1_and_sha3_vectors() {
        let challenge: Vec<u8> = (1..=20).collect();
        let r = ChapAlgorithm::Sha1.response(0x2a, b"verysecretpw", &challenge);
        assert_eq!(encode_hex(&r), "0xb9f72a890780543549b00fe91208eb20907e40c7");
        let challenge: Vec<u8> = (1..=32).collect();
        let r = ChapAlgorithm::Sha3_256.response(0x2a, b"verysecretpw", &challenge);
        assert_eq!(
            encode_hex(&r),
            "0x6d38aff111268592ea32514cdc8b2a3af8b50e383a8afeecf432182f6f35d961"
        );
    }

    /// With identifier 'a', secret "b" and challenge "c" the hashed input
    /// is "abc", whose digests are the published FIPS 180 / FIPS 202
    /// and RFC 1321 examples: a check independent of our own arithmetic.
    #[test]
    fn every_algorithm_hashes_id_secret_challenge_in_order() {
        let cases = [
            (5, "0x900150983cd24fb0d6963f7d28e17f72"),
            (6, "0xa9993e364706816aba3e25717850c26c9cd0d89d"),
            (
                7,
                "0xba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                8,
                "0x3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532",
            ),
        ];
        for (code, want) in cases {
            let alg = ChapAlgorithm::from_code(code).expect("known algorithm");
            assert_eq!(u64::from(alg.code()), code);
            let r = alg.response(b'a', b"b", b"c");
            assert_eq!(r.len(), alg.digest_len());
            assert_eq!(encode_hex(&r), want, "CHAP_A={code}");
        }
        assert!(ChapAlgorithm::from_code(4).is_none());
        assert!(ChapAlgorithm::from_code(9).is_none());
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
