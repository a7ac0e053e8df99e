//! The extraction loop: the gzip stream through its budget, each tar entry to the writer.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;

use super::budget::Budget;
use super::error::{ARCHIVE, unsafe_archive};
use super::limits::ExtractLimits;
use super::writer::{Extracted, Writer};
use crate::{Error, Result};

/// Extracts the gzip-compressed tar `input` into the existing empty directory `dest`.
///
/// Refuses anything unsafe with [`Error::UnsafeArchive`] (see the [module docs](super)). On any
/// error `dest` may hold a partial extraction: the caller must delete it.
pub fn extract_tar_gz(input: impl Read, dest: &Path, limits: &ExtractLimits) -> Result<Extracted> {
    check_dest(dest)?;
    let budget = Rc::new(Budget::new(limits));
    let mut archive = tar::Archive::new(Budget::reader(&budget, input));
    let mut entries = archive
        .entries()
        .map_err(|e| budget.stream_error(ARCHIVE, e))?;
    let mut writer = Writer::new(dest, limits, &budget);
    loop {
        budget
            .check_time()
            .map_err(|problem| unsafe_archive(ARCHIVE, problem))?;
        let Some(entry) = budget.counting_headers(|| entries.next()) else {
            break;
        };
        let mut entry = entry.map_err(|e| budget.stream_error(ARCHIVE, e))?;
        writer.entry(&mut entry)?;
    }
    Ok(writer.finish())
}

/// `dest` must be an existing, empty directory.
fn check_dest(dest: &Path) -> Result<()> {
    let mut listing = fs::read_dir(dest).map_err(Error::io("open", dest))?;
    match listing.next() {
        None => Ok(()),
        Some(Err(e)) => Err(Error::io("list", dest)(e)),
        Some(Ok(_)) => Err(Error::io("extract into", dest)(io::Error::new(
            io::ErrorKind::DirectoryNotEmpty,
            "the destination must be an empty directory",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use crate::Error;
    use crate::extract::ExtractLimits;
    use crate::extract::testing::{Tgz, assert_refused, extract, mode_of, sandbox};

    #[test]
    fn extract_normal_archive() {
        let long_dir = format!("app/{}", "d".repeat(60));
        let long_file = format!("{long_dir}/{}.js", "f".repeat(60));
        assert!(long_file.len() > 100);
        let tgz = Tgz::new()
            .dir("./")
            .dir("app/")
            .file("./app/package.json", 0o600, b"{}")
            .file("app/src/index.js", 0o644, b"console.log(1)")
            .file("app/bin/run", 0o700, b"#!/bin/sh\n")
            .symlink("app/node_modules/.bin/run", "../../bin/run")
            .symlink("app/current", "src")
            .file(&long_file, 0o644, b"long")
            .file("app/dup.txt", 0o644, b"first")
            .file("app/dup.txt", 0o644, b"second")
            .build();
        let sb = sandbox();
        let out = extract(&sb, &tgz, &ExtractLimits::default()).unwrap();
        sb.assert_nothing_outside();

        let app = sb.dest.join("app");
        assert_eq!(fs::read(app.join("package.json")).unwrap(), b"{}");
        assert_eq!(
            fs::read(app.join("src/index.js")).unwrap(),
            b"console.log(1)"
        );
        assert_eq!(fs::read(sb.dest.join(&long_file)).unwrap(), b"long");
        assert_eq!(fs::read(app.join("dup.txt")).unwrap(), b"second");
        assert_eq!(mode_of(&app.join("package.json")), 0o644);
        assert_eq!(mode_of(&app.join("bin/run")), 0o755);
        assert_eq!(mode_of(&app.join("src")), 0o755);
        let link = app.join("node_modules/.bin/run");
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../../bin/run"));
        assert_eq!(fs::read(&link).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::read_link(app.join("current")).unwrap(),
            Path::new("src")
        );

        assert_eq!(out.files, 5);
        assert_eq!(out.symlinks, 2);
        // app, src, bin, node_modules, .bin, the long directory.
        assert_eq!(out.dirs, 6);
        assert_eq!(out.bytes, (2 + 14 + 10 + 4 + 5 + 6) as u64);
    }

    #[test]
    fn extract_long_symlink_target_and_pax_path() {
        let target = format!("{}/x", "t".repeat(120));
        let mut builder = Tgz::new().symlink("l", &target);
        builder
            .0
            .append_pax_extensions([("path", b"pax/name.txt".as_slice())])
            .unwrap();
        let tgz = builder.file("ignored-by-pax", 0o644, b"pax").build();
        let sb = sandbox();
        extract(&sb, &tgz, &ExtractLimits::default()).unwrap();
        assert_eq!(
            fs::read_link(sb.dest.join("l")).unwrap(),
            Path::new(&target)
        );
        assert_eq!(fs::read(sb.dest.join("pax/name.txt")).unwrap(), b"pax");
        assert!(!sb.dest.join("ignored-by-pax").exists());
    }

    #[test]
    fn extract_refuses_corrupt_and_requires_empty_dest() {
        let mut tgz = Tgz::new().file("f", 0o644, &[7; 4000]).build();
        tgz.truncate(tgz.len() / 2);
        assert_refused(tgz, "corrupt archive");
        assert_refused(b"not gzip at all".to_vec(), "corrupt archive");

        let sb = sandbox();
        fs::write(sb.dest.join("existing"), b"").unwrap();
        let tgz = Tgz::new().file("f", 0o644, b"x").build();
        assert!(matches!(
            extract(&sb, &tgz, &ExtractLimits::default()),
            Err(Error::Io { .. })
        ));
    }
}
