//! A Node base image made from the host's own `node` binary, so builds work offline: node,
//! its shared-library closure and, on a Debian-based host, the whole C runtime (every file
//! of the libc, libstdc++ and libgcc packages, so prebuilt glibc addons such as sharp's
//! libvips load), time zones, CA certificates and name-service config. Cached in the cache
//! layout, keyed by the binary, the dynamic linker cache and those packages' versions.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_layers::oci::{History, RootFs, RunConfig};
use kiln_layers::{BlobStore, CacheKey, Descriptor, Entry, ImageConfig, LayerBuilder};

use crate::{BuildError, Result};

/// Uid and gid of the non-root user of the base.
pub const NONROOT: u64 = 1000;
/// Config label with the base's Node version.
pub const LABEL_NODE_VERSION: &str = "dev.kiln.node.version";
/// Config label with the base's Node ABI (`process.versions.modules`).
pub const LABEL_NODE_ABI: &str = "dev.kiln.node.abi";
/// Config label with the base's C library (`glibc`, `musl`).
pub const LABEL_LIBC: &str = "dev.kiln.libc";

/// The base for `node` (found on `PATH` when `None`) in `store`, built if not there yet.
/// Returns its reference name in the store, manifest descriptor and whether it was cached.
pub fn host_base(store: &BlobStore, node: Option<&Path>) -> Result<(String, Descriptor, bool)> {
    let node = match node {
        Some(p) => p.to_path_buf(),
        None => which("node").ok_or_else(|| BuildError::HostBase {
            node: "node".into(),
            problem: "not found on PATH".into(),
        })?,
    };
    let fail = |problem: String| BuildError::HostBase {
        node: node.clone(),
        problem,
    };
    let real = std::fs::canonicalize(&node).map_err(|e| fail(e.to_string()))?;
    let meta = std::fs::metadata(&real).map_err(|e| fail(e.to_string()))?;
    let ld_cache = std::fs::metadata("/etc/ld.so.cache")
        .map(|m| m.mtime())
        .unwrap_or(0);
    let key = CacheKey::new("host-base")
        .with("format", "2")
        .with("packages", packages_stamp())
        .with("node", real.display().to_string())
        .with(
            "stamp",
            format!("{}:{}:{}", meta.len(), meta.mtime(), meta.ino()),
        )
        .with("ld.so.cache", ld_cache.to_string());
    let name = format!("kiln-host-base-{}", &key.digest().hex()[..16]);
    if let Ok(desc) = store.resolve(&name)
        && store.contains(&desc.digest)
    {
        return Ok((name, desc, true));
    }
    let desc = build(store, &real).map_err(|e| match e {
        BuildError::HostBase { .. } => e,
        other => fail(other.to_string()),
    })?;
    store.tag(&name, &desc)?;
    Ok((name, desc, false))
}

/// Debian packages whose every file goes into the base (when the host has dpkg).
const RUNTIME_PACKAGES: [&str; 4] = ["libc6", "libstdc++6", "libgcc-s1", "tzdata"];

/// Changes whenever a package is installed or upgraded (the dpkg status file's mtime and
/// size): a stat, not a `dpkg-query` process, since every build computes this key.
fn packages_stamp() -> String {
    std::fs::metadata("/var/lib/dpkg/status")
        .map(|m| format!("{}:{}", m.mtime(), m.len()))
        .unwrap_or_default()
}

/// The files and symlinks of the runtime packages (no documentation), or none without dpkg.
fn package_files() -> Vec<PathBuf> {
    let Ok(out) = Command::new("dpkg-query")
        .arg("-L")
        .args(RUNTIME_PACKAGES)
        .output()
    else {
        return Vec::new();
    };
    let skip = [
        "/usr/share/doc",
        "/usr/share/lintian",
        "/usr/share/man",
        "/usr/share/info",
    ];
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('/') && !skip.iter().any(|s| l.starts_with(s)))
        .map(PathBuf::from)
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
        .collect()
}

/// Where a host path goes in the base: under `usr/`, since `/lib` and friends link there.
fn base_path(host: &str) -> Option<String> {
    let rel = host.strip_prefix('/')?;
    if rel.starts_with("etc/") {
        return Some(rel.to_owned());
    }
    Some(format!("usr/{}", rel.strip_prefix("usr/").unwrap_or(rel)))
}

/// The `node` on PATH, resolved, and a stamp of that binary (size, mtime, inode) that changes
/// when it is replaced: a stat, cheap enough for a cache key computed on every build.
pub(crate) fn host_node_stamp() -> Option<(PathBuf, String)> {
    let real = std::fs::canonicalize(which("node")?).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    let stamp = format!("{}:{}:{}", meta.len(), meta.mtime(), meta.ino());
    Some((real, stamp))
}

