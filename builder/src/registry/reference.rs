//! Image references (`host[:port]/repository[:tag][@sha256:…]`), parsed by hand: the
//! distribution grammar's regex costs ~20 ms to compile, more than a whole warm build.

use oci_client::Reference;

use super::RegistryError;

const EXPECTED: &str = "expected host[:port]/repository[:tag][@sha256:<64 hex>]";

/// Parses an image reference, with an error naming what is wrong with it. Names without a
/// registry host are Docker Hub's (`node:20` → `docker.io/library/node:20`); no tag means
/// `latest`.
pub fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    let fail = |problem: &str| {
        RegistryError::local(
            reference,
            "parse image reference",
            format!("invalid reference: {problem} ({EXPECTED})"),
        )
    };
    if reference.is_empty() || reference.len() > 1024 {
        return Err(fail("empty or longer than 1024 characters"));
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((name, digest)) => {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(fail("digest is not sha256:<64 lowercase hex>"));
            }
            (name, Some(digest.to_owned()))
        }
        None => (reference, None),
    };
    let last_slash = name_tag.rfind('/');
    let (name, tag) = match name_tag.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&name_tag[..colon], Some(&name_tag[colon + 1..]))
        }
        _ => (name_tag, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(fail(&format!(
                "tag {tag:?} must be 1-128 of A-Z a-z 0-9 _ . - (not starting with . or -)"
            )));
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ if name.contains('/') => ("docker.io".to_owned(), name.to_owned()),
        _ => ("docker.io".to_owned(), format!("library/{name}")),
    };
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry.as_str(), None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if !host_ok || !port_ok {
        return Err(fail(&format!("registry {registry:?} is not host[:port]")));
    }
    if repository.is_empty() || repository.len() > 255 {
        return Err(fail(
            "repository name is empty or longer than 255 characters",
        ));
    }
    for component in repository.split('/') {
        if !component_ok(component) {
            return Err(fail(&format!(
                "repository part {component:?} must be lowercase letters and digits, separated by . _ __ or -"
            )));
        }
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.to_owned(), digest)
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned())
        }
    })
}

/// `host[:port]/repository` of a reference, without its tag or digest (`None` when it does
/// not parse).
pub fn repository_of(reference: &str) -> Option<String> {
    let r = parse_reference(reference).ok()?;
    Some(format!("{}/{}", r.registry(), r.repository()))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = parse_reference(s).unwrap();
        (
            r.registry().to_owned(),
            r.repository().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(str::to_owned),
        )
    }

    #[test]
    fn parses_the_usual_forms() {
        let d = format!("sha256:{}", "a".repeat(64));
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            parts("127.0.0.1:5000/apps/hello:v1"),
            ("127.0.0.1:5000".into(), "apps/hello".into(), s("v1"), None)
        );
        assert_eq!(
            parts("node:20"),
            ("docker.io".into(), "library/node".into(), s("20"), None)
        );
        assert_eq!(
            parts("localhost/x/y"),
            ("localhost".into(), "x/y".into(), s("latest"), None)
        );
        assert_eq!(
            parts("ghcr.io/a/b-c__d.e"),
            ("ghcr.io".into(), "a/b-c__d.e".into(), s("latest"), None)
        );
        assert_eq!(
            parts(&format!("r.io:443/a@{d}")),
            ("r.io:443".into(), "a".into(), None, Some(d.clone()))
        );
        assert_eq!(
            parts(&format!("r.io/a:t@{d}")),
            ("r.io".into(), "a".into(), s("t"), Some(d.clone()))
        );
        assert_eq!(
            parse_reference("127.0.0.1:5000/apps/hello:v1")
                .unwrap()
                .whole(),
            "127.0.0.1:5000/apps/hello:v1"
        );
    }

    #[test]
    fn rejects_bad_ones_saying_why() {
        for (bad, why) in [
            ("", "empty"),
            ("127.0.0.1:5000/UPPER/case", "repository part \"UPPER\""),
            ("r.io/a b", "repository part \"a b\""),
            ("r.io/a:", "tag \"\""),
            ("r.io/a:-x", "tag"),
            ("r.io/a@sha256:abc", "digest"),
            ("r.io:port/a", "registry \"r.io:port\""),
            ("r.io/a//b", "repository part \"\""),
            ("r.io/a--", "repository part"),
        ] {
            let err = parse_reference(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.contains("invalid reference"), "{err}");
        }
    }
}
