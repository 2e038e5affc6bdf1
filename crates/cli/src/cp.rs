//! `hull cp`: files and directories between the host and a sandbox, both
//! ways. A sandbox path is written `ID:/PATH` (id or name, absolute path);
//! `-` stands for stdin/stdout (single files only). Directories travel as a
//! tar stream over the archive routes; the daemon resolves sandbox paths
//! inside the sandbox root. Limits: no copy between two sandboxes; a
//! downloaded archive is spooled to an anonymous temporary file before it is
//! unpacked (so its size is bounded by the host's temporary space, not
//! memory); entries that would land outside the destination, through `..`,
//! absolute paths, symlinks or hard links, are refused, and setuid/setgid
//! bits and ownership are not restored on the host.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use http_body_util::BodyExt;
use hull_api::FileInfo;
use hyper::Method;
use tokio::io::AsyncWriteExt;

use crate::client::{self, Client, enc};
use crate::sb_path;

/// `ID:/PATH` -> (id, path) when `s` names a sandbox path.
pub fn remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (hull_api::validate_dns_label("id", id).is_ok() && path.starts_with('/')).then_some((id, path))
}

pub async fn copy(client: &Client, src: &str, dst: &str) -> anyhow::Result<()> {
    match (remote(src), remote(dst)) {
        (Some(_), Some(_)) => {
            bail!("copy between two sandboxes is not supported: copy to the host first")
        }
        (None, None) => bail!("one of SRC and DST must be a sandbox path written ID:/PATH"),
        (Some((id, path)), None) => download(client, id, path, dst).await,
        (None, Some((id, path))) => upload(client, src, id, path).await,
    }
}

async fn stat(client: &Client, id: &str, path: &str) -> Result<FileInfo, client::ClientError> {
    client
        .call(
            Method::GET,
            &format!("{}?path={}", sb_path(id, "/files/stat"), enc(path)),
            None::<&()>,
        )
        .await
}

async fn download(client: &Client, id: &str, path: &str, dst: &str) -> anyhow::Result<()> {
    let st = stat(client, id, path).await?;
    if st.kind == "dir" {
        if dst == "-" {
            bail!("{path} is a directory; it cannot be written to stdout");
        }
        let resp = client
            .send(
                Method::GET,
                &format!("{}?path={}", sb_path(id, "/files/archive"), enc(path)),
                None,
                client::empty(),
            )
            .await?;
        // Spool the archive to an anonymous file, then unpack it.
        let mut spool = tokio::fs::File::from_std(
            tempfile::tempfile().context("creating a temporary file for the archive")?,
        );
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| anyhow!("downloading {path}: {e}"))?;
            if let Some(d) = frame.data_ref() {
                spool.write_all(d).await.context("spooling the archive")?;
            }
        }
        spool.flush().await?;
        let mut spool = spool.into_std().await;
        spool.seek(std::io::SeekFrom::Start(0))?;
        let target = PathBuf::from(dst);
        let skipped = tokio::task::spawn_blocking(move || unpack(spool, &target)).await??;
        for s in skipped {
            eprintln!("hull: skipped an archive entry outside {dst}: {s}");
        }
        return Ok(());
    }
    let resp = client
        .send(
            Method::GET,
            &format!("{}?path={}", sb_path(id, "/files"), enc(path)),
            None,
            client::empty(),
        )
        .await?;
    let mut body = resp.into_body();
    let mut out: Box<dyn Write> = if dst == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let mut target = PathBuf::from(dst);
        if target.is_dir() {
            target = target.join(
                Path::new(path)
                    .file_name()
                    .ok_or_else(|| anyhow!("{path} has no file name"))?,
            );
        }
        Box::new(
            std::fs::File::create(&target)
                .with_context(|| format!("creating {}", target.display()))?,
        )
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow!("downloading {path}: {e}"))?;
        if let Some(d) = frame.data_ref() {
            out.write_all(d)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Unpack a tar stream under `target` (created if missing). Entries that
/// would land outside it are skipped and returned; ownership, setuid/setgid
/// and sticky bits and extended attributes are not restored.
pub fn unpack(r: impl Read, target: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(false);
    ar.set_unpack_xattrs(false);
    let mut skipped = Vec::new();
    for entry in ar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // `unpack_in` refuses `..` and absolute names (Ok(false)) and any
        // entry whose parent resolves outside `target` (an error).
        match entry.unpack_in(target) {
            Ok(true) => {}
            Ok(false) => skipped.push(name),
            Err(e) => bail!("unpacking {name}: {e}"),
        }
    }
    Ok(skipped)
}

