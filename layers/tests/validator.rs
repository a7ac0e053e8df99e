//! The validator accepts what the layer engine writes and rejects tampered images.

use std::collections::BTreeMap;

use kiln_layers::oci::RootFs;
use kiln_layers::validate::validate_layout;
use kiln_layers::{BlobStore, Entry, ImageConfig, ImageManifest, LayerBuilder};

fn image(dir: &std::path::Path, big: usize) -> (BlobStore, ImageManifest) {
    let store = BlobStore::open_or_create(dir).unwrap();
    let mut layer = LayerBuilder::new(0);
    let data: Vec<u8> = (0..big).map(|i| (i % 251) as u8).collect();
    layer
        .add("app/data.bin", Entry::bytes(data))
        .add("app/link", Entry::symlink("data.bin"));
    let layer = layer.write_to(&store).unwrap();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer.diff_id.clone()],
        },
        ..ImageConfig::default()
    };
    let (desc, manifest) = store
        .write_image(&config, vec![layer.descriptor], BTreeMap::new())
        .unwrap();
    store.tag("t", &desc).unwrap();
    (store, manifest)
}

#[test]
fn accepts_a_written_image_and_same_input_gives_same_digest() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, ma) = image(a.path(), 3 << 20);
    let (_, mb) = image(b.path(), 3 << 20);
    assert_eq!(ma, mb, "layers are reproducible");
    assert_eq!(validate_layout(&sa).unwrap().len(), 1);
}

#[test]
fn rejects_a_corrupted_layer_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (store, manifest) = image(dir.path(), 1000);
    let path = store.blob_path(&manifest.layers[0].digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    assert!(validate_layout(&store).is_err());
}

#[test]
fn rejects_a_missing_blob_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, manifest) = image(dir.path(), 10);
    std::fs::remove_file(store.blob_path(&manifest.config.digest)).unwrap();
    let err = validate_layout(&store).unwrap_err().to_string();
    assert!(err.contains(manifest.config.digest.hex()), "{err}");
}
