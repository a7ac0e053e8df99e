//! Where a built image goes: an OCI layout directory (tagged in its `index.json`) or an
//! OCI archive (a tar of a layout, as `skopeo copy oci-archive:` reads).

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::path::Path;

use kiln_layers::oci::{ANNOTATION_REF_NAME, ImageIndex, MEDIA_TYPE_INDEX, to_canonical_json};
use kiln_layers::{BlobStore, Entry, LayerBuilder};

use crate::{Built, Result};

/// Copies (hard links where possible) the image's blobs into the layout at `dir`, manifest
/// last, then tags it `tag`.
pub fn write_layout(built: &Built, dir: &Path, tag: &str) -> Result<()> {
    let layout = BlobStore::open_or_create(dir)?;
    for digest in &built.blobs {
        layout.import_blob(&built.store, digest)?;
    }
    layout.tag(tag, &built.manifest)?;
    Ok(())
}

/// Writes an OCI archive at `path` holding the image tagged `tag` (written to a temp file
/// beside it, then renamed).
pub fn write_archive(built: &Built, path: &Path, tag: &str) -> Result<()> {
    let mut entry = built.manifest.clone();
    entry
        .annotations
        .insert(ANNOTATION_REF_NAME.into(), tag.into());
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_INDEX.into()),
        manifests: vec![entry],
    };
    let mut tar = LayerBuilder::new(0);
    tar.add(
        "oci-layout",
        Entry::bytes(&br#"{"imageLayoutVersion":"1.0.0"}"#[..]),
    );
    tar.add("index.json", Entry::bytes(to_canonical_json(&index)));
    for digest in built.blobs.iter().collect::<BTreeSet<_>>() {
        let blob = built.store.blob_path(digest);
        let size = std::fs::metadata(&blob)
            .map_err(kiln_layers::Error::io("stat", &blob))?
            .len();
        tar.add(
            &format!("blobs/sha256/{}", digest.hex()),
            Entry::file(blob, size, false),
        );
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(kiln_layers::Error::io("create temp file in", dir))?;
    let mut out = tar.write_tar(BufWriter::new(tmp))?;
    out.flush().map_err(kiln_layers::Error::io("write", path))?;
    let tmp = out
        .into_inner()
        .map_err(|e| kiln_layers::Error::io("write", path)(e.into_error()))?;
    tmp.persist(path)
        .map_err(|e| kiln_layers::Error::io("rename to", path)(e.error))?;
    Ok(())
}
