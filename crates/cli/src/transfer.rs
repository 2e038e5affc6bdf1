//! The long-running CLI commands, with progress on stderr (drawn only when
//! stderr is a terminal): `hull snapshot export|import`, `hull template
//! import|build`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http_body_util::BodyExt;
use hull_api::{BuildEvent, BuildTemplate, Snapshot, TemplateInfo};
use hyper::Method;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::client::{Client, enc, reader_body};

fn bytes_bar(total: Option<u64>, what: &str) -> ProgressBar {
    let pb = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn spinner(what: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// An [`AsyncRead`] that counts what passes through it.
struct Counted<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.n.fetch_add(read, Ordering::Relaxed);
        r
    }
}

/// Upload `file` as the body of `path`; a bar follows the upload, then a
/// spinner says `then` until the daemon answers. Returns the answer's JSON.
async fn upload<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &str,
    file: &Path,
    content_type: &str,
    then: &str,
) -> anyhow::Result<T> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let meta = f
        .metadata()
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", file.display());
    }
    let sent = Arc::new(AtomicU64::new(0));
    let pb = bytes_bar(Some(meta.len()), "uploading");
    let ticker = {
        let (pb, sent) = (pb.clone(), sent.clone());
        let total = meta.len();
        let then = then.to_string();
        tokio::spawn(async move {
            loop {
                let n = sent.load(Ordering::Relaxed);
                pb.set_position(n);
                if n >= total {
                    pb.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    pb.set_message(then);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let body = reader_body(Counted {
        inner: f,
        n: sent.clone(),
    });
    let result = async {
        let resp = match client
            .send(Method::POST, path, Some(content_type), body)
            .await
        {
            Ok(r) => r,
            Err(crate::client::ClientError::Other(e)) if sent.load(Ordering::Relaxed) > 0 => {
                return Err(anyhow!(
                    "the daemon stopped reading {} after {} bytes: it refused the archive \
                     (its log, {}, says why): {e:#}",
                    file.display(),
                    sent.load(Ordering::Relaxed),
                    "daemon.log in its state directory"
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer: {e}"))?
            .to_bytes();
        serde_json::from_slice::<T>(&bytes).map_err(|e| anyhow!("unexpected answer: {e}"))
    }
    .await;
    ticker.abort();
    pb.finish_and_clear();
    result
}

/// `hull snapshot export ID [-o FILE]`: to FILE (written under a temporary
/// name, renamed when complete), or to stdout when it is not a terminal.
pub async fn export(client: &Client, id: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
    if out.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write an archive to a terminal: give -o FILE or redirect stdout");
    }
    let resp = client
        .send(
            Method::GET,
            &format!("/v1/snapshots/{}/export", enc(id)),
            None,
            crate::client::empty(),
        )
        .await?;
    let pb = bytes_bar(None, &format!("exporting {id}"));
    let (mut sink, tmp): (
        Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
        Option<PathBuf>,
    ) = match &out {
        Some(p) => {
            let name = p
                .file_name()
                .ok_or_else(|| anyhow!("{} is not a file name", p.display()))?;
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(".part");
            let tmp = p.with_file_name(tmp_name);
            let f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            (Box::new(f), Some(tmp))
        }
        None => (Box::new(tokio::io::stdout()), None),
    };
    let result = async {
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                anyhow!("the export stopped after {n} bytes (the daemon's log says why): {e}")
            })?;
            if let Ok(data) = frame.into_data() {
                sink.write_all(&data).await.context("writing the archive")?;
                n += data.len() as u64;
                pb.set_position(n);
            }
        }
        sink.flush().await.context("writing the archive")?;
        Ok::<u64, anyhow::Error>(n)
    }
    .await;
    pb.finish_and_clear();
    match (result, tmp, out) {
        (Ok(n), Some(tmp), Some(out)) => {
            tokio::fs::rename(&tmp, &out)
                .await
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
            eprintln!("exported {id} to {} ({n} bytes)", out.display());
            Ok(())
        }
        (Ok(_), _, _) => Ok(()),
        (Err(e), tmp, _) => {
            if let Some(tmp) = tmp {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            Err(e)
        }
    }
}

/// `hull snapshot import FILE [--name N]`.
pub async fn import_snapshot(
    client: &Client,
    file: &Path,
    name: Option<String>,
) -> anyhow::Result<Snapshot> {
    let path = match &name {
        Some(n) => {
            // Before sending what may be gigabytes (the daemon would refuse
            // it unread).
            let exists = client
                .call::<Snapshot>(
                    Method::GET,
                    &format!("/v1/snapshots/{}", enc(n)),
                    None::<&()>,
                )
                .await
                .is_ok();
            if exists {
                bail!("a snapshot named {n:?} already exists");
            }
            format!("/v1/snapshots/import?name={}", enc(n))
        }
        None => "/v1/snapshots/import".to_string(),
    };
    upload(client, &path, file, "application/zstd", "importing").await
}

/// A template name from an archive's file name: `python-3.12.tar` gives
/// `python-3-12`.
pub fn name_from_file(file: &Path) -> anyhow::Result<String> {
    let stem = file
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| {
            let n = n.to_ascii_lowercase();
            for ext in [".tar.gz", ".tar.zst", ".tgz", ".tar", ".oci"] {
                if let Some(s) = n.strip_suffix(ext) {
                    return s.to_string();
                }
            }
            n
        })
        .unwrap_or_default();
    let mut name = String::new();
    for c in stem.chars() {
        match c {
            'a'..='z' | '0'..='9' => name.push(c),
            _ if !name.is_empty() && !name.ends_with('-') => name.push('-'),
            _ => {}
        }
    }
    let name = name.trim_end_matches('-');
    let name: String = name.chars().take(63).collect();
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() {
        bail!(
            "cannot make a template name from {}: give --name NAME",
            file.display()
        );
    }
    Ok(name)
}

/// `hull template import IMAGE.tar [--name NAME] [--ref REF]`.
pub async fn import_template(
    client: &Client,
    file: &Path,
    name: Option<String>,
    reference: Option<String>,
) -> anyhow::Result<TemplateInfo> {
    let name = match name {
        Some(n) => n,
        None => name_from_file(file)?,
    };
    // Before sending what may be gigabytes (the daemon would refuse it
    // unread).
    let list: hull_api::TemplateList = client
        .call(Method::GET, "/v1/templates", None::<&()>)
        .await?;
    if list.templates.iter().any(|t| t.name == name) {
        bail!("a template named {name:?} already exists (hull template rm {name} first)");
    }
    let mut q = format!("name={}", enc(&name));
    if let Some(r) = &reference {
        q.push_str(&format!("&reference={}", enc(r)));
    }
    if let Some(f) = file.file_name().and_then(|f| f.to_str()) {
        q.push_str(&format!("&source={}", enc(f)));
    }
    upload(
        client,
        &format!("/v1/templates/import?{q}"),
        file,
        "application/x-tar",
        "importing layers",
    )
    .await
}

/// `hull template build NAME --debian SUITE --packages a,b`: the daemon's
/// progress events drawn as a spinner (phases) and a bar (packages), the
/// builder's own lines printed with `verbose`.
pub async fn build(
    client: &Client,
    req: &BuildTemplate,
    verbose: bool,
) -> anyhow::Result<TemplateInfo> {
    let body = crate::client::full(serde_json::to_vec(req)?);
    let resp = client
        .send(
            Method::POST,
            "/v1/templates/build",
            Some("application/json"),
            body,
        )
        .await?;
    let pb = spinner(&format!("building {} from debian {}", req.name, req.debian));
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut phase = String::from("starting");
    loop {
        let Some(frame) = body.frame().await else {
            pb.finish_and_clear();
            bail!("the daemon closed the build stream without a result");
        };
        let frame = frame.map_err(|e| anyhow!("reading the build's progress: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let ev: BuildEvent = match serde_json::from_slice(&line) {
                Ok(ev) => ev,
                Err(e) => {
                    pb.finish_and_clear();
                    bail!("unexpected progress line from the daemon: {e}");
                }
            };
            match ev {
                BuildEvent::Phase { phase: p } => {
                    phase = p;
                    pb.set_message(format!("{}: {phase}", req.name));
                }
                BuildEvent::Log { line } => {
                    if verbose {
                        pb.println(line);
                    }
                }
                BuildEvent::Progress { done, total } => {
                    pb.set_message(format!("{}: {phase} {done}/{total}", req.name));
                }
                BuildEvent::Done { template } => {
                    pb.finish_and_clear();
                    return Ok(*template);
                }
                BuildEvent::Error { error } => {
                    pb.finish_and_clear();
                    return Err(crate::client::ClientError::Api(error).into());
                }
            }
        }
        if buf.len() > 1 << 20 {
            pb.finish_and_clear();
            bail!("a progress line from the daemon is longer than 1 MiB");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_files() {
        for (file, want) in [
            ("alpine.tar", "alpine"),
            ("/x/Python-3.12.tar.gz", "python-3-12"),
            ("my_image.oci", "my-image"),
            ("--weird--.tar", "weird"),
            ("ubuntu", "ubuntu"),
        ] {
            assert_eq!(name_from_file(Path::new(file)).unwrap(), want, "{file}");
        }
        for bad in ["...tar", "/", "_.tar"] {
            assert!(name_from_file(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
