//! Which tar entries are extracted: regular files, directories and symlinks without
//! setuid/setgid/sticky bits; hard links, devices, fifos and other types are refused.

use tar::{EntryType, Header};

/// What an admitted entry becomes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    /// A regular file with mode `perm` (0755 when any execute bit is set, 0644 otherwise).
    File {
        perm: u32,
    },
    Dir,
    Symlink,
}

/// The kind of the entry with `header`: `None` for one that only carries metadata and is
/// skipped (a PAX global header, as `git archive` writes), the problem for one refused.
pub(super) fn admit(header: &Header) -> std::result::Result<Option<Kind>, String> {
    let kind = header.entry_type();
    match kind {
        EntryType::Regular | EntryType::Directory | EntryType::Symlink => {}
        EntryType::XGlobalHeader => return Ok(None),
        EntryType::Link => return Err("hard links are not allowed".into()),
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            return Err("device or fifo entries are not allowed".into());
        }
        other => {
            let byte = other.as_byte();
            return Err(format!("unsupported entry type {:?}", byte as char));
        }
    }
    let mode = header.mode().map_err(|_| "invalid mode field".to_owned())?;
    if mode & 0o7000 != 0 {
        return Err("setuid/setgid/sticky bits are not allowed".into());
    }
    Ok(Some(match kind {
        EntryType::Directory => Kind::Dir,
        EntryType::Symlink => Kind::Symlink,
        _ => Kind::File {
            perm: if mode & 0o111 != 0 { 0o755 } else { 0o644 },
        },
    }))
}

#[cfg(test)]
mod tests {
    use tar::EntryType;

    use crate::extract::testing::{Tgz, assert_refused};

    #[test]
    fn extract_refuses_hard_link() {
        let tgz = Tgz::new()
            .file("a", 0o644, b"x")
            .raw(b"b", EntryType::Link, 0o644, b"a", b"")
            .build();
        assert_refused(tgz, "hard links are not allowed");
    }

    #[test]
    fn extract_refuses_devices_and_fifos() {
        for kind in [EntryType::Fifo, EntryType::Char, EntryType::Block] {
            let tgz = Tgz::new().raw(b"dev", kind, 0o644, b"", b"").build();
            assert_refused(tgz, "device or fifo entries are not allowed");
        }
    }

    #[test]
    fn extract_refuses_special_mode_bits() {
        for mode in [0o4755, 0o2755, 0o1755] {
            assert_refused(
                Tgz::new().file("f", mode, b"x").build(),
                "setuid/setgid/sticky bits are not allowed",
            );
        }
    }
}
