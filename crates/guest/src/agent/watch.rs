//! Directory watches (`watch_start`, protocol version 5): inotify on a
//! directory inside the sandbox root, its changes streamed to the host as
//! `watch_events` batches until the host sends `Eof` or closes the
//! connection.
//!
//! The directory is opened with `openat2(RESOLVE_IN_ROOT)` like every file
//! operation (see [`super::paths`]), and the watch is added through the
//! descriptor's `/proc/self/fd` link, so `..` and symlinks never put a
//! watch outside the root. A recursive watch adds one inotify watch per
//! subdirectory, opening each relative to the watched directory with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (symlinked directories are not
//! followed); a directory created or moved in later is watched as it
//! appears, and what it already holds by then is reported as `create`
//! events (the kernel could not have reported it).
//!
//! Event kinds follow E2B's envd (Go's fsnotify): `create` (created or
//! moved in), `write`, `remove`, `rename` (moved away), `chmod`; names are
//! relative to the watched directory. Removing or moving the watched
//! directory itself ends the watch with a `not_found` error.
//!
//! Limits: memory is bounded: the agent reads the inotify queue only as
//! fast as the host takes batches, so a slow host makes the kernel's queue
//! (`fs.inotify.max_queued_events`) overflow, reported as one `overflow`
//! event, never buffered here. At most [`MAX_WATCHERS`] watches per agent
//! and [`MAX_WATCH_DIRS`] directories per watch (a larger tree is refused
//! at the start; past the cap later, new directories go unwatched and an
//! `overflow` event says so); recursion stops [`MAX_DEPTH`] levels down.
//! The kernel's `fs.inotify.max_user_watches` applies too
//! (`resource_exhausted`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hull_proto::{
    GuestError, GuestErrorKind, MAX_WATCH_BATCH, MAX_WATCH_DIRS, MAX_WATCHERS, Response,
    WatchEvent, WatchEventKind, read_frame,
};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{AtFlags, OFlags, ResolveFlags};
use rustix::io::Errno;
use tokio::net::UnixStream;

use super::files::{DIR_NOFOLLOW, read_names};
use super::{Agent, os_error, paths, send, send_error};

/// Deepest subdirectory a recursive watch covers.
pub(crate) const MAX_DEPTH: usize = 64;
/// Bytes of names one batch carries at most (it is one frame).
const MAX_BATCH_BYTES: usize = 256 << 10;
/// Raw inotify events taken from the kernel per round.
const MAX_RAW_EVENTS: usize = 4096;
/// Entries read from one directory while watching a tree.
const MAX_DIR_ENTRIES: usize = 1 << 20;

const MASK: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::ONLYDIR)
    .union(WatchFlags::EXCL_UNLINK);

/// Open the directory to watch (for reading), inside the root.
fn open_top(root: &OwnedFd, path: &str) -> Result<OwnedFd, GuestError> {
    paths::open_in_root(root, path, OFlags::RDONLY | OFlags::DIRECTORY).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::ENOTDIR) => GuestError::new(
                GuestErrorKind::InvalidArgument,
                format!("{path} is not a directory: only directories can be watched"),
            ),
            _ => os_error(e, format!("watching {path}")),
        }
    })
}

/// The agent's count of live watches.
#[derive(Default)]
pub(crate) struct Watches(Arc<AtomicUsize>);

/// One taken watch slot, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Watches {
    fn acquire(&self) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_WATCHERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.0.clone()))
    }
}

/// The inotify instance of one watch and the directories it covers.
struct Tree {
    ino: OwnedFd,
    /// The sandbox root (`O_PATH`). The watched directory is not held
    /// open: an open descriptor would delay its `IN_DELETE_SELF`.
    root: OwnedFd,
    /// Its path, for messages.
    path: String,
    recursive: bool,
    /// Watch descriptor -> directory path relative to `top` ("" for it).
    dirs: HashMap<i32, String>,
    /// The watch descriptor of `top`.
    top_wd: i32,
}

fn rel_join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

