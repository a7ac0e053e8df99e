//! Searching for a secret in every form it could leak in: as is, URL-encoded, JSON-escaped,
//! and base64 (standard and URL-safe) at any offset inside a larger encoded text, such as
//! a Basic `Authorization` header or a docker `config.json` `auth` field. Files are searched
//! as they are and, when gzip-compressed (layer blobs), decompressed too.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::base64;

/// Every text that appears wherever `secret` was written in one of the covered encodings.
///
/// For base64, the secret is encoded after 0, 1 and 2 filler bytes, and only the characters
/// that depend on the secret alone are kept, so the form is found whatever precedes it.
pub fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned(), url_encoded(secret)];
    forms.push(
        serde_json::to_string(secret)
            .unwrap()
            .trim_matches('"')
            .to_owned(),
    );
    for url in [false, true] {
        for pad in 0..3usize {
            let mut bytes = vec![b'x'; pad];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = base64(&bytes, url);
            let encoded = encoded.trim_end_matches('=');
            // Characters touched by the filler, and a last one that may mix with what follows.
            let skip = (pad * 8).div_ceil(6);
            let keep = (bytes.len() * 8 / 6).saturating_sub(skip);
            forms.push(encoded.chars().skip(skip).take(keep).collect());
        }
    }
    forms.retain(|f| f.len() >= 6);
    forms.sort();
    forms.dedup();
    forms
}

/// Percent-encoding of everything but unreserved characters (RFC 3986).
fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where `secret` appears in `text`, in any form: the forms found.
pub fn found_in_text(secret: &str, text: &[u8]) -> Vec<String> {
    forms(secret)
        .into_iter()
        .filter(|f| contains(text, f.as_bytes()))
        .collect()
}

/// Every file under `paths` (recursively; gzip files also decompressed) holding `secret`
/// in any form, with the form found. Unreadable paths fail the test.
pub fn found_in_files(secret: &str, paths: &[&Path]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for path in paths {
        walk(path, &mut |file, bytes| {
            for form in found_in_text(secret, bytes) {
                found.push((file.to_owned(), form));
            }
        });
    }
    found
}

/// Asserts that `secret` is in none of `texts` and no file under `paths`, in any form.
pub fn assert_absent(secret: &str, texts: &[(&str, &[u8])], paths: &[&Path]) {
    for (what, text) in texts {
        let hits = found_in_text(secret, text);
        assert!(hits.is_empty(), "secret in {what} as {hits:?}");
    }
    let hits = found_in_files(secret, paths);
    assert!(hits.is_empty(), "secret in files: {hits:?}");
}

fn walk(path: &Path, visit: &mut dyn FnMut(&Path, &[u8])) {
    let meta = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("secret search: {}: {e}", path.display()));
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("secret search: {}: {e}", path.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for entry in entries {
            walk(&entry, visit);
        }
    } else if meta.is_file() {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("secret search: {}: {e}", path.display()));
        visit(path, &bytes);
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut inflated = Vec::new();
            if flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut inflated)
                .is_ok()
            {
                visit(path, &inflated);
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_and_url_forms_are_found() {
        let pw = "s3cret-Pa55:word/x";
        for user in ["a", "ab", "abc"] {
            let header = format!(
                "Authorization: Basic {}",
                base64(format!("{user}:{pw}").as_bytes(), false)
            );
            assert!(!found_in_text(pw, header.as_bytes()).is_empty(), "{header}");
            let url = base64(format!("{user}:{pw}").as_bytes(), true);
            assert!(!found_in_text(pw, url.as_bytes()).is_empty(), "{url}");
        }
        assert!(!found_in_text(pw, b"password=s3cret-Pa55%3Aword%2Fx&").is_empty());
        assert!(found_in_text(pw, b"nothing here").is_empty());
    }
}
