//! Subresource-integrity strings (`sha512-<base64>`) as npm lockfiles carry them: the
//! strongest hash is checked, and names the tarball's file in npm's content-addressed cache.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::Digest as _;

/// The hash algorithms npm records, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Algorithm {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "sha1" => Algorithm::Sha1,
            "sha256" => Algorithm::Sha256,
            "sha384" => Algorithm::Sha384,
            "sha512" => Algorithm::Sha512,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// One expected hash of a tarball.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Integrity {
    algorithm: Algorithm,
    digest: Vec<u8>,
}

impl Integrity {
    /// The strongest hash of an SRI string (several may be given, space-separated); `None`
    /// when none is of a known algorithm.
    pub fn parse(sri: &str) -> Option<Self> {
        sri.split_whitespace()
            .filter_map(|part| {
                let (name, rest) = part.split_once('-')?;
                let algorithm = Algorithm::parse(name)?;
                let b64 = rest.split('?').next()?;
                let digest = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
                Some(Integrity { algorithm, digest })
            })
            .max_by_key(|i| i.algorithm)
    }

    /// Where npm's cache (`cache` is npm's `cache` setting, `~/.npm`) keeps the bytes.
    pub fn cache_path(&self, cache: &Path) -> PathBuf {
        let hex = hex::encode(&self.digest);
        cache
            .join("_cacache/content-v2")
            .join(self.algorithm.name())
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(&hex[4..])
    }

    /// A reader that hashes what passes through it, for [`Integrity::check`].
    pub fn reader<R: Read>(&self, inner: R) -> HashingReader<R> {
        let hasher = match self.algorithm {
            Algorithm::Sha1 => Hasher::Sha1(sha1_smol::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        };
        HashingReader { inner, hasher }
    }

    /// Reads the rest of `reader` and says whether everything it read matches; on a
    /// mismatch, the SRI string of what was read.
    pub fn check<R: Read>(&self, mut reader: HashingReader<R>) -> io::Result<Result<(), String>> {
        io::copy(&mut reader, &mut io::sink())?;
        let found = reader.hasher.finish();
        if found == self.digest {
            return Ok(Ok(()));
        }
        Ok(Err(format!(
            "{}-{}",
            self.algorithm.name(),
            base64::engine::general_purpose::STANDARD.encode(found)
        )))
    }
}

impl std::fmt::Display for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}",
            self.algorithm.name(),
            base64::engine::general_purpose::STANDARD.encode(&self.digest)
        )
    }
}

enum Hasher {
    Sha1(sha1_smol::Sha1),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha384(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.digest().bytes().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// Hashes every byte read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strongest_hash_is_checked_and_names_the_cache_file() {
        let bytes = b"hello";
        let sha1 = base64::engine::general_purpose::STANDARD
            .encode(sha1_smol::Sha1::from(bytes).digest().bytes());
        let sha512 = base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(bytes));
        let integrity = Integrity::parse(&format!("sha1-{sha1} sha512-{sha512}")).unwrap();
        assert_eq!(integrity.algorithm, Algorithm::Sha512);
        let path = integrity.cache_path(Path::new("/c"));
        let hex = hex::encode(sha2::Sha512::digest(bytes));
        assert_eq!(
            path,
            Path::new("/c/_cacache/content-v2/sha512")
                .join(&hex[..2])
                .join(&hex[2..4])
                .join(&hex[4..])
        );
        assert_eq!(
            integrity.check(integrity.reader(&bytes[..])).unwrap(),
            Ok(())
        );
        let wrong = integrity.check(integrity.reader(&b"hellO"[..])).unwrap();
        assert!(wrong.unwrap_err().starts_with("sha512-"));
        let old = Integrity::parse(&format!("sha1-{sha1}")).unwrap();
        assert_eq!(old.check(old.reader(&bytes[..])).unwrap(), Ok(()));
        assert_eq!(Integrity::parse("md5-abc"), None);
    }
}