fn event(name: String, kind: WatchEventKind) -> WatchEvent {
    WatchEvent { name, kind }
}

impl Tree {
    /// Open `path` under the root and watch it (and, when `recursive`, the
    /// directories under it).
    fn start(root: OwnedFd, path: &str, recursive: bool) -> Result<Tree, GuestError> {
        paths::check(path)?;
        let top = open_top(&root, path)?;
        let ino = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| os_error(e.into(), "creating an inotify instance"))?;
        let mut tree = Tree {
            ino,
            root,
            path: path.to_string(),
            recursive,
            dirs: HashMap::new(),
            top_wd: -1,
        };
        tree.top_wd = tree.add(&top, String::new())?;
        if recursive {
            tree.walk(&top, "", 0, None)?;
        }
        Ok(tree)
    }

    /// Watch the directory open as `dir`, known as `rel`.
    fn add(&mut self, dir: &OwnedFd, rel: String) -> Result<i32, GuestError> {
        if self.dirs.len() >= MAX_WATCH_DIRS {
            return Err(GuestError::new(
                GuestErrorKind::ResourceExhausted,
                format!(
                    "{} holds more than {MAX_WATCH_DIRS} directories: watch a smaller tree, or watch without recursion",
                    self.path
                ),
            ));
        }
        // The descriptor's magic link reaches exactly the directory opened
        // under the root, whatever its path spells.
        let link = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let wd = inotify::add_watch(&self.ino, link.as_str(), MASK).map_err(|e| {
            if e == Errno::NOSPC {
                GuestError::new(
                    GuestErrorKind::ResourceExhausted,
                    format!(
                        "watching {}: the kernel's inotify watch limit (fs.inotify.max_user_watches) is reached",
                        paths::join(&self.path, &rel)
                    ),
                )
            } else {
                os_error(e.into(), format!("watching {}", paths::join(&self.path, &rel)))
            }
        })?;
        self.dirs.insert(wd, rel);
        Ok(wd)
    }

    /// Watch the subdirectories of `dir` (known as `rel`, already watched),
    /// and report its entries as created into `created` when given.
    fn walk(
        &mut self,
        dir: &OwnedFd,
        rel: &str,
        depth: usize,
        mut created: Option<&mut Vec<WatchEvent>>,
    ) -> Result<(), GuestError> {
        let names = read_names(dir, &paths::join(&self.path, rel), MAX_DIR_ENTRIES)?;
        for (name, ty) in names {
            let child = rel_join(rel, &name.to_string_lossy());
            if let Some(out) = created.as_deref_mut() {
                out.push(event(child.clone(), WatchEventKind::Create));
            }
            let is_dir = match ty {
                rustix::fs::FileType::Directory => true,
                rustix::fs::FileType::Unknown => {
                    rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Directory
                    })
                }
                _ => false,
            };
            if !is_dir || depth + 1 >= MAX_DEPTH {
                continue;
            }
            let sub = match rustix::fs::openat(dir, &name, DIR_NOFOLLOW, rustix::fs::Mode::empty())
            {
                Ok(fd) => fd,
                // Gone or replaced since the listing: nothing to watch.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(os_error(e.into(), paths::join(&self.path, &child))),
            };
            self.add(&sub, child.clone())?;
            self.walk(&sub, &child, depth + 1, created.as_deref_mut())?;
        }
        Ok(())
    }

    /// Watch a directory that appeared at `rel` and everything under it;
    /// what it holds already is reported into `out` as created. A
    /// directory past the limits is reported as an `overflow`.
    fn adopt(&mut self, rel: &str, out: &mut Vec<WatchEvent>) {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let Ok(top) = open_top(&self.root, &self.path) else {
            return;
        };
        let sub = match paths::openat2(&top, OsStr::new(rel), DIR_NOFOLLOW, how) {
            Ok(fd) => fd,
            Err(_) => return, // gone again, or not a directory any more
        };
        let depth = rel.split('/').count();
        if depth >= MAX_DEPTH {
            return;
        }
        let ok = self
            .add(&sub, rel.to_string())
            .and_then(|_| self.walk(&sub, rel, depth, Some(out)));
        if ok.is_err() {
            out.push(event(String::new(), WatchEventKind::Overflow));
        }
    }

    /// Stop watching `rel` and the directories under it (moved away).
    fn forget(&mut self, rel: &str) {
        let prefix = format!("{rel}/");
        let gone: Vec<i32> = self
            .dirs
            .iter()
            .filter(|(_, p)| p.as_str() == rel || p.starts_with(&prefix))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = inotify::remove_watch(&self.ino, wd);
        }
    }

    /// Translate one raw event into `out`; directories to adopt go to
    /// `new_dirs`. True when the watched directory itself is gone.
    fn translate(
        &mut self,
        raw: &Raw,
        out: &mut Vec<WatchEvent>,
        new_dirs: &mut Vec<String>,
    ) -> bool {
        let m = raw.mask;
        if m.contains(ReadFlags::QUEUE_OVERFLOW) {
            out.push(event(String::new(), WatchEventKind::Overflow));
            return false;
        }
        let Some(base) = self.dirs.get(&raw.wd).cloned() else {
            return false; // a watch already forgotten
        };
        let is_top = raw.wd == self.top_wd;
        if m.contains(ReadFlags::IGNORED) {
            self.dirs.remove(&raw.wd);
            return is_top;
        }
        let Some(name) = &raw.name else {
            // An event on a watched directory itself: its parent reports
            // it for subdirectories; for the watched directory, here.
            if !is_top {
                return false;
            }
            if m.intersects(ReadFlags::DELETE_SELF) {
                out.push(event(String::new(), WatchEventKind::Remove));
                return true;
            }
            if m.intersects(ReadFlags::MOVE_SELF) {
                out.push(event(String::new(), WatchEventKind::Rename));
                return true;
            }
            if m.intersects(ReadFlags::ATTRIB) {
                out.push(event(String::new(), WatchEventKind::Chmod));
            }
            return false;
        };
        let rel = rel_join(&base, &String::from_utf8_lossy(name));
        let dir = m.contains(ReadFlags::ISDIR);
        let kind = if m.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
            if dir && self.recursive {
                new_dirs.push(rel.clone());
            }
            WatchEventKind::Create
        } else if m.intersects(ReadFlags::MODIFY) {
            WatchEventKind::Write
        } else if m.intersects(ReadFlags::DELETE) {
            WatchEventKind::Remove
        } else if m.intersects(ReadFlags::MOVED_FROM) {
            if dir && self.recursive {
                self.forget(&rel);
            }
            WatchEventKind::Rename
        } else if m.intersects(ReadFlags::ATTRIB) {
            WatchEventKind::Chmod
        } else {
            return false;
        };
        out.push(event(rel, kind));
        false
    }
}

