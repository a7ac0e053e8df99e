//! The image validator every test uses: manifest ↔ config ↔ blobs agree, every blob hashes to
//! its digest, every layer is a readable gzip tar whose sha256 is its diff id.

use std::fs::File;
use std::io::{self, BufReader, Read};

use sha2::{Digest as _, Sha256};

use crate::oci::{
    ImageIndex, MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
};
use crate::{BlobStore, Descriptor, Digest, Error, ImageConfig, ImageManifest, Result};

/// What a valid image holds.
#[derive(Debug)]
pub struct ValidImage {
    /// The manifest.
    pub manifest: ImageManifest,
    /// The config.
    pub config: ImageConfig,
}

/// Validates every image the layout's `index.json` lists (descending into nested indexes).
pub fn validate_layout(store: &BlobStore) -> Result<Vec<ValidImage>> {
    let index = store.index()?;
    let mut images = Vec::new();
    validate_index(store, &index, &mut images)?;
    Ok(images)
}

fn validate_index(
    store: &BlobStore,
    index: &ImageIndex,
    images: &mut Vec<ValidImage>,
) -> Result<()> {
    for desc in &index.manifests {
        if desc.media_type == MEDIA_TYPE_INDEX {
            let bytes = verified_blob(store, desc)?;
            let nested: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(Error::json(format!("index {}", desc.digest)))?;
            validate_index(store, &nested, images)?;
        } else {
            images.push(validate_image(store, desc)?);
        }
    }
    Ok(())
}

/// Validates the image whose manifest `desc` points at.
/// Checks every blob in the store: its bytes hash to its name. Temp files (`.tmp-*`, left by a
/// crash mid-write) are not blobs and are skipped. Returns the number of blobs checked.
pub fn validate_blobs(store: &BlobStore) -> Result<usize> {
    let dir = store.root().join("blobs/sha256");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).map_err(Error::io("read directory", &dir))? {
        let entry = entry.map_err(Error::io("read directory", &dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            continue;
        }
        let digest: crate::Digest = format!("sha256:{name}")
            .parse()
            .map_err(|_| Error::InvalidDigest(name.clone()))?;
        let path = entry.path();
        let mut file = std::fs::File::open(&path).map_err(Error::io("open", &path))?;
        let mut hasher = crate::HashingWriter::new(std::io::sink());
        std::io::copy(&mut file, &mut hasher).map_err(Error::io("read", &path))?;
        let (_, actual, _) = hasher.finish();
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("blob {}", path.display()),
                expected: digest.to_string(),
                found: actual.to_string(),
            });
        }
        checked += 1;
    }
    Ok(checked)
}

/// Checks one image manifest and everything it references.
pub fn validate_image(store: &BlobStore, desc: &Descriptor) -> Result<ValidImage> {
    let image = desc.digest.to_string();
    let bad = |problem: String| Error::InvalidImage {
        image: image.clone(),
        problem,
    };
    if desc.media_type != MEDIA_TYPE_MANIFEST && desc.media_type != MEDIA_TYPE_DOCKER_MANIFEST {
        return Err(bad(format!(
            "unsupported manifest media type {:?}",
            desc.media_type
        )));
    }
    let bytes = verified_blob(store, desc)?;
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(Error::json(format!("manifest {image}")))?;
    if manifest.schema_version != 2 {
        return Err(bad(format!(
            "schemaVersion {} (expected 2)",
            manifest.schema_version
        )));
    }
    if let Some(mt) = &manifest.media_type
        && mt != &desc.media_type
    {
        return Err(bad(format!(
            "manifest says mediaType {mt}, descriptor says {}",
            desc.media_type
        )));
    }
    if manifest.config.media_type != MEDIA_TYPE_CONFIG
        && manifest.config.media_type != "application/vnd.docker.container.image.v1+json"
    {
        return Err(bad(format!(
            "config media type {:?}",
            manifest.config.media_type
        )));
    }
    let config_bytes = verified_blob(store, &manifest.config)?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(Error::json(format!("config {}", manifest.config.digest)))?;
    if config.rootfs.kind != "layers" {
        return Err(bad(format!(
            "rootfs.type {:?} (expected \"layers\")",
            config.rootfs.kind
        )));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(bad(format!(
            "{} layers but {} diff ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let layer_steps = config.history.iter().filter(|h| !h.empty_layer).count();
    if !config.history.is_empty() && layer_steps != manifest.layers.len() {
        return Err(bad(format!(
            "{} layers but {layer_steps} non-empty history entries",
            manifest.layers.len()
        )));
    }
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let found = layer_diff_id(store, layer)?;
        if &found != diff_id {
            return Err(Error::DigestMismatch {
                what: format!("diff id of layer {}", layer.digest),
                expected: diff_id.to_string(),
                found: found.to_string(),
            });
        }
    }
    Ok(ValidImage { manifest, config })
}

/// Reads a small blob and checks its size and digest against the descriptor.
fn verified_blob(store: &BlobStore, desc: &Descriptor) -> Result<Vec<u8>> {
    let bytes = store.read_blob(&desc.digest)?;
    check(desc, Digest::of(&bytes), bytes.len() as u64)?;
    Ok(bytes)
}

fn check(desc: &Descriptor, digest: Digest, size: u64) -> Result<()> {
    if digest != desc.digest {
        return Err(Error::DigestMismatch {
            what: format!("blob {}", desc.digest),
            expected: desc.digest.to_string(),
            found: digest.to_string(),
        });
    }
    if size != desc.size {
        return Err(Error::InvalidImage {
            image: desc.digest.to_string(),
            problem: format!("size {size}, descriptor says {}", desc.size),
        });
    }
    Ok(())
}

/// Streams a layer: checks its digest and size, reads it as a tar, returns the tar's sha256.
fn layer_diff_id(store: &BlobStore, desc: &Descriptor) -> Result<Digest> {
    let path = store.blob_path(&desc.digest);
    let file = File::open(&path).map_err(Error::io("open layer", &path))?;
    let mut compressed = HashRead {
        inner: BufReader::new(file),
        hasher: Sha256::new(),
        count: 0,
    };
    let tar_digest = {
        let gz = flate2::read::MultiGzDecoder::new(&mut compressed);
        let mut tar_stream = HashRead {
            inner: gz,
            hasher: Sha256::new(),
            count: 0,
        };
        {
            let mut archive = tar::Archive::new(&mut tar_stream);
            let entries = archive
                .entries()
                .map_err(Error::io("read tar of layer", &path))?;
            for entry in entries {
                let mut entry = entry.map_err(Error::io("read tar entry of layer", &path))?;
                io::copy(&mut entry, &mut io::sink())
                    .map_err(Error::io("read tar entry of layer", &path))?;
            }
        }
        io::copy(&mut tar_stream, &mut io::sink()).map_err(Error::io("decompress layer", &path))?;
        Digest::from_hasher(tar_stream.hasher)
    };
    io::copy(&mut compressed, &mut io::sink()).map_err(Error::io("read layer", &path))?;
    check(
        desc,
        Digest::from_hasher(compressed.hasher),
        compressed.count,
    )?;
    Ok(tar_digest)
}

struct HashRead<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
