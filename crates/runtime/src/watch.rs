//! Directory watches on a running sandbox: the guest agent's inotify
//! watch (`watch_start`, protocol version 5) relayed as
//! [`FileWatchEvent`]s.
//!
//! [`Runtime::watch_dir`] returns once the guest watches the directory,
//! so a bad path (missing, a file, outside the sandbox) is an error of the
//! call itself. The relay holds at most [`WATCH_BUFFER`] events for a
//! slow reader; past that it stops reading the guest, whose kernel queue
//! then overflows (an `overflow` event), so memory stays bounded.
//! Dropping the receiver ends the watch in the guest. A watch does not
//! keep the sandbox active (its TTL runs on); when the sandbox stops, the
//! stream ends with an `error` event.

use std::time::Duration;

use hull_api::{ApiError, FileWatchEvent, SandboxState};
use hull_proto::{WatchEvent, WatchEventKind};
use tokio::sync::mpsc;

use crate::files::MAX_PATH;
use crate::{Runtime, guest_error};

/// Events buffered between the guest and a slow client.
pub const WATCH_BUFFER: usize = 256;
/// How long the guest may take to set a watch up (a recursive watch
/// walks the tree first).
const START_BOUND: Duration = Duration::from_secs(60);

fn join(dir: &str, name: &str) -> String {
    if name.is_empty() {
        dir.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn api_event(dir: &str, ev: WatchEvent) -> Option<FileWatchEvent> {
    let path = join(dir, &ev.name);
    let name = ev.name;
    Some(match ev.kind {
        WatchEventKind::Create => FileWatchEvent::Create { name, path },
        WatchEventKind::Write => FileWatchEvent::Write { name, path },
        WatchEventKind::Remove => FileWatchEvent::Remove { name, path },
        WatchEventKind::Rename => FileWatchEvent::Rename { name, path },
        WatchEventKind::Chmod => FileWatchEvent::Chmod { name, path },
        WatchEventKind::Overflow => FileWatchEvent::Overflow,
        WatchEventKind::Unknown => return None,
    })
}

impl Runtime {
    /// Watch `path` (a directory; with `recursive`, its subdirectories
    /// too) and stream its changes until the receiver is dropped.
    pub async fn watch_dir(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<mpsc::Receiver<FileWatchEvent>, ApiError> {
        if path.is_empty() || path.len() > MAX_PATH || path.contains('\0') {
            return Err(ApiError::invalid(format!(
                "path must be 1 to {MAX_PATH} bytes without NUL"
            )));
        }
        let (e, c) = self.running_client(id, "watch files of")?;
        let sid = e.id();
        let mut stream = match tokio::time::timeout(START_BOUND, c.watch(path, recursive)).await {
            Err(_) => {
                return Err(ApiError::unavailable(format!(
                    "the guest agent of sandbox {sid} did not start watching {path} within {}s",
                    START_BOUND.as_secs()
                )));
            }
            Ok(r) => r.map_err(|err| guest_error(&sid, err))?,
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let dir = path.to_string();
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    r = stream.next() => r,
                    () = tx.closed() => {
                        stream.stop().await;
                        return;
                    }
                };
                match batch {
                    Ok(events) => {
                        for ev in events {
                            let Some(ev) = api_event(&dir, ev) else {
                                continue;
                            };
                            if tx.send(ev).await.is_err() {
                                stream.stop().await;
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        let state = e.state();
                        let error = if state == SandboxState::Running {
                            guest_error(&sid, err)
                        } else {
                            ApiError::conflict(format!(
                                "sandbox {sid} is {state}: the watch of {dir} ended"
                            ))
                        };
                        let _ = tx.send(FileWatchEvent::Error { error }).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_absolute_paths() {
        let ev = |name: &str, kind| WatchEvent {
            name: name.into(),
            kind,
        };
        assert_eq!(
            api_event("/w", ev("a/b", WatchEventKind::Write)),
            Some(FileWatchEvent::Write {
                name: "a/b".into(),
                path: "/w/a/b".into()
            })
        );
        assert_eq!(
            api_event("/", ev("x", WatchEventKind::Create)),
            Some(FileWatchEvent::Create {
                name: "x".into(),
                path: "/x".into()
            })
        );
        assert_eq!(
            api_event("/w", ev("", WatchEventKind::Remove)),
            Some(FileWatchEvent::Remove {
                name: String::new(),
                path: "/w".into()
            })
        );
        assert_eq!(api_event("/w", ev("", WatchEventKind::Unknown)), None);
    }
}
