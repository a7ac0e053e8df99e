//! Path safety: checks on entry names and symlink targets, so that nothing lands or points
//! outside `dest`.

use super::limits::ExtractLimits;

/// Checks an entry name and splits it into its normal components (`.` and empty ones dropped).
pub(super) fn parse_name<'n>(
    raw: &'n [u8],
    limits: &ExtractLimits,
) -> std::result::Result<Vec<&'n str>, String> {
    if raw.is_empty() {
        return Err("empty name".into());
    }
    if raw.len() > limits.max_name_len {
        return Err(format!("name longer than {} bytes", limits.max_name_len));
    }
    if raw.contains(&0) {
        return Err("name contains a NUL byte".into());
    }
    let name = std::str::from_utf8(raw).map_err(|_| "name is not UTF-8".to_owned())?;
    if name.starts_with('/') {
        return Err("absolute path".into());
    }
    let mut components = Vec::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("`..` component".into()),
            _ => components.push(component),
        }
    }
    if components.len() > limits.max_depth {
        return Err(format!("path deeper than {} levels", limits.max_depth));
    }
    Ok(components)
}

/// Checks a symlink target for a link whose parent is `parent_depth` directories below `dest`.
pub(super) fn check_link_target<'t>(
    raw: &'t [u8],
    parent_depth: usize,
    limits: &ExtractLimits,
) -> std::result::Result<&'t str, String> {
    if raw.is_empty() {
        return Err("empty symlink target".into());
    }
    if raw.len() > limits.max_name_len {
        return Err(format!(
            "symlink target longer than {} bytes",
            limits.max_name_len
        ));
    }
    if raw.contains(&0) {
        return Err("symlink target contains a NUL byte".into());
    }
    let target = std::str::from_utf8(raw).map_err(|_| "symlink target is not UTF-8".to_owned())?;
    if target.starts_with('/') {
        return Err("absolute symlink target escapes the source root".into());
    }
    let mut ups = 0;
    let mut seen_name = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if seen_name => {
                return Err("symlink target has a `..` component after a name".into());
            }
            ".." => ups += 1,
            _ => seen_name = true,
        }
    }
    if ups > parent_depth {
        return Err("symlink target escapes the source root".into());
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use tar::EntryType;

    use crate::extract::ExtractLimits;
    use crate::extract::testing::{Tgz, assert_refused, assert_refused_with, names};

    #[test]
    fn extract_refuses_parent_component() {
        assert_refused(
            Tgz::new()
                .raw(b"../evil", EntryType::Regular, 0o644, b"", b"x")
                .build(),
            "`..` component",
        );
        assert_refused(
            Tgz::new()
                .raw(b"ok/../../evil", EntryType::Regular, 0o644, b"", b"x")
                .build(),
            "`..` component",
        );
    }

    #[test]
    fn extract_refuses_parent_component_in_pax_path() {
        let mut builder = Tgz::new();
        builder
            .0
            .append_pax_extensions([("path", b"../outside/evil".as_slice())])
            .unwrap();
        assert_refused(builder.file("fine", 0o644, b"x").build(), "`..` component");
    }

    #[test]
    fn extract_refuses_absolute_path() {
        assert_refused(
            Tgz::new()
                .raw(b"/abs", EntryType::Regular, 0o644, b"", b"x")
                .build(),
            "absolute path",
        );
    }

    #[test]
    fn extract_refuses_escaping_symlink() {
        let tgz = Tgz::new()
            .raw(b"link", EntryType::Symlink, 0o777, b"../../outside", b"")
            .raw(b"link/x", EntryType::Regular, 0o644, b"", b"evil")
            .build();
        let sb = assert_refused(tgz, "symlink target escapes the source root");
        assert!(names(&sb.dest).is_empty());
        let tgz = Tgz::new().symlink("sub/up", "../..").build();
        assert_refused(tgz, "symlink target escapes the source root");
    }

    #[test]
    fn extract_refuses_absolute_symlink() {
        let tgz = Tgz::new()
            .raw(b"etc", EntryType::Symlink, 0o777, b"/etc", b"")
            .build();
        assert_refused(tgz, "symlink target escapes the source root");
    }

    #[test]
    fn extract_refuses_escape_through_earlier_symlinks() {
        // With `b -> .`, `b/b/..` lexically stays inside but really is the parent of dest.
        let tgz = Tgz::new()
            .symlink("b", ".")
            .raw(b"a", EntryType::Symlink, 0o777, b"b/b/..", b"")
            .build();
        assert_refused(tgz, "symlink target has a `..` component after a name");
    }

    #[test]
    fn extract_refuses_bad_names() {
        assert_refused(
            Tgz::new()
                .raw(b"bad\xff", EntryType::Regular, 0o644, b"", b"")
                .build(),
            "name is not UTF-8",
        );
        let long = "n".repeat(5000);
        assert_refused(
            Tgz::new().file(&long, 0o644, b"").build(),
            "name longer than 4096 bytes",
        );
        let limits = ExtractLimits {
            max_depth: 3,
            ..ExtractLimits::default()
        };
        assert_refused_with(
            Tgz::new().file("a/b/c/d", 0o644, b"").build(),
            &limits,
            "path deeper than 3 levels",
        );
        assert_refused(
            Tgz::new()
                .raw(b".", EntryType::Regular, 0o644, b"", b"")
                .build(),
            "empty name",
        );
    }
}
