//! How refusals read: the [`Error::UnsafeArchive`] they become, with entry names and archive
//! text made safe to show.

use crate::Error;

/// Entry name used in errors raised between entries.
pub(super) const ARCHIVE: &str = "<archive>";
/// Entry names in error messages are cut to this many characters.
const MAX_SHOWN_NAME: usize = 200;

/// The refusal of `entry` for `problem`.
pub(super) fn unsafe_archive(entry: &str, problem: impl Into<String>) -> Error {
    Error::UnsafeArchive {
        entry: entry.to_owned(),
        problem: problem.into(),
    }
}

/// Entry name for messages: lossy UTF-8, cut to a readable length.
pub(super) fn shown_name(raw: &[u8]) -> String {
    let name = String::from_utf8_lossy(raw);
    match name.char_indices().nth(MAX_SHOWN_NAME) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.into_owned(),
    }
}

/// `text` without control characters (an archive's bytes can reach error texts: no terminal
/// or log injection through a `failed` reason), at most 300 characters.
pub(super) fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(300)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}
