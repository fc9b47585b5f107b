//! `cargo xtask image`: the agent's and the operator's container images as
//! OCI image-layout archives (`podman load`, `skopeo copy oci-archive:`,
//! `ctr images import` take them), built from the workspace's binaries
//! without a container engine (there is none on this machine). What the
//! Dockerfile at the root describes for machines that have one, this writes
//! directly: one layer with the binaries, stripped of debug info, and the
//! shared libraries they link (from `ldd`), plus `/etc/passwd` with the
//! non-root user. Reproducible: fixed timestamps, sorted entries, owner 0.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use flate2::{Compression, GzBuilder};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The images: name, binaries (the first is the entrypoint), user.
pub struct Spec {
    pub name: &'static str,
    pub binaries: &'static [&'static str],
    /// `uid:gid`; the agent needs root (with the chart's capabilities), the
    /// operator does not.
    pub user: &'static str,
    pub description: &'static str,
}

pub const IMAGES: [Spec; 2] = [
    Spec {
        name: "agent",
        binaries: &["axoneme-agent", "axoneme", "axoneme-cni"],
        user: "0:0",
        description: "Axoneme's node agent, with the CLI (probes) and the CNI plugin (installed by the init container)",
    },
    Spec {
        name: "operator",
        binaries: &["axoneme-operator"],
        user: "65532:65532",
        description: "Axoneme's operator: identities, IPAM, policy validation and the Kubernetes mirror",
    },
];

/// The repository each image is named under by default (the chart's
/// `image.repository` and `operator.image.repository`).
pub fn reference(spec: &Spec, version: &str) -> String {
    format!("localhost/axoneme/{}:{version}", spec.name)
}

const EPOCH: &str = "1970-01-01T00:00:00Z";

/// One file of the layer.
struct File {
    path: String,
    bytes: Vec<u8>,
    mode: u32,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The binary with its debug info stripped (symbols stay, for backtraces).
fn stripped(binary: &Path) -> Result<Vec<u8>> {
    let tmp = tempfile::NamedTempFile::new()?;
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(tmp.path())
        .arg(binary)
        .status()
        .context("running strip (binutils)")?;
    if !status.success() {
        bail!("strip {} failed: {status}", binary.display());
    }
    Ok(std::fs::read(tmp.path())?)
}

/// The shared libraries `binary` loads, as `ldd` resolves them (the path
/// the loader looks at, and the file to copy there).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vdso has no file.
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn layer_files(spec: &Spec, bin_dir: &Path) -> Result<Vec<File>> {
    let mut files = Vec::new();
    let mut libs = BTreeMap::new();
    for b in spec.binaries {
        let path = bin_dir.join(b);
        if !path.is_file() {
            bail!("{} is missing: build the binaries first", path.display());
        }
        files.push(File {
            path: format!("usr/bin/{b}"),
            bytes: stripped(&path)?,
            mode: 0o755,
        });
        for lib in libraries(&path)? {
            libs.insert(lib.clone(), lib);
        }
    }
    for lib in libs.into_keys() {
        // The loader opens the path; the file is whatever it resolves to.
        let bytes = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        let path = lib.to_string_lossy().trim_start_matches('/').to_string();
        files.push(File {
            path,
            bytes,
            mode: 0o755,
        });
    }
    files.push(File {
        path: "etc/passwd".into(),
        bytes: b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n".to_vec(),
        mode: 0o644,
    });
    files.push(File {
        path: "etc/group".into(),
        bytes: b"root:x:0:\nnonroot:x:65532:\n".to_vec(),
        mode: 0o644,
    });
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The layer as an uncompressed tar: directories first, then files, all
/// owned by root with time 0.
fn layer_tar(files: &[File]) -> Result<Vec<u8>> {
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut p = Path::new(&f.path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().to_string());
            p = d.parent();
        }
    }
    dirs.insert("tmp".into());
    let mut tar = tar::Builder::new(Vec::new());
    for d in &dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if d == "tmp" { 0o1777 } else { 0o755 });
        h.set_size(0);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, format!("{d}/"), std::io::empty())?;
    }
    for f in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(f.mode);
        h.set_size(f.bytes.len() as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, &f.path, f.bytes.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

/// Writes the OCI archive of `spec` at `out` from the binaries in
/// `bin_dir`; gzip `level` (1 fast .. 9 small).
pub fn build(spec: &Spec, bin_dir: &Path, version: &str, out: &Path, level: u32) -> Result<()> {
    let layer = layer_tar(&layer_files(spec, bin_dir)?)?;
    let diff_id = sha256(&layer);
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::new(level));
    gz.write_all(&layer)?;
    let layer_gz = gz.finish()?;
    let labels = json!({
        "org.opencontainers.image.title": format!("axoneme-{}", spec.name),
        "org.opencontainers.image.description": spec.description,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.source": "https://github.com/axoneme/axoneme",
    });
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": EPOCH,
        "config": {
            "Entrypoint": [format!("/usr/bin/{}", spec.binaries[0])],
            "User": spec.user,
            "Env": ["PATH=/usr/bin:/bin"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": EPOCH, "created_by": "cargo xtask image" }],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(&layer_gz),
            "size": layer_gz.len(),
        }],
        "annotations": labels,
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": reference(spec, version) },
        }],
    }))?;
    let mut entries: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
    ];
    for blob in [config, manifest, layer_gz] {
        let digest = sha256(&blob);
        let hex = digest.trim_start_matches("sha256:").to_string();
        entries.push((format!("blobs/sha256/{hex}"), blob));
    }
    let tmp = out.with_extension("partial");
    let mut archive = tar::Builder::new(std::fs::File::create(&tmp)?);
    for (path, bytes) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        archive.append_data(&mut h, path, bytes.as_slice())?;
    }
    archive.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// What an archive says about its image, read back as a runtime reads it:
/// index → manifest → config, every blob checked against its digest.
pub struct ReadBack {
    pub reference: String,
    pub config: Value,
    /// The layer's uncompressed tar.
    pub layer: Vec<u8>,
}

impl ReadBack {
    /// The layer's regular files.
    pub fn files(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in tar::Archive::new(self.layer.as_slice()).entries()? {
            let e = e?;
            if e.header().entry_type().is_file() {
                out.push(e.path()?.to_string_lossy().to_string());
            }
        }
        Ok(out)
    }
}

pub fn read_back(archive: &Path) -> Result<ReadBack> {
    let mut blobs = BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(archive)?);
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes)?;
        blobs.insert(path, bytes);
    }
    let blob = |digest: &str| -> Result<&Vec<u8>> {
        let b = blobs
            .get(&format!(
                "blobs/sha256/{}",
                digest.trim_start_matches("sha256:")
            ))
            .with_context(|| format!("blob {digest} missing"))?;
        if sha256(b) != digest {
            bail!("blob {digest} does not match its digest");
        }
        Ok(b)
    };
    let index: Value = serde_json::from_slice(blobs.get("index.json").context("no index.json")?)?;
    let m = &index["manifests"][0];
    let reference = m["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let manifest: Value = serde_json::from_slice(blob(m["digest"].as_str().unwrap_or_default())?)?;
    let config: Value = serde_json::from_slice(blob(
        manifest["config"]["digest"].as_str().unwrap_or_default(),
    )?)?;
    let gz = blob(manifest["layers"][0]["digest"].as_str().unwrap_or_default())?;
    let mut layer = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut layer)?;
    if Some(sha256(&layer).as_str()) != config["rootfs"]["diff_ids"][0].as_str() {
        bail!("the layer does not match the config's diff_id");
    }
    Ok(ReadBack {
        reference,
        config,
        layer,
    })
}

/// `cargo xtask image`: both archives into `out_dir` from `bin_dir`.
pub fn run(bin_dir: &Path, out_dir: &Path, version: &str) -> Result<()> {
    std::fs::create_dir_all(out_dir)?;
    for spec in &IMAGES {
        let out = out_dir.join(format!("axoneme-{}-{version}.oci.tar", spec.name));
        build(spec, bin_dir, version, &out, 6)?;
        let back = read_back(&out)?;
        let mib = std::fs::metadata(&out)?.len() as f64 / (1 << 20) as f64;
        println!(
            "image: {} ({mib:.1} MiB) {} entrypoint {} user {}: {}",
            out.display(),
            back.reference,
            back.config["config"]["Entrypoint"],
            back.config["config"]["User"],
            back.files()?.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace's debug binaries (`cargo xtask test` builds them
    /// before it runs the tests).
    fn bin_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
    }

    #[test]
    fn the_operator_image_reads_back_and_its_binary_runs_from_its_layer_alone() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("operator.oci.tar");
        let spec = &IMAGES[1];
        build(spec, &bin_dir(), "9.9.9", &out, 1)?;
        let back = read_back(&out)?;
        assert_eq!(back.reference, "localhost/axoneme/operator:9.9.9");
        let c = &back.config["config"];
        assert_eq!(c["Entrypoint"], json!(["/usr/bin/axoneme-operator"]));
        assert_eq!(c["User"], "65532:65532");
        assert_eq!(c["Labels"]["org.opencontainers.image.version"], "9.9.9");
        assert_eq!(back.config["os"], "linux");
        let files = back.files()?;
        for want in [
            "usr/bin/axoneme-operator",
            "etc/passwd",
            "lib64/ld-linux-x86-64.so.2",
        ] {
            assert!(files.iter().any(|f| f == want), "{want} not in {files:?}");
        }
        // The layer alone is a root filesystem the binary runs in: every
        // library it needs is there (chroot, as a runtime would pivot).
        let root = dir.path().join("rootfs");
        tar::Archive::new(back.layer.as_slice()).unpack(&root)?;
        let out = Command::new("chroot")
            .arg(&root)
            .args(["/usr/bin/axoneme-operator", "--version"])
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("axoneme-operator {}", env!("CARGO_PKG_VERSION"))
        );
        // Reproducible: the same inputs give the same archive.
        let again = dir.path().join("again.oci.tar");
        build(spec, &bin_dir(), "9.9.9", &again, 1)?;
        assert_eq!(
            std::fs::read(&again)?,
            std::fs::read(dir.path().join("operator.oci.tar"))?
        );
        Ok(())
    }

    #[test]
    fn a_layer_holds_its_parent_directories_and_tmp() -> Result<()> {
        let files = vec![File {
            path: "etc/x".into(),
            bytes: b"x".to_vec(),
            mode: 0o644,
        }];
        let tar = layer_tar(&files)?;
        let mut names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()?
            .map(|e| Ok(e?.path()?.to_string_lossy().to_string()))
            .collect::<Result<_>>()?;
        names.sort();
        assert_eq!(names, ["etc/", "etc/x", "tmp/"]);
        Ok(())
    }
}