pub(crate) fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

fn build(store: &BlobStore, node: &Path) -> Result<Descriptor> {
    let fail = |problem: String| BuildError::HostBase {
        node: node.into(),
        problem,
    };
    let probe = Command::new(node)
        .args(["-p", "process.version + ' ' + process.versions.modules"])
        .output()
        .map_err(|e| fail(format!("cannot run: {e}")))?;
    let probe = String::from_utf8_lossy(&probe.stdout).trim().to_owned();
    let (version, abi) = probe
        .split_once(' ')
        .ok_or_else(|| fail(format!("unexpected version output {probe:?}")))?;
    let ldd = Command::new("ldd")
        .arg(node)
        .output()
        .map_err(|e| fail(format!("cannot run ldd: {e}")))?;
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned();
    let libc = if ldd.contains("musl") {
        "musl"
    } else {
        "glibc"
    };

    let mut layer = LayerBuilder::new(0);
    for link in ["bin", "lib", "lib64", "sbin"] {
        layer.add(link, Entry::symlink(format!("usr/{link}")));
    }
    add_host_file(&mut layer, node, "usr/bin/node", true)?;
    // `libx.so => /lib/x86_64-linux-gnu/libx.so (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`
    for line in ldd.lines() {
        let path = line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if let Some(dest) = base_path(path) {
            add_host_file(&mut layer, Path::new(path), &dest, true)?;
        }
    }
    // The whole C runtime and time zones, symlinks kept as they are on the host.
    for file in package_files() {
        let (Some(host), Ok(meta)) = (file.to_str(), std::fs::symlink_metadata(&file)) else {
            continue;
        };
        let Some(dest) = base_path(host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&file).map_err(kiln_layers::Error::io("readlink", &file))?;
            layer.add(&dest, Entry::symlink(target.to_string_lossy().into_owned()));
        } else if meta.is_file() {
            let executable = meta.mode() & 0o111 != 0;
            layer.add(&dest, Entry::file(file.clone(), meta.len(), executable));
        }
    }
    let nonroot = NONROOT;
    layer.add("etc/passwd", Entry::bytes(format!("root:x:0:0:root:/root:/sbin/nologin\nnode:x:{nonroot}:{nonroot}:node:/home/node:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")));
    layer.add(
        "etc/group",
        Entry::bytes(format!("root:x:0:\nnode:x:{nonroot}:\nnogroup:x:65534:\n")),
    );
    layer.add(
        "etc/hosts",
        Entry::bytes("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    );
    layer.add(
        "etc/nsswitch.conf",
        Entry::bytes("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"),
    );
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.is_file() {
        add_host_file(&mut layer, ca, "etc/ssl/certs/ca-certificates.crt", false)?;
    }
    layer.add("tmp", Entry::dir().with_mode(0o1777));
    // Mount points a container runtime fills (os.cpus() reads /proc).
    layer.add("proc", Entry::dir().with_mode(0o555));
    layer.add("sys", Entry::dir().with_mode(0o555));
    layer.add("dev", Entry::dir());
    layer.add("root", Entry::dir().with_mode(0o700));
    layer.add("home/node", Entry::dir().with_owner(nonroot, nonroot));
    let layer = layer.write_to(store)?;

    let labels = BTreeMap::from([
        (LABEL_NODE_VERSION.to_owned(), version.to_owned()),
        (LABEL_NODE_ABI.to_owned(), abi.to_owned()),
        (LABEL_LIBC.to_owned(), libc.to_owned()),
    ]);
    let config = ImageConfig {
        created: Some(crate::image::rfc3339(0)),
        architecture: crate::image::oci_arch().into(),
        os: "linux".into(),
        config: RunConfig {
            user: Some(format!("{nonroot}:{nonroot}")),
            env: Some(vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".into(),
            ]),
            entrypoint: Some(vec!["node".into()]),
            working_dir: Some("/".into()),
            labels: Some(labels),
            ..RunConfig::default()
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer.diff_id.clone()],
        },
        history: vec![History {
            created: Some(crate::image::rfc3339(0)),
            created_by: Some(format!(
                "kiln base from-host: node {version} and its libraries"
            )),
            ..History::default()
        }],
    };
    let (manifest, _) = store.write_image(&config, vec![layer.descriptor], BTreeMap::new())?;
    Ok(manifest)
}

fn add_host_file(
    layer: &mut LayerBuilder,
    path: &Path,
    dest: &str,
    executable: bool,
) -> Result<()> {
    let real = std::fs::canonicalize(path).map_err(kiln_layers::Error::io("resolve", path))?;
    let size = std::fs::metadata(&real)
        .map_err(kiln_layers::Error::io("stat", &real))?
        .len();
    layer.add(dest, Entry::file(real, size, executable));
    Ok(())
}
