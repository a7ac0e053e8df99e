//! NKey user keys for tests, made with openssl (ed25519) and written as nats-server and the
//! client read them: RFC 4648 base32 (no padding) of a prefix, the 32-byte key and its
//! CRC-16 (XMODEM) little end first. A seed (`SU…`, 58 characters) holds the private key,
//! the public key (`U…`, 56 characters) goes in the server's config.

use std::path::Path;
use std::process::Command;

/// An NKey user.
pub struct UserKey {
    /// The seed (the secret).
    pub seed: String,
    /// The public key.
    pub public: String,
}

/// The prefix byte of a seed.
const SEED: u8 = 18 << 3;
/// The prefix byte of a user.
const USER: u8 = 20 << 3;

/// A new user key pair (openssl's files under `dir`, named after `name`).
pub fn user_key(dir: &Path, name: &str) -> UserKey {
    let pem = dir.join(format!("{name}.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        pem.to_str().unwrap(),
    ]);
    let der = |extra: &[&str]| {
        let mut args = vec!["pkey", "-in", pem.to_str().unwrap(), "-outform", "DER"];
        args.extend_from_slice(extra);
        let out = openssl(&args);
        out[out.len() - 32..].to_vec()
    };
    let (private, public) = (der(&[]), der(&["-pubout"]));
    let mut seed = vec![SEED | USER >> 5, (USER & 31) << 3];
    seed.extend_from_slice(&private);
    let mut user = vec![USER];
    user.extend_from_slice(&public);
    UserKey {
        seed: encode(seed),
        public: encode(user),
    }
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `raw` with its CRC-16 appended, in base32.
fn encode(mut raw: Vec<u8>) -> String {
    let crc = crc16(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    base32(&raw)
}

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &b| {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                crc << 1 ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    })
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for &b in bytes {
        buffer = buffer << 8 | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[(buffer >> bits & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[(buffer << (5 - bits) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // RFC 4648's test vectors and the CRC-16/XMODEM check value.
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }
}
