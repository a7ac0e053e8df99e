//! Fuzzes the readers of registry documents and image references: `serde_json::from_slice`
//! into `ImageManifest`, `ImageConfig` and `ImageIndex`, and
//! `kiln_builder::registry::parse_reference`.
//!
//! Every input is tried as each of the three documents and, when it is UTF-8, as a reference.
//! Nothing may panic. A document that parses must serialize the way kiln stores it
//! (`to_canonical_json`) and parse back to the same value (numbers inside `ExposedPorts`, which
//! are free JSON, are compared loosely: serde_json's float parsing does not promise exact
//! round trips). A reference that parses must print (`whole()`) to a string that parses again
//! to the same registry, repository, tag and digest.

use crate::verbose;
use kiln_layers::oci::to_canonical_json;
use kiln_layers::{ImageConfig, ImageIndex, ImageManifest};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One input: see the module documentation for what must hold. Panics when it does not.
pub fn run(data: &[u8]) {
    if verbose() {
        eprintln!(
            "manifest: {:?}\nindex: {:?}\nconfig: {:?}\nreference: {:?}",
            serde_json::from_slice::<ImageManifest>(data).map(|m| m.layers.len()),
            serde_json::from_slice::<ImageIndex>(data).map(|i| i.manifests.len()),
            serde_json::from_slice::<ImageConfig>(data).map(|c| c.rootfs.diff_ids.len()),
            std::str::from_utf8(data)
                .map(|t| kiln_builder::registry::parse_reference(t).map(|r| r.whole()))
        );
    }
    round_trip::<ImageManifest>(data, |m| m);
    round_trip::<ImageIndex>(data, |i| i);
    round_trip::<ImageConfig>(data, |mut c| {
        if let Some(ports) = &mut c.config.exposed_ports {
            for value in ports.values_mut() {
                blur_numbers(value);
            }
        }
        c
    });

    if let Ok(text) = std::str::from_utf8(data) {
        reference(text);
        // References usually arrive as one line of a file or a JSON string: try the first line too.
        if let Some(line) = text.lines().next()
            && line.len() != text.len()
        {
            reference(line);
        }
    }
}

/// Parses `data` as `T`; if it parses, checks that the canonical JSON parses to the same value
/// (after `normalize`).
fn round_trip<T>(data: &[u8], normalize: impl Fn(T) -> T)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(doc) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let bytes = to_canonical_json(&doc);
    let again: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "canonical JSON of a parsed {} is refused: {e}: {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(
        normalize(again),
        normalize(doc),
        "{} changed across a round trip",
        std::any::type_name::<T>()
    );
}

/// Replaces every number by 0.
fn blur_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => *n = 0.into(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(blur_numbers),
        serde_json::Value::Object(map) => map.values_mut().for_each(blur_numbers),
        _ => {}
    }
}

fn reference(text: &str) {
    let Ok(parsed) = kiln_builder::registry::parse_reference(text) else {
        return;
    };
    let whole = parsed.whole();
    let again = kiln_builder::registry::parse_reference(&whole)
        .unwrap_or_else(|e| panic!("{text:?} parses but its whole() {whole:?} does not: {e}"));
    assert_eq!(
        (
            again.registry(),
            again.repository(),
            again.tag(),
            again.digest()
        ),
        (
            parsed.registry(),
            parsed.repository(),
            parsed.tag(),
            parsed.digest()
        ),
        "{text:?} -> {whole:?} parses differently"
    );
    assert_eq!(again.whole(), whole, "whole() is not stable for {text:?}");
}