/// One event as read from the kernel.
struct Raw {
    wd: i32,
    mask: ReadFlags,
    name: Option<Vec<u8>>,
}

/// Send `events` in batches that fit a frame.
async fn send_events(
    conn: &mut (impl tokio::io::AsyncWrite + Unpin),
    events: Vec<WatchEvent>,
) -> bool {
    let mut batch = Vec::new();
    let mut bytes = 0;
    for ev in events {
        bytes += ev.name.len() + 32;
        batch.push(ev);
        if batch.len() >= MAX_WATCH_BATCH || bytes >= MAX_BATCH_BYTES {
            let events = std::mem::take(&mut batch);
            bytes = 0;
            if send(conn, &Response::WatchEvents { events }).await.is_err() {
                return false;
            }
        }
    }
    batch.is_empty()
        || send(conn, &Response::WatchEvents { events: batch })
            .await
            .is_ok()
}

/// Run a tree operation on the blocking pool (it walks directories).
async fn blocking<T: Send + 'static>(
    tree: Tree,
    f: impl FnOnce(&mut Tree) -> T + Send + 'static,
) -> Option<(Tree, T)> {
    tokio::task::spawn_blocking(move || {
        let mut tree = tree;
        let r = f(&mut tree);
        (tree, r)
    })
    .await
    .ok()
}