async fn upload(client: &Client, src: &str, id: &str, path: &str) -> anyhow::Result<()> {
    let local = Path::new(src);
    if src != "-" && local.is_dir() {
        // Pack into an anonymous temporary file, then stream it.
        let local = local.to_path_buf();
        let tmp = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
            let mut b = tar::Builder::new(tempfile::tempfile()?);
            b.follow_symlinks(false);
            b.append_dir_all(".", &local)
                .with_context(|| format!("packing {}", local.display()))?;
            let mut tmp = b.into_inner()?;
            tmp.seek(std::io::SeekFrom::Start(0))?;
            Ok(tmp)
        })
        .await??;
        let body = client::reader_body(tokio::fs::File::from_std(tmp));
        let resp = client
            .send(
                Method::PUT,
                &format!("{}?path={}", sb_path(id, "/files/archive"), enc(path)),
                Some("application/x-tar"),
                body,
            )
            .await?;
        let _ = resp.into_body().collect().await;
        return Ok(());
    }
    // A file: into PATH, or PATH/<name> when PATH is an existing directory.
    let mut target = path.to_string();
    let name = if src == "-" {
        None
    } else {
        local.file_name().map(|n| n.to_string_lossy().into_owned())
    };
    let is_dir =
        path.ends_with('/') || matches!(stat(client, id, path).await, Ok(st) if st.kind == "dir");
    if is_dir {
        let n = name.ok_or_else(|| anyhow!("{path} is a directory: name the file to write"))?;
        target = format!("{}/{n}", path.trim_end_matches('/'));
    }
    let mode = if src == "-" {
        None
    } else {
        use std::os::unix::fs::PermissionsExt;
        Some(
            std::fs::metadata(local)
                .with_context(|| format!("reading {src}"))?
                .permissions()
                .mode()
                & 0o777,
        )
    };
    let body = if src == "-" {
        client::reader_body(tokio::io::stdin())
    } else {
        client::reader_body(
            tokio::fs::File::open(local)
                .await
                .with_context(|| format!("opening {src}"))?,
        )
    };
    let mut p = format!("{}?path={}", sb_path(id, "/files"), enc(&target));
    if let Some(m) = mode {
        p.push_str(&format!("&mode={m:o}"));
    }
    let resp = client
        .send(Method::PUT, &p, Some("application/octet-stream"), body)
        .await?;
    let _ = resp.into_body().collect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sandbox_paths() {
        assert_eq!(remote("abc:/x/y"), Some(("abc", "/x/y")));
        assert_eq!(remote("my-box:/"), Some(("my-box", "/")));
        for local in [
            "./abc:/x",
            "abc:relative",
            "ABC:/x",
            ":/x",
            "-box:/x",
            "a/b:/x",
            "plain",
            "-",
            "/abs/path",
            &format!("{}:/x", "a".repeat(64)),
        ] {
            assert_eq!(remote(local), None, "{local}");
        }
    }

    /// A raw tar header with any name (the `tar` builder refuses hostile
    /// names, a hostile sandbox does not).
    fn raw_entry(
        out: &mut Vec<u8>,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        body: &[u8],
        mode: u32,
    ) {
        let mut h = tar::Header::new_old();
        {
            let b = h.as_mut_bytes();
            b[..name.len()].copy_from_slice(name.as_bytes());
            b[157..157 + link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    #[test]
    fn unpack_refuses_escapes() {
        let base = tempfile::tempdir().unwrap();
        let dst = base.path().join("dst");
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let f = tar::EntryType::Regular;
        let mut ar = Vec::new();
        raw_entry(&mut ar, "ok.txt", f, "", b"fine", 0o644);
        raw_entry(&mut ar, "../dotdot.txt", f, "", b"x", 0o644);
        raw_entry(&mut ar, "sub/../../dotdot2.txt", f, "", b"x", 0o644);
        raw_entry(&mut ar, "suid", f, "", b"#!/bin/sh\n", 0o4755);
        ar.extend_from_slice(&[0; 1024]);
        let skipped = unpack(&ar[..], &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("ok.txt")).unwrap(), "fine");
        assert!(!base.path().join("dotdot.txt").exists());
        assert!(!base.path().join("dotdot2.txt").exists());
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        let mode = std::fs::metadata(dst.join("suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "setuid bit dropped: {mode:o}");

        // A symlink out of the destination, then a file written through it.
        let mut ar = Vec::new();
        raw_entry(
            &mut ar,
            "link",
            tar::EntryType::Symlink,
            outside.to_str().unwrap(),
            b"",
            0o777,
        );
        raw_entry(&mut ar, "link/planted", f, "", b"x", 0o644);
        ar.extend_from_slice(&[0; 1024]);
        assert!(unpack(&ar[..], &dst).is_err());
        assert!(!outside.join("planted").exists());

        // A symlink to a host file, then a regular file of the same name:
        // the link is replaced, the host file untouched.
        let victim = outside.join("victim");
        std::fs::write(&victim, "original").unwrap();
        let mut ar = Vec::new();
        raw_entry(
            &mut ar,
            "v",
            tar::EntryType::Symlink,
            victim.to_str().unwrap(),
            b"",
            0o777,
        );
        raw_entry(&mut ar, "v", f, "", b"overwritten", 0o644);
        ar.extend_from_slice(&[0; 1024]);
        unpack(&ar[..], &dst).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
        assert_eq!(
            std::fs::read_to_string(dst.join("v")).unwrap(),
            "overwritten"
        );

        // A hard link to a host file.
        let mut ar = Vec::new();
        raw_entry(
            &mut ar,
            "hard",
            tar::EntryType::Link,
            victim.to_str().unwrap(),
            b"",
            0o644,
        );
        ar.extend_from_slice(&[0; 1024]);
        assert!(unpack(&ar[..], &dst).is_err());
        assert!(!dst.join("hard").exists(), "no hard link to a host file");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");

        // A truncated archive is an error, not a panic or a partial success.
        let mut ar = Vec::new();
        raw_entry(&mut ar, "big", f, "", &[7u8; 2000], 0o644);
        ar.truncate(700);
        assert!(unpack(&ar[..], &dst).is_err());
    }
}
