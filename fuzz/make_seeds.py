#!/usr/bin/env python3
"""Writes the checked-in seed corpora under fuzz/seeds/<target>/ (deterministically).

Run from anywhere: python3 fuzz/make_seeds.py. The seeds are small on purpose: a few valid and a
few broken inputs per target; the fuzzer grows its own corpus in the gitignored fuzz/corpus/.
"""

import gzip
import io
import json
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
HEX = "0123456789abcdef" * 4
D1 = "sha256:" + HEX
D2 = "sha256:" + "a" * 64
D3 = "sha256:" + "b" * 64


def write(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- extract_tarball


def tar(members, fmt=tarfile.GNU_FORMAT):
    """members: (name, kind, extra) with kind file/dir/sym/link/fifo; returns tar bytes without
    the record padding (the 1024-byte end marker is kept)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uname = info.gname = ""
            if kind == "file":
                info.size = len(extra)
                info.mode = 0o644
                t.addfile(info, io.BytesIO(extra))
                continue
            if kind == "exec":
                info.size = len(extra)
                info.mode = 0o755
                t.addfile(info, io.BytesIO(extra))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, extra
            elif kind == "link":
                info.type, info.mode, info.linkname = tarfile.LNKTYPE, 0o644, extra
            elif kind == "fifo":
                info.type, info.mode = tarfile.FIFOTYPE, 0o644
            elif kind == "setuid":
                info.mode = 0o4755
            t.addfile(info)
    data = buf.getvalue().rstrip(b"\0")
    blocks = (len(data) + 511) // 512
    return data.ljust(blocks * 512 + 1024, b"\0")


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


APP = [
    ("src/", "dir", None),
    ("src/package.json", "file", b'{"name":"hello","version":"1.0.0","main":"index.js"}\n'),
    ("src/index.js", "file", b"module.exports = (req, res) => res.end('hi')\n"),
    ("src/lib/", "dir", None),
    ("src/lib/util.js", "file", b"exports.x = 1\n"),
    ("src/bin/run", "exec", b"#!/bin/sh\nexec node index.js\n"),
    ("src/node_modules/.bin/run", "sym", "../../bin/run"),
    ("src/current", "sym", "lib"),
]

write("extract_tarball", "valid-app.tar.gz", gz(tar(APP)))
write("extract_tarball", "valid-app.tar", tar(APP))
write("extract_tarball", "valid-pax.tar", tar(APP[:3] + [("src/" + "n" * 120 + ".js", "file", b"long")], tarfile.PAX_FORMAT))
write("extract_tarball", "valid-gnu-longname.tar", tar([("d" * 60 + "/" + "f" * 60, "file", b"x"), ("l", "sym", "t" * 110)]))
write("extract_tarball", "valid-replace-file.tar", tar([("a.txt", "file", b"one"), ("a.txt", "file", b"two")]))
# Two gzip members back to back (MultiGzDecoder reads both).
both = tar(APP[:2])
write("extract_tarball", "valid-multimember.tar.gz", gz(both[:-1024]) + gz(tar(APP[2:3])))
write("extract_tarball", "bad-dotdot.tar", tar([("ok/../../evil", "file", b"x")]))
write("extract_tarball", "bad-absolute.tar", tar([("/etc/evil", "file", b"x")]))
write("extract_tarball", "bad-symlink-escape.tar", tar([("link", "sym", "../outside"), ("link/x", "file", b"x")]))
write("extract_tarball", "bad-symlink-through.tar", tar([("sub/", "dir", None), ("l", "sym", "sub"), ("l/x", "file", b"x")]))
write("extract_tarball", "bad-symlink-chain.tar", tar([("b", "sym", "."), ("a", "sym", "b/b/..")]))
write("extract_tarball", "bad-hardlink.tar", tar([("a", "file", b"x"), ("b", "link", "a")]))
write("extract_tarball", "bad-fifo.tar", tar([("p", "fifo", None)]))
write("extract_tarball", "bad-setuid.tar", tar([("s", "setuid", None)]))
write("extract_tarball", "bad-type-change.tar", tar([("d/", "dir", None), ("d/f", "file", b"x"), ("d", "file", b"y")]))
write("extract_tarball", "bad-truncated.tar.gz", gz(tar(APP))[:200])
write("extract_tarball", "bad-not-a-tar.txt", "this is not a tarball\n")

# ---------------------------------------------------------------- parse_job

BUILD = {
    "schema_version": 1,
    "job_id": "j-1",
    "app": "hello",
    "source": "sha256-" + HEX,
    "runtime": "faas",
    "base": "127.0.0.1:5000/base/node:20",
    "env": ["A=1", "NODE_ENV=production"],
    "deploy": {"container_concurrency": 10, "min_scale": 0, "max_scale": 3, "target": 5, "cpu": "250m", "memory": "256Mi"},
}
MINIMAL = {"schema_version": 1, "job_id": "x", "app": "a", "source": "sha256-" + "0" * 64}
REBASE = {"schema_version": 1, "job_id": "r_2", "app": "hello", "revision": "hello-00003", "base": "node:22@" + D2}


def compact(value):
    return json.dumps(value, separators=(",", ":"))


write("parse_job", "build-full.json", "kiln.jobs.build.hello\n" + compact(BUILD))
write("parse_job", "build-minimal.json", compact(MINIMAL))
write("parse_job", "build-nulls.json", compact(dict(MINIMAL, runtime=None, base=None)))
write("parse_job", "rebase.json", "kiln.jobs.rebase.hello\n" + compact(REBASE))
write("parse_job", "rebase-latest.json", "kiln.jobs.rebase.a\n" + compact({"schema_version": 1, "job_id": "q", "app": "a", "base": "ghcr.io/x/y:1"}))
write("parse_job", "bad-schema-version.json", compact(dict(MINIMAL, schema_version=2)))
write("parse_job", "bad-app.json", compact(dict(MINIMAL, app="Hello-")))
write("parse_job", "bad-source.json", compact(dict(MINIMAL, source="../etc/passwd")))
write("parse_job", "bad-unknown-field.json", compact(dict(MINIMAL, extra=1)))
write("parse_job", "bad-deploy.json", compact(dict(MINIMAL, deploy={"min_scale": 5, "max_scale": 1, "cpu": "1.5.5"})))
write("parse_job", "bad-env.json", compact(dict(MINIMAL, env=["1X=2", "=y"])))
write("parse_job", "bad-base.json", compact(dict(MINIMAL, base="Bad Ref@sha256:abc")))
write("parse_job", "bad-rebase-revision.json", "kiln.jobs.rebase.hello\n" + compact(dict(REBASE, revision="other-00001")))
write("parse_job", "bad-not-json.json", '{"schema_version":1,"job_id":')

# ---------------------------------------------------------------- read_manifest

OCI_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 1469},
    "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 3623807},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D3, "size": 512,
         "annotations": {"dev.kiln.layer": "app"}},
    ],
    "annotations": {"org.opencontainers.image.created": "1970-01-01T00:00:00Z"},
}
DOCKER_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023, "digest": D1},
    "layers": [
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 32654, "digest": D2},
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 16724, "digest": D3},
    ],
}
OCI_INDEX = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D2, "size": 1024,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D3, "size": 1024,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
         "annotations": {"org.opencontainers.image.ref.name": "latest"}},
    ],
}
DOCKER_LIST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": D2, "size": 1161,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": D3, "size": 1161,
         "platform": {"architecture": "arm", "os": "linux", "variant": "v7", "os.features": []}},
    ],
}
OCI_CONFIG = {
    "created": "1970-01-01T00:00:00Z",
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "User": "1000:1000",
        "ExposedPorts": {"8080/tcp": {}},
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "NODE_ENV=production"],
        "Entrypoint": ["node"],
        "Cmd": ["/app/index.js"],
        "WorkingDir": "/app",
        "Labels": {"org.opencontainers.image.source": "kiln"},
    },
    "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
    "history": [
        {"created": "1970-01-01T00:00:00Z", "created_by": "kiln base"},
        {"created_by": "ENV NODE_ENV=production", "empty_layer": True},
        {"comment": "app"},
    ],
}
DOCKER_CONFIG = {
    "architecture": "arm64",
    "variant": "v8",
    "os": "linux",
    "container": "0a1b2c",
    "docker_version": "20.10.7",
    "config": {"Hostname": "", "Env": ["PATH=/bin"], "Cmd": ["node"], "ExposedPorts": {"3000/tcp": {"x": 1.5e300}},
               "Image": D1, "Volumes": None, "OnBuild": None, "Labels": None},
    "rootfs": {"type": "layers", "diff_ids": [D3]},
}


def pretty(value):
    return json.dumps(value, indent=2) + "\n"


write("read_manifest", "oci-manifest.json", pretty(OCI_MANIFEST))
write("read_manifest", "docker-v2s2-manifest.json", pretty(DOCKER_MANIFEST))
write("read_manifest", "oci-index.json", compact(OCI_INDEX))
write("read_manifest", "docker-manifest-list.json", compact(DOCKER_LIST))
write("read_manifest", "oci-config.json", compact(OCI_CONFIG))
write("read_manifest", "docker-config.json", pretty(DOCKER_CONFIG))
write("read_manifest", "bad-manifest-digest.json", compact(dict(OCI_MANIFEST, config=dict(OCI_MANIFEST["config"], digest="sha256:ABC"))))
write("read_manifest", "bad-manifest-missing-layers.json", compact({"schemaVersion": 2, "config": OCI_MANIFEST["config"]}))
write("read_manifest", "bad-config-diff-ids.json", compact(dict(OCI_CONFIG, rootfs={"type": "layers", "diff_ids": "x"})))
write("read_manifest", "ref-hub-short.txt", "node:20")
write("read_manifest", "ref-host-port.txt", "127.0.0.1:5000/apps/hello:v1")
write("read_manifest", "ref-digest.txt", "ghcr.io/org/app-x__y.z@" + D2)
write("read_manifest", "ref-tag-digest.txt", "docker.io/library/node:20-alpine@" + D3)
write("read_manifest", "ref-localhost.txt", "localhost/x/y\nnode")
write("read_manifest", "bad-ref-upper.txt", "r.io:port/UPPER//x:-t@sha256:abc")
