//! OCI image archives built by tests (no registry, no network): layers as
//! tars, and an OCI image layout in a tar with gzipped layers and a config,
//! as `skopeo copy ... oci-archive:` would write it.

use std::io::Write;

use sha2::Digest;

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

/// A layer tar of `entries`, in order.
pub fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        match e {
            Entry::Dir(path, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                h.set_path(path).unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target).unwrap();
            }
            Entry::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                h.set_path(path).unwrap();
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A layer with the host's static busybox as `/bin/busybox` and links for
/// `applets` (`sh`, `cat`, ...) next to it.
pub fn busybox_layer(busybox: &[u8], applets: &[&str]) -> Vec<u8> {
    let paths: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    let mut entries = vec![
        Entry::Dir("bin/", 0o755),
        Entry::File("bin/busybox", busybox, 0o755),
    ];
    entries.extend(paths.iter().map(|p| Entry::Symlink(p, "busybox")));
    layer(&entries)
}

/// Lowercase hex sha256 of `b`.
pub fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// An OCI image layout in a tar: `layers` gzipped, `config` as the image
/// config's `config` object (`Env`, `WorkingDir`, `User`, `Cmd`, ...),
/// tagged `latest`.
pub fn image_tar(layers: &[Vec<u8>], config: serde_json::Value) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(format!("sha256:{}", sha256(l)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(l).unwrap();
        let gz = gz.finish().unwrap();
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", sha256(&gz)), "size": gz.len()
        }));
        blobs.push((sha256(&gz), gz));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256(&config)), "size": config.len()},
        "layers": descs
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": format!("sha256:{}", sha256(&manifest)), "size": manifest.len(),
                        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    })
    .to_string()
    .into_bytes();
    blobs.push((sha256(&config), config));
    blobs.push((sha256(&manifest), manifest));
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_path(name).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (hex, data) in &blobs {
        add(&format!("blobs/sha256/{hex}"), data);
    }
    b.into_inner().unwrap()
}