/// Serve one `watch_start` connection until the host stops it.
pub(crate) async fn serve(agent: Arc<Agent>, mut conn: UnixStream, path: String, recursive: bool) {
    let Some(_slot) = agent.watches.acquire() else {
        send_error(
            &mut conn,
            GuestError::new(
                GuestErrorKind::ResourceExhausted,
                format!(
                    "the sandbox already has {MAX_WATCHERS} directory watches: stop one before starting another"
                ),
            ),
        )
        .await;
        return;
    };
    let root = match agent.root.try_clone() {
        Ok(r) => r,
        Err(e) => return send_error(&mut conn, os_error(e, "the sandbox root")).await,
    };
    let p = path.clone();
    let mut tree = match tokio::task::spawn_blocking(move || Tree::start(root, &p, recursive)).await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return send_error(&mut conn, e).await,
        Err(e) => {
            return send_error(
                &mut conn,
                GuestError::new(GuestErrorKind::Internal, format!("watch setup: {e}")),
            )
            .await;
        }
    };
    let readable = match tree.ino.try_clone().and_then(super::exec::async_fd) {
        Ok(fd) => fd,
        Err(e) => return send_error(&mut conn, os_error(e, "the inotify instance")).await,
    };
    if send(&mut conn, &Response::Ok).await.is_err() {
        return;
    }
    let (mut rd, mut wr) = conn.into_split();
    // Whatever the host sends (`Eof`) or its closing ends the watch.
    let stop = async move {
        let _ = read_frame(&mut rd).await;
    };
    let w = &mut wr;
    let watch = async move {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 << 10];
        loop {
            let mut guard = match readable.readable().await {
                Ok(g) => g,
                Err(_) => return None,
            };
            let mut raws = Vec::new();
            let mut drained = false;
            {
                let mut reader = inotify::Reader::new(readable.get_ref(), &mut buf);
                while raws.len() < MAX_RAW_EVENTS {
                    match reader.next() {
                        Ok(ev) => raws.push(Raw {
                            wd: ev.wd(),
                            mask: ev.events(),
                            name: ev.file_name().map(|n| n.to_bytes().to_vec()),
                        }),
                        Err(Errno::AGAIN) => {
                            drained = true;
                            break;
                        }
                        Err(e) => return Some(os_error(e.into(), "reading inotify events")),
                    }
                    // Stop between kernel reads once the round is full.
                    if reader.is_buffer_empty() && raws.len() >= MAX_RAW_EVENTS / 2 {
                        break;
                    }
                }
            }
            if drained {
                guard.clear_ready();
            }
            drop(guard);
            // A new directory is adopted (watched, walked) right after
            // its own event, so what it holds is reported in order.
            let recursive = tree.recursive;
            let step = move |t: &mut Tree| {
                let mut out = Vec::new();
                let mut ended = false;
                for raw in &raws {
                    let mut new_dirs = Vec::new();
                    ended |= t.translate(raw, &mut out, &mut new_dirs);
                    if !ended {
                        for d in new_dirs {
                            t.adopt(&d, &mut out);
                        }
                    }
                }
                (out, ended)
            };
            let (out, ended) = if recursive {
                let (t, r) = blocking(tree, step).await?;
                tree = t;
                r
            } else {
                step(&mut tree)
            };
            if !out.is_empty() && !send_events(&mut *w, out).await {
                return None;
            }
            if ended {
                return Some(GuestError::new(
                    GuestErrorKind::NotFound,
                    format!(
                        "the watched directory {} was removed or moved away; the watch ended",
                        tree.path
                    ),
                ));
            }
        }
    };
    let failed = tokio::select! {
        () = stop => None,
        e = watch => e,
    };
    if let Some(e) = failed {
        send_error(&mut wr, e).await;
    }
}
