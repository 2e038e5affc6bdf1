//! The conformance suite every [`Snapshotter`] backend passes.
//!
//! Each case is a `pub fn(&Backend)`; [`snapshot_conformance!`](crate::snapshot_conformance) makes one
//! `#[test]` per case for a backend, so each shows up (and fails) on its
//! own:
//!
//! ```ignore
//! hull_fs::snapshot_conformance!(
//!     overlay,
//!     scratch = "/var/tmp",
//!     open = |root| Ok(Box::new(OverlaySnapshotter::open(root)?)),
//! );
//! ```
//!
//! Every case runs in a fresh scratch directory under `scratch` (the store
//! at `<dir>/store`, mount points under `<dir>/mnt`), and ends by checking
//! that nothing is left mounted under it; every mount is held by a
//! [`Mounted`] guard and the scratch directory by a guard that unmounts
//! and deletes, so a failing case cleans up too.
//!
//! Cases that mount need root. Like every privileged test in hull they skip
//! with a message when not root, and fail when `HULL_TEST_PRIVILEGED=1`.
//! The others (metadata rules, labels, walk, keys, concurrency) run
//! anywhere, unless opening the backend's store needs root
//! ([`Backend::open_needs_root`]).
//!
//! `crash_recovery` and `killed_at_random` prove crash consistency with
//! real deaths: they re-run the test binary (the case's own libtest name,
//! `--exact`) as a child process that opens the same store and is SIGKILLed
//! at a named [`crash`] point, or at a random instant, and then check that
//! the reopened store shows no half-made snapshot and that its root holds
//! exactly the files it held before (listed once the store is closed, or,
//! for a backend with a `close` hook, whose files may be on an image that
//! `close` unmounts, just before closing it). The child sees
//! `HULL_SNAPSHOT_SUITE_CHILD`; `Backend::test` must be the case's libtest
//! name for that (the macro sees to it).
//!
//! Limits: the suite checks behaviour through the trait and through mounts;
//! backend-specific layout (overlay's `work/`, btrfs subvolumes) is tested
//! next to each backend.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io::{BufRead, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Kind, LabelChanges, Labels, Mount, SnapshotError, Snapshotter, Usage, crash};

/// Opens (or creates) a backend's store at a root directory.
pub type Open = fn(&Path) -> Result<Box<dyn Snapshotter>, SnapshotError>;

/// A backend under test.
pub struct Backend {
    /// Its name, used in scratch directory names.
    pub name: &'static str,
    /// Where cases make their scratch directories.
    pub scratch: PathBuf,
    pub open: Open,
    /// Called with the store's root after each close, for backends that
    /// hold something beyond the store's life (a loop-mounted image):
    /// release it here so the case can check nothing is left mounted.
    pub close: Option<fn(&Path)>,
    /// Opening a store needs root (it mounts a loop-backed image), so
    /// every case does.
    pub open_needs_root: bool,
    /// The running test's libtest name (`module::case`), for re-running it
    /// as a child process.
    pub test: String,
}

/// The libtest name of `case` in the module at `module_path` (which
/// `module_path!()` gives with the crate name in front).
pub fn test_path(module_path: &str, case: &str) -> String {
    match module_path.split_once("::") {
        Some((_, rest)) => format!("{rest}::{case}"),
        None => case.to_string(),
    }
}

/// Generate one `#[test]` per conformance case, in a module named after the
/// backend: `snapshot_conformance!(name, scratch = EXPR, open = FN)`, with
/// an optional `close = FN` (see [`Backend::close`]) and then an optional
/// `open_needs_root = BOOL` (see [`Backend::open_needs_root`]).
#[macro_export]
macro_rules! snapshot_conformance {
    ($name:ident, scratch = $scratch:expr, open = $open:expr $(, close = $close:expr)?
     $(, open_needs_root = $root:expr)? $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn backend(case: &str) -> $crate::snapshot::testsuite::Backend {
                $crate::snapshot::testsuite::Backend {
                    name: stringify!($name),
                    scratch: ::std::path::PathBuf::from($scratch),
                    open: $open,
                    close: $crate::snapshot_conformance!(@close $($close)?),
                    open_needs_root: $crate::snapshot_conformance!(@root $($root)?),
                    test: $crate::snapshot::testsuite::test_path(module_path!(), case),
                }
            }

            $crate::snapshot_conformance!(@cases
                round_trip_three_levels,
                deletions_and_opaque_dirs,
                commit_from_dir_captures_upper,
                commit_requires_active,
                parents_must_be_committed,
                remove_with_children_refused,
                labels_set_update_stat,
                walk_lists_live_snapshots,
                usage_counts_own_layer,
                invalid_keys,
                unknown_keys,
                reopen_and_lock,
                crash_recovery,
                killed_at_random,
                concurrent_operations,
                deep_chain,
            );
        }
    };
    (@close) => { None };
    (@close $close:expr) => { Some($close) };
    (@root) => { false };
    (@root $root:expr) => { $root };
    (@cases $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::snapshot::testsuite::$case(&backend(stringify!($case)));
            }
        )*
    };
}

/// True when running as root; otherwise skips with a message, or fails
/// when `HULL_TEST_PRIVILEGED=1`.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("HULL_TEST_PRIVILEGED").as_deref(),
        Ok("1"),
        "{test}: needs root"
    );
    eprintln!("SKIP {test}: needs root");
    false
}

/// A mount held until dropped (unmounted then, even during a panic).
#[derive(Debug)]
pub struct Mounted {
    path: PathBuf,
}

impl Mounted {
    /// Perform `mounts` on `target` (created if missing).
    pub fn new(mounts: &[Mount], target: &Path) -> Mounted {
        fs::create_dir_all(target).unwrap();
        Mount::mount_all(mounts, target)
            .unwrap_or_else(|e| panic!("mounting {mounts:?} on {}: {e}", target.display()));
        Mounted {
            path: target.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = super::unmount(&self.path) {
            eprintln!("unmounting {}: {e}", self.path.display());
        }
    }
}

/// Unmounts everything under a scratch directory and deletes it.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        hull_sys::mount::unmount_all_under(&self.0);
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

/// One case's world: a scratch directory and the store in it.
pub struct Ctx<'a> {
    pub b: &'a Backend,
    /// The scratch directory.
    pub dir: PathBuf,
    /// The store's root (`<dir>/store`).
    pub root: PathBuf,
    store: Option<Box<dyn Snapshotter>>,
    views: AtomicUsize,
}

impl Ctx<'_> {
    /// The open store.
    pub fn s(&self) -> &dyn Snapshotter {
        self.store.as_deref().expect("the store is open")
    }

    /// Close the store (as a daemon stopping would).
    pub fn close(&mut self) {
        if self.store.take().is_some()
            && let Some(close) = self.b.close
        {
            close(&self.root);
        }
    }

    /// Open the store (again).
    pub fn reopen(&mut self) {
        self.close();
        self.store = Some(
            (self.b.open)(&self.root)
                .unwrap_or_else(|e| panic!("opening the store at {}: {e}", self.root.display())),
        );
    }

    /// Mount `mounts` at `<dir>/mnt/<name>`.
    pub fn mount(&self, mounts: &[Mount], name: &str) -> Mounted {
        Mounted::new(mounts, &self.dir.join("mnt").join(name))
    }

    /// Prepare `key` over `parent`, run `ops` in its mount, unmount.
    pub fn in_active(&self, key: &str, parent: Option<&str>, ops: impl FnOnce(&Path)) {
        let m = self.s().prepare(key, parent, &none()).unwrap();
        let mnt = self.mount(&m, key);
        ops(mnt.path());
    }

    /// [`Self::in_active`] under a temporary key, then commit as `name`.
    pub fn commit_layer(&self, name: &str, parent: Option<&str>, ops: impl FnOnce(&Path)) {
        let key = format!("{name}.active");
        self.in_active(&key, parent, ops);
        self.s().commit(name, &key, &none()).unwrap();
    }

    /// The tree of committed `name` from its [`Snapshotter::layers`],
    /// stacked the way the runtime stacks them (overlayfs, lower layers only).
    pub fn layers_tree(&self, name: &str, detail: Detail) -> Tree {
        let dirs = self.s().layers(name).unwrap();
        assert!(!dirs.is_empty(), "{name} has no layers");
        let m = if dirs.len() == 1 {
            Mount {
                fstype: "bind".into(),
                source: dirs[0].to_string_lossy().into_owned(),
                options: vec!["bind".into(), "ro".into()],
            }
        } else {
            let lower: Vec<String> = dirs
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            Mount {
                fstype: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "ro".into(),
                    "userxattr".into(),
                    format!("lowerdir={}", lower.join(":")),
                ],
            }
        };
        let key = format!(
            "{name}.layers{}",
            self.views.fetch_add(1, Ordering::Relaxed)
        );
        let mnt = self.mount(&[m], &key);
        tree(mnt.path(), detail)
    }

    /// The tree seen through a (temporary) view of `name`.
    pub fn view_tree(&self, name: &str, detail: Detail) -> Tree {
        let key = format!("{name}.view{}", self.views.fetch_add(1, Ordering::Relaxed));
        let m = self.s().view(&key, Some(name), &none()).unwrap();
        let t = {
            let mnt = self.mount(&m, &key);
            tree(mnt.path(), detail)
        };
        self.s().remove(&key).unwrap();
        self.seen(t)
    }

    /// `t` as a sandbox stacked over the store sees it: without the
    /// markers a backend keeps for layers below the store, if its views
    /// show them ([`Snapshotter::views_show_markers`]).
    pub fn seen(&self, t: Tree) -> Tree {
        if !self.s().views_show_markers() {
            return t;
        }
        t.into_iter()
            .filter(|(_, n)| n.entry != Entry::Whiteout)
            .map(|(k, mut n)| {
                n.xattrs.remove("user.overlay.opaque");
                (k, n)
            })
            .collect()
    }
}

enum Needs {
    Nothing,
    Root,
}

fn run(b: &Backend, needs: Needs, body: impl FnOnce(&mut Ctx)) {
    if (matches!(needs, Needs::Root) || b.open_needs_root) && !privileged(&b.test) {
        return;
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let case = b.test.rsplit("::").next().unwrap_or("case");
    let dir = b.scratch.join(format!(
        "hull-snap-{}-{case}-{}-{}",
        b.name,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap();
    let _scratch = Scratch(dir.clone());
    let mut ctx = Ctx {
        b,
        root: dir.join("store"),
        dir,
        store: None,
        views: AtomicUsize::new(0),
    };
    ctx.reopen();
    body(&mut ctx);
    ctx.close();
    let left = hull_sys::mount::mounts_under(&ctx.dir);
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

fn none() -> Labels {
    Labels::new()
}

fn lbl(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A directory tree as the suite compares it: path (`/` is the root) to
/// node.
pub type Tree = BTreeMap<String, Node>;

/// How much of each node [`tree`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Kind, content and permission bits.
    Content,
    /// Also owner, modification time, every xattr and hardlink groups.
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File {
        len: u64,
        hash: u64,
    },
    Symlink(String),
    Fifo,
    Socket,
    /// A character device 0/0.
    Whiteout,
    Device(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub entry: Entry,
    /// Permission bits, with setuid/setgid/sticky (0 for symlinks).
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    pub mtime: Option<(i64, i64)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in sorted order) of the same inode, if not this.
    pub link: Option<String>,
}

/// Read the tree under `dir` (never following symlinks).
pub fn tree(dir: &Path, detail: Detail) -> Tree {
    let mut out = Tree::new();
    let mut seen = HashMap::new();
    walk_tree(dir, String::new(), detail, &mut out, &mut seen);
    out
}

fn walk_tree(
    path: &Path,
    rel: String,
    detail: Detail,
    out: &mut Tree,
    seen: &mut HashMap<(u64, u64), String>,
) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ft = m.file_type();
    let entry = if ft.is_dir() {
        Entry::Dir
    } else if ft.is_symlink() {
        Entry::Symlink(fs::read_link(path).unwrap().to_string_lossy().into_owned())
    } else if ft.is_file() {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut h = DefaultHasher::new();
        h.write(&data);
        Entry::File {
            len: data.len() as u64,
            hash: h.finish(),
        }
    } else if ft.is_fifo() {
        Entry::Fifo
    } else if ft.is_socket() {
        Entry::Socket
    } else if ft.is_char_device() && m.rdev() == 0 {
        Entry::Whiteout
    } else {
        Entry::Device(m.rdev())
    };
    let full = detail == Detail::Full;
    let link = if full && !ft.is_dir() && m.nlink() > 1 {
        match seen.entry((m.dev(), m.ino())) {
            std::collections::hash_map::Entry::Occupied(e) => Some(e.get().clone()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(rel.clone());
                None
            }
        }
    } else {
        None
    };
    let node = Node {
        entry,
        mode: if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        },
        owner: full.then(|| (m.uid(), m.gid())),
        mtime: full.then(|| (m.mtime(), m.mtime_nsec())),
        xattrs: if full { xattrs(path) } else { BTreeMap::new() },
        link,
    };
    out.insert(
        if rel.is_empty() {
            "/".into()
        } else {
            rel.clone()
        },
        node,
    );
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let child = format!("{rel}/{}", n.to_string_lossy());
            walk_tree(&path.join(&n), child, detail, out, seen);
        }
    }
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(0) | Err(_) => return out,
        Ok(n) => n,
    };
    let mut list = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut list[..]).unwrap();
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let len = rustix::fs::lgetxattr_query(path, name).unwrap();
        let mut v = vec![0u8; len];
        if len > 0 {
            let got = rustix::fs::lgetxattr(path, name, &mut v[..]).unwrap();
            v.truncate(got);
        }
        out.insert(String::from_utf8_lossy(name).into_owned(), v);
    }
    out
}

/// Panic with the differences between two trees, if any.
pub fn assert_trees_eq(got: &Tree, want: &Tree, what: &str) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => diffs.push(format!("missing {k}: {w:?}")),
            Some(g) if g != w => diffs.push(format!("differs {k}:\n   got  {g:?}\n   want {w:?}")),
            _ => {}
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            diffs.push(format!("unexpected {k}: {g:?}"));
        }
    }
    diffs.truncate(30);
    panic!("{what}: trees differ:\n{}", diffs.join("\n"));
}

/// Every path under `root` with its type, without the metadata database's
/// files (which change on every open).
fn listing(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && name.starts_with("metadata.db") {
                continue;
            }
            let ft = e.file_type().unwrap();
            let p = format!("{rel}/{name}");
            out.insert(format!(
                "{p} ({})",
                if ft.is_dir() { "dir" } else { "file" }
            ));
            if ft.is_dir() {
                walk(&e.path(), &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, "", &mut out);
    out
}

/// Close the store and list its root ([`listing`]). A backend with a
/// `close` hook may keep its files on something `close` releases (a
/// loop-mounted image), so its root is listed just before closing; the
/// store is open (and recovered) then, which changes no files.
fn closed_listing(ctx: &mut Ctx) -> BTreeSet<String> {
    if ctx.b.close.is_some() {
        if ctx.store.is_none() {
            ctx.reopen();
        }
        let l = listing(&ctx.root);
        ctx.close();
        l
    } else {
        ctx.close();
        listing(&ctx.root)
    }
}

fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, SnapshotError>, what: &str) {
    match r {
        Err(SnapshotError::NotFound { .. }) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

fn assert_wrong_kind<T: std::fmt::Debug>(r: Result<T, SnapshotError>, what: &str) {
    match r {
        Err(e @ SnapshotError::WrongKind { .. }) => {
            assert_eq!(e.kind(), hull_api::ErrorKind::InvalidArgument, "{what}")
        }
        other => panic!("{what}: expected WrongKind, got {other:?}"),
    }
}

fn assert_exists<T: std::fmt::Debug>(r: Result<T, SnapshotError>, what: &str) {
    match r {
        Err(e @ SnapshotError::AlreadyExists { .. }) => {
            assert_eq!(e.kind(), hull_api::ErrorKind::Conflict, "{what}")
        }
        other => panic!("{what}: expected AlreadyExists, got {other:?}"),
    }
}

/// prepare, commit and view through a chain of three layers, with real
/// mounts and real contents; views are read-only; `mounts` gives the same
/// mounts again; a child's root directory looks like its parent's.
pub fn round_trip_three_levels(b: &Backend) {
    run(b, Needs::Root, |ctx| {
        let s = ctx.s();
        let flat = ctx.dir.join("flat");
        fs::create_dir(&flat).unwrap();
        set_mode(&flat, 0o755);
        let l1 = |d: &Path| {
            write(&d.join("foo"), b"foo\n");
            fs::create_dir_all(d.join("a/b/c")).unwrap();
            write(&d.join("a/b/c/deep"), b"deep");
            std::os::unix::fs::symlink("foo", d.join("link")).unwrap();
            set_mode(d, 0o750);
        };
        let l2 = |d: &Path| {
            write(&d.join("bar"), b"bar\n");
            write(&d.join("foo"), b"bar\n");
            fs::remove_dir_all(d.join("a/b")).unwrap();
            set_mode(&d.join("foo"), 0o600);
        };
        let l3 = |d: &Path| {
            write(&d.join("a/b/new"), b"recreated");
            fs::remove_file(d.join("link")).unwrap();
            write(&d.join("baz"), &vec![b'z'; 100_000]);
        };

        // Layer 1, from nothing.
        let m = s.prepare("l1", None, &lbl(&[("step", "1")])).unwrap();
        assert!(!m.is_empty());
        assert_eq!(s.mounts("l1").unwrap(), m);
        {
            let mnt = ctx.mount(&m, "l1");
            let root = fs::metadata(mnt.path()).unwrap();
            assert_eq!(root.mode() & 0o7777, 0o755, "a new snapshot's root is 0755");
            assert!(
                fs::read_dir(mnt.path()).unwrap().next().is_none(),
                "and empty"
            );
            l1(mnt.path());
        }
        l1(&flat);
        let t1 = tree(&flat, Detail::Content);
        let info = s.stat("l1").unwrap();
        assert_eq!((info.kind, info.parent.as_deref()), (Kind::Active, None));
        // Changes survive an unmount; `mounts` mounts it again.
        {
            let mnt = ctx.mount(&s.mounts("l1").unwrap(), "l1-again");
            assert_trees_eq(&tree(mnt.path(), Detail::Content), &t1, "l1 remounted");
        }
        let c1 = s.commit("c1", "l1", &none()).unwrap();
        assert_eq!(
            (c1.key.as_str(), c1.kind, c1.parent.as_deref()),
            ("c1", Kind::Committed, None)
        );
        assert_eq!(s.stat("c1").unwrap(), c1);
        assert_not_found(s.stat("l1"), "the active key is gone after commit");

        // Layer 2 starts as layer 1.
        let m = s.prepare("l2", Some("c1"), &none()).unwrap();
        {
            let mnt = ctx.mount(&m, "l2");
            assert_trees_eq(&tree(mnt.path(), Detail::Content), &t1, "l2 before changes");
            l2(mnt.path());
        }
        l2(&flat);
        let t2 = tree(&flat, Detail::Content);
        let info = s.stat("l2").unwrap();
        assert_eq!(
            (info.kind, info.parent.as_deref()),
            (Kind::Active, Some("c1"))
        );
        s.commit("c2", "l2", &none()).unwrap();
        assert_eq!(s.stat("c2").unwrap().parent.as_deref(), Some("c1"));

        // Layer 3.
        let m = s.prepare("l3", Some("c2"), &none()).unwrap();
        {
            let mnt = ctx.mount(&m, "l3");
            assert_trees_eq(&tree(mnt.path(), Detail::Content), &t2, "l3 before changes");
            l3(mnt.path());
        }
        l3(&flat);
        let t3 = tree(&flat, Detail::Content);
        s.commit("c3", "l3", &none()).unwrap();

        // Views of each level, read-only.
        assert_trees_eq(&ctx.view_tree("c1", Detail::Content), &t1, "view of c1");
        assert_trees_eq(&ctx.view_tree("c2", Detail::Content), &t2, "view of c2");
        let m = s.view("v3", Some("c3"), &none()).unwrap();
        assert_eq!(s.stat("v3").unwrap().kind, Kind::View);
        assert_eq!(s.mounts("v3").unwrap(), m);
        {
            let mnt = ctx.mount(&m, "v3");
            assert_trees_eq(&tree(mnt.path(), Detail::Content), &t3, "view of c3");
            assert!(
                fs::write(mnt.path().join("new"), b"x").is_err(),
                "a view is read-only"
            );
            assert!(
                fs::remove_file(mnt.path().join("foo")).is_err(),
                "a view is read-only"
            );
        }
        // A view of nothing is an empty read-only directory.
        let m = s.view("empty", None, &none()).unwrap();
        {
            let mnt = ctx.mount(&m, "empty");
            assert!(fs::read_dir(mnt.path()).unwrap().next().is_none());
            assert!(fs::write(mnt.path().join("new"), b"x").is_err());
        }

        for k in ["empty", "v3", "c3", "c2", "c1"] {
            s.remove(k).unwrap();
        }
        assert!(s.walk().unwrap().is_empty());
    });
}

/// Files and directories deleted in a layer stay deleted in everything
/// stacked on it, and a directory deleted then re-created hides the
/// parent's contents (overlay: whiteouts and opaque directories in lower
/// layers).
pub fn deletions_and_opaque_dirs(b: &Backend) {
    run(b, Needs::Root, |ctx| {
        let s = ctx.s();
        let flat = ctx.dir.join("flat");
        fs::create_dir(&flat).unwrap();
        set_mode(&flat, 0o755);
        let l1 = |d: &Path| {
            write(&d.join("a/f1"), b"1");
            write(&d.join("a/sub/x"), b"x");
            write(&d.join("b/keep"), b"k");
            write(&d.join("del"), b"d");
            write(&d.join("op/y"), b"y");
            write(&d.join("op/deeper/z"), b"z");
            write(&d.join("moved"), b"m");
        };
        let l2 = |d: &Path| {
            fs::remove_file(d.join("del")).unwrap();
            fs::remove_dir_all(d.join("op")).unwrap();
            fs::create_dir(d.join("op")).unwrap();
            write(&d.join("op/new"), b"new");
            write(&d.join("b/keep"), b"k2");
            fs::remove_dir_all(d.join("a/sub")).unwrap();
            fs::rename(d.join("moved"), d.join("b/moved")).unwrap();
        };
        let l3 = |d: &Path| {
            write(&d.join("op/another"), b"another");
            fs::remove_file(d.join("b/keep")).unwrap();
            fs::create_dir(d.join("del")).unwrap();
            write(&d.join("del/now-a-dir"), b"");
            fs::remove_dir_all(d.join("a")).unwrap();
        };
        let mut want = Vec::new();
        for (i, ops) in [&l1 as &dyn Fn(&Path), &l2, &l3].into_iter().enumerate() {
            let parent = (i > 0).then(|| format!("c{i}"));
            ctx.commit_layer(&format!("c{}", i + 1), parent.as_deref(), ops);
            ops(&flat);
            want.push(tree(&flat, Detail::Content));
        }
        for (i, t) in want.iter().enumerate() {
            let name = format!("c{}", i + 1);
            assert_trees_eq(
                &ctx.view_tree(&name, Detail::Content),
                t,
                &format!("view of {name}"),
            );
        }
        // Stacking `layers` gives the same trees; an active or view
        // snapshot has no layers.
        for (i, t) in want.iter().enumerate() {
            let name = format!("c{}", i + 1);
            assert_trees_eq(
                &ctx.layers_tree(&name, Detail::Content),
                t,
                &format!("layers of {name}"),
            );
        }
        let t3 = &want[2];
        assert!(!t3.contains_key("/op/y") && !t3.contains_key("/op/deeper"));
        assert!(!t3.contains_key("/a"));
        // An active snapshot on top sees the same, and can delete and
        // re-create names that exist only below it.
        ctx.in_active("top", Some("c3"), |d| {
            assert!(matches!(
                s.layers("top"),
                Err(SnapshotError::WrongKind { .. })
            ));
            assert_trees_eq(&tree(d, Detail::Content), t3, "active over c3");
            fs::remove_file(d.join("op/new")).unwrap();
            assert!(!d.join("op/new").exists());
            write(&d.join("op/new"), b"again");
            assert_eq!(fs::read(d.join("op/new")).unwrap(), b"again");
        });
        s.remove("top").unwrap();
    });
}

/// `commit_from_dir` turns a sandbox's upper directory (here: a real
/// overlay over a view, its upper on a tmpfs, as the runtime has it) into
/// a committed layer whose view equals what the sandbox saw: contents,
/// deletions, opaque directories, owners, modes, times, xattrs, hardlinks,
/// symlinks (not followed), FIFOs and sparse files. The upper directory is
/// not changed.
pub fn commit_from_dir_captures_upper(b: &Backend) {
    run(b, Needs::Root, |ctx| {
        let s = ctx.s();
        ctx.commit_layer("base", None, |d| {
            write(&d.join("etc/config"), b"v1");
            write(&d.join("etc/remove-me"), b"bye");
            write(&d.join("data/old/a"), b"a");
            write(&d.join("data/old/b"), b"b");
            write(&d.join("bin/tool"), b"#!/bin/sh\n");
            set_mode(&d.join("bin/tool"), 0o755);
            write(&d.join("shared"), b"s");
        });
        let lower = ctx.mount(
            &s.view("base-view", Some("base"), &none()).unwrap(),
            "lower",
        );
        let rw = ctx.mount(
            &[Mount {
                fstype: "tmpfs".into(),
                source: "tmpfs".into(),
                options: vec!["size=64m".into(), "mode=0755".into()],
            }],
            "rw",
        );
        let (upper, work) = (rw.path().join("upper"), rw.path().join("work"));
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        let sandbox = Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "userxattr".into(),
                format!("lowerdir={}", lower.path().display()),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", work.display()),
            ],
        };
        let expected = {
            let merged = ctx.mount(&[sandbox], "merged");
            let d = merged.path();
            write(&d.join("etc/config"), b"v2");
            fs::remove_file(d.join("etc/remove-me")).unwrap();
            fs::remove_dir_all(d.join("data/old")).unwrap();
            write(&d.join("data/old/fresh"), b"opaque now");
            write(&d.join("new/file"), b"hello");
            fs::hard_link(d.join("new/file"), d.join("new/file-link")).unwrap();
            fs::hard_link(d.join("shared"), d.join("new/shared-link")).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", d.join("new/abs-link")).unwrap();
            std::os::unix::fs::symlink("../missing", d.join("new/dangling")).unwrap();
            nix::unistd::mkfifo(
                &d.join("new/fifo"),
                nix::sys::stat::Mode::from_bits_truncate(0o640),
            )
            .unwrap();
            write(&d.join("owned"), b"by someone");
            std::os::unix::fs::chown(d.join("owned"), Some(1234), Some(5678)).unwrap();
            std::os::unix::fs::chown(d.join("bin/tool"), Some(0), Some(50)).unwrap();
            write(&d.join("suid"), b"x");
            set_mode(&d.join("suid"), 0o4755);
            rustix::fs::setxattr(
                d.join("new/file"),
                "user.hull.test",
                b"xattr value",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
            let sparse = fs::File::create(d.join("sparse")).unwrap();
            sparse.set_len(16 << 20).unwrap();
            std::os::unix::fs::FileExt::write_at(&sparse, b"end", (16 << 20) - 3).unwrap();
            drop(sparse);
            let mut deep = d.join("deep");
            for i in 0..40 {
                deep.push(format!("level-{i}"));
            }
            write(&deep.join("bottom"), b"bottom");
            let old = fs::File::options()
                .write(true)
                .open(d.join("new/file"))
                .unwrap();
            old.set_times(
                fs::FileTimes::new()
                    .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000)),
            )
            .unwrap();
            tree(d, Detail::Full)
        };
        // overlayfs (without `index=on`) shows a copied-up lower file and a
        // new hard link to it with different inode numbers; in the upper,
        // and so in the snapshot, they are one inode.
        let mut expected = expected;
        expected.get_mut("/shared").unwrap().link = Some("/new/shared-link".into());
        let upper_before = tree(&upper, Detail::Full);

        let info = s
            .commit_from_dir("snap", Some("base"), &upper, &lbl(&[("sandbox", "sb-1")]))
            .unwrap();
        assert_eq!(info.kind, Kind::Committed);
        assert_eq!(info.parent.as_deref(), Some("base"));
        assert_eq!(info.labels, lbl(&[("sandbox", "sb-1")]));
        assert_eq!(s.stat("snap").unwrap(), info);
        assert_trees_eq(
            &tree(&upper, Detail::Full),
            &upper_before,
            "the upper directory is unchanged",
        );
        drop(rw);
        drop(lower);
        s.remove("base-view").unwrap();

        assert_trees_eq(
            &ctx.view_tree("snap", Detail::Full),
            &expected,
            "view of the snapshot",
        );
        let u = s.usage("snap").unwrap();
        assert!(u.bytes < 8 << 20, "holes are kept: {u:?}");
        // Sandboxes are born from it.
        ctx.in_active("child", Some("snap"), |d| {
            let got = ctx.seen(tree(d, Detail::Content));
            let want: Tree = tree_content(&expected);
            assert_trees_eq(&got, &want, "active over the snapshot");
        });
        assert_exists(
            s.commit_from_dir("snap", Some("base"), &upper, &none()),
            "same name",
        );
        s.remove("child").unwrap();
        s.remove("snap").unwrap();
    });
}

/// A Full tree reduced to Content detail.
fn tree_content(t: &Tree) -> Tree {
    t.iter()
        .map(|(k, n)| {
            (
                k.clone(),
                Node {
                    entry: n.entry.clone(),
                    mode: n.mode,
                    owner: None,
                    mtime: None,
                    xattrs: BTreeMap::new(),
                    link: None,
                },
            )
        })
        .collect()
}

/// Only active snapshots can be committed; a commit can't take a used name
/// (but may reuse its own key); unknown keys are NotFound.
pub fn commit_requires_active(b: &Backend) {
    run(b, Needs::Nothing, |ctx| {
        let s = ctx.s();
        s.prepare("a", None, &none()).unwrap();
        s.commit("c", "a", &none()).unwrap();
        assert_wrong_kind(
            s.commit("c2", "c", &none()),
            "commit of a committed snapshot",
        );
        s.view("v", Some("c"), &none()).unwrap();
        assert_wrong_kind(s.commit("c2", "v", &none()), "commit of a view");
        assert_eq!(
            s.stat("v").unwrap().kind,
            Kind::View,
            "the view is untouched"
        );
        assert_not_found(s.commit("c2", "nope", &none()), "commit of an unknown key");
        s.prepare("b", Some("c"), &none()).unwrap();
        assert_exists(s.commit("c", "b", &none()), "commit onto a used name");
        assert_exists(s.commit("v", "b", &none()), "commit onto a view's key");
        assert_eq!(s.stat("b").unwrap().kind, Kind::Active, "b is still active");
        let same = s.commit("b", "b", &none()).unwrap();
        assert_eq!(
            (same.kind, same.parent.as_deref()),
            (Kind::Committed, Some("c"))
        );
        assert!(s.stat("c2").is_err());
    });
}

/// Parents must be committed and exist; keys are unique across kinds;
/// committed snapshots have no mounts; a refused create leaves nothing.
pub fn parents_must_be_committed(b: &Backend) {
    run(b, Needs::Nothing, |ctx| {
        let s = ctx.s();
        s.prepare("a", None, &none()).unwrap();
        s.view("v", None, &none()).unwrap();
        assert_wrong_kind(s.prepare("x", Some("a"), &none()), "active parent");
        assert_wrong_kind(s.view("x", Some("a"), &none()), "active parent of a view");
        assert_wrong_kind(s.prepare("x", Some("v"), &none()), "view parent");
        assert_not_found(s.prepare("x", Some("nope"), &none()), "unknown parent");
        assert_not_found(s.view("x", Some("nope"), &none()), "unknown parent");
        assert_not_found(s.stat("x"), "nothing half-made");
        assert_exists(s.prepare("a", None, &none()), "prepare of an existing key");
        assert_exists(s.view("a", None, &none()), "view of an existing key");
        assert_exists(s.prepare("v", None, &none()), "prepare of a view's key");
        s.commit("c", "a", &none()).unwrap();
        assert_exists(s.view("c", None, &none()), "view of a committed key");
        assert_wrong_kind(s.mounts("c"), "mounts of a committed snapshot");
        s.prepare("x", Some("c"), &none()).unwrap();
        s.view("y", Some("c"), &none()).unwrap();
        assert_eq!(s.walk().unwrap().len(), 4);
    });
}

/// `remove` is refused with `InUse` (naming the children) while others
/// stack on a snapshot, allowed once they are gone; keys are reusable.
pub fn remove_with_children_refused(b: &Backend) {
    run(b, Needs::Nothing, |ctx| {
        let s = ctx.s();
        s.prepare("t", None, &none()).unwrap();
        s.commit("c1", "t", &none()).unwrap();
        s.prepare("t", Some("c1"), &none()).unwrap();
        s.commit("c2", "t", &none()).unwrap();
        s.prepare("a", Some("c2"), &none()).unwrap();
        s.view("v", Some("c1"), &none()).unwrap();
        let in_use = |key: &str, want: &[&str]| match s.remove(key) {
            Err(e @ SnapshotError::InUse { .. }) => {
                assert_eq!(e.kind(), hull_api::ErrorKind::Conflict);
                let SnapshotError::InUse { children, .. } = e else {
                    unreachable!()
                };
                assert_eq!(children, want, "children of {key}");
            }
            other => panic!("remove {key}: expected InUse, got {other:?}"),
        };
        in_use("c1", &["c2", "v"]);
        in_use("c2", &["a"]);
        s.remove("a").unwrap();
        s.remove("c2").unwrap();
        in_use("c1", &["v"]);
        s.remove("v").unwrap();
        s.remove("c1").unwrap();
        assert_not_found(s.remove("c1"), "second remove");
        assert!(s.walk().unwrap().is_empty());
        s.prepare("c1", None, &none()).unwrap();
        s.commit("c2", "c1", &none()).unwrap();
    });
}

/// Labels: set on create, replaced by commit, updated (set and delete) on
/// any kind, validated, shown by stat and walk; timestamps.
pub fn labels_set_update_stat(b: &Backend) {
    run(b, Needs::Nothing, |ctx| {
        let s = ctx.s();
        let t0 = super::now();
        s.prepare("a", None, &lbl(&[("x", "1"), ("y", "2")]))
            .unwrap();
        let a = s.stat("a").unwrap();
        let t1 = super::now();
        assert_eq!(a.labels, lbl(&[("x", "1"), ("y", "2")]));
        assert!(a.created >= t0 && a.created <= t1, "{a:?}");
        assert_eq!(a.created, a.updated);

        let changes: LabelChanges = [
            ("x".to_string(), Some("one".to_string())),
            ("y".to_string(), None),
            ("z".to_string(), Some("3".to_string())),
            ("never-set".to_string(), None),
        ]
        .into();
        let a = s.update_labels("a", &changes).unwrap();
        assert_eq!(a.labels, lbl(&[("x", "one"), ("z", "3")]));
        assert_eq!(s.stat("a").unwrap(), a);

        let c = s.commit("c", "a", &lbl(&[("k", "v")])).unwrap();
        assert_eq!(c.labels, lbl(&[("k", "v")]), "commit's labels replace");
        s.view("v", Some("c"), &lbl(&[("role", "view")])).unwrap();
        let v = s
            .update_labels(
                "v",
                &[("role".to_string(), Some("still a view".to_string()))].into(),
            )
            .unwrap();
        assert_eq!(v.labels, lbl(&[("role", "still a view")]));
        let c = s
            .update_labels("c", &[("k".to_string(), None)].into())
            .unwrap();
        assert!(c.labels.is_empty());

        // Invalid labels are refused and change nothing.
        for bad in [
            lbl(&[("", "x")]),
            lbl(&[("bad\nname", "x")]),
            lbl(&[("big", "v".repeat(5000).as_str())]),
        ] {
            let e = s.prepare("bad", None, &bad).unwrap_err();
            assert_eq!(e.kind(), hull_api::ErrorKind::InvalidArgument, "{e}");
            assert_not_found(s.stat("bad"), "refused create");
            let changes: LabelChanges = bad.into_iter().map(|(k, v)| (k, Some(v))).collect();
            let e = s.update_labels("v", &changes).unwrap_err();
            assert_eq!(e.kind(), hull_api::ErrorKind::InvalidArgument, "{e}");
        }
        let too_many: Labels = (0..=super::MAX_LABELS)
            .map(|i| (format!("l{i}"), "v".to_string()))
            .collect();
        assert!(s.view("bad", Some("c"), &too_many).is_err());
        let too_many: LabelChanges = too_many.into_iter().map(|(k, v)| (k, Some(v))).collect();
        assert!(s.update_labels("v", &too_many).is_err());
        assert_eq!(
            s.stat("v").unwrap().labels,
            lbl(&[("role", "still a view")])
        );
        let walked: BTreeMap<String, Labels> = s
            .walk()
            .unwrap()
            .into_iter()
            .map(|i| (i.key, i.labels))
            .collect();
        assert_eq!(walked["v"], lbl(&[("role", "still a view")]));
        assert_not_found(
            s.update_labels("nope", &LabelChanges::new()),
            "labels of an unknown key",
        );
    });
}

/// `walk` lists exactly the live snapshots, by key, with kinds and parents.
pub fn walk_lists_live_snapshots(b: &Backend) {
    run(b, Needs::Nothing, |ctx| {
        let s = ctx.s();
        assert!(s.walk().unwrap().is_empty());
        s.prepare("c1-a", None, &none()).unwrap();
        s.commit("c1", "c1-a", &none()).unwrap();
        s.prepare("c2-a", Some("c1"), &none()).unwrap();
        s.commit("c2", "c2-a", &none()).unwrap();
        s.prepare("a1", Some("c2"), &none()).unwrap();
        s.prepare("a2", None, &none()).unwrap();
        s.view("v1", Some("c2"), &none()).unwrap();
        s.view("v2", None, &none()).unwrap();
        let summary = |s: &dyn Snapshotter| -> Vec<(String, Kind, Option<String>)> {
            s.walk()
                .unwrap()
                .into_iter()
                .map(|i| (i.key, i.kind, i.parent))
                .collect()
        };
        let e = |k: &str, kind, p: Option<&str>| (k.to_string(), kind, p.map(String::from));
        assert_eq!(
            summary(s),
            vec![
                e("a1", Kind::Active, Some("c2")),
                e("a2", Kind::Active, None),
                e("c1", Kind::Committed, None),
                e("c2", Kind::Committed, Some("c1")),
                e("v1", Kind::View, Some("c2")),
                e("v2", Kind::View, None),
            ]
        );
        s.remove("a1").unwrap();
        s.remove("v1").unwrap();
        s.commit("c3", "a2", &none()).unwrap();
        assert_eq!(
            summary(s),
            vec![
                e("c1", Kind::Committed, None),
                e("c2", Kind::Committed, Some("c1")),
                e("c3", Kind::Committed, None),
                e("v2", Kind::View, None),
            ]
        );
        for info in s.walk().unwrap() {
            assert_eq!(s.stat(&info.key).unwrap(), info);
        }
    });
}

/// `usage` measures a snapshot's own layer: it grows by at least 1 MiB and
/// one inode when a 1 MiB file is added, and a child doesn't count it.
pub fn usage_counts_own_layer(b: &Backend) {
    run(b, Needs::Root, |ctx| {
        let s = ctx.s();
        let m = s.prepare("u", None, &none()).unwrap();
        {
            let mnt = ctx.mount(&m, "u");
            write(&mnt.path().join("small"), b"small");
        }
        let before = s.usage("u").unwrap();
        assert!(before.inodes >= 2, "{before:?}");
        {
            let mnt = ctx.mount(&m, "u");
            let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
            let mut f = fs::File::create(mnt.path().join("big")).unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
        }
        let after = s.usage("u").unwrap();
        assert!(
            after.bytes >= before.bytes + (1 << 20),
            "{before:?} -> {after:?}"
        );
        assert_eq!(after.inodes, before.inodes + 1, "{before:?} -> {after:?}");
        s.commit("uc", "u", &none()).unwrap();
        let committed: Usage = s.usage("uc").unwrap();
        assert!(committed.bytes >= 1 << 20, "{committed:?}");
        s.prepare("child", Some("uc"), &none()).unwrap();
        let child = s.usage("child").unwrap();
        assert!(
            child.bytes < 1 << 20,
            "a child's usage excludes its parent: {child:?}"
        );
        s.view("v", Some("uc"), &none()).unwrap();
        assert!(s.usage("v").unwrap().bytes < 1 << 20);
    });
}

const BAD_KEYS: &[&str] = &[
    "",
    ".hidden",
    "..",
    "a/b",
    "../escape",
    "a b",
    "tab\t",
    "é",
    "nul\0",
];

/// Invalid keys are refused by every operation, as `InvalidKey`, and
/// create nothing.
pub fn invalid_keys(b: &Backend) {
    run(b, Needs::Nothing, |ctx| {
        let s = ctx.s();
        s.prepare("ok-a", None, &none()).unwrap();
        s.commit("ok", "ok-a", &none()).unwrap();
        let long = "k".repeat(256);
        let upper = ctx.dir.join("upper");
        fs::create_dir(&upper).unwrap();
        for bad in BAD_KEYS.iter().copied().chain([long.as_str()]) {
            let check = |r: Result<(), SnapshotError>, op: &str| match r {
                Err(e @ SnapshotError::InvalidKey { .. }) => {
                    assert_eq!(e.kind(), hull_api::ErrorKind::InvalidArgument)
                }
                other => panic!("{op} with key {bad:?}: expected InvalidKey, got {other:?}"),
            };
            check(s.prepare(bad, None, &none()).map(drop), "prepare");
            check(s.view(bad, None, &none()).map(drop), "view");
            check(
                s.prepare("fine", Some(bad), &none()).map(drop),
                "prepare with parent",
            );
            check(
                s.view("fine", Some(bad), &none()).map(drop),
                "view with parent",
            );
            check(s.commit(bad, "ok", &none()).map(drop), "commit name");
            check(s.commit("fine", bad, &none()).map(drop), "commit key");
            check(
                s.commit_from_dir(bad, None, &upper, &none()).map(drop),
                "commit_from_dir",
            );
            check(
                s.commit_from_dir("fine", Some(bad), &upper, &none())
                    .map(drop),
                "commit_from_dir parent",
            );
            check(s.stat(bad).map(drop), "stat");
            check(s.mounts(bad).map(drop), "mounts");
            check(s.usage(bad).map(drop), "usage");
            check(
                s.update_labels(bad, &LabelChanges::new()).map(drop),
                "update_labels",
            );
            check(s.remove(bad), "remove");
        }
        let keys: Vec<String> = s.walk().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(keys, vec!["ok"]);
        for good in ["a", "A-1", "x.y_z:0", "k".repeat(255).as_str()] {
            s.view(good, Some("ok"), &none()).unwrap();
        }
    });
}

/// Every operation on an unknown key is `NotFound`.
pub fn unknown_keys(b: &Backend) {
    run(b, Needs::Nothing, |ctx| {
        let s = ctx.s();
        let upper = ctx.dir.join("upper");
        fs::create_dir(&upper).unwrap();
        assert_not_found(s.stat("nope"), "stat");
        assert_not_found(s.mounts("nope"), "mounts");
        assert_not_found(s.usage("nope"), "usage");
        assert_not_found(
            s.update_labels("nope", &LabelChanges::new()),
            "update_labels",
        );
        assert_not_found(s.remove("nope"), "remove");
        assert_not_found(s.commit("x", "nope", &none()), "commit");
        assert_not_found(s.prepare("x", Some("nope"), &none()), "prepare parent");
        assert_not_found(s.view("x", Some("nope"), &none()), "view parent");
        assert_not_found(
            s.commit_from_dir("x", Some("nope"), &upper, &none()),
            "commit_from_dir parent",
        );
        let e = s.stat("nope").unwrap_err();
        assert_eq!(e.kind(), hull_api::ErrorKind::NotFound);
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(s.walk().unwrap().is_empty());
    });
}

/// The store persists across close and open; a second open while one is
/// open is refused with `Locked`.
pub fn reopen_and_lock(b: &Backend) {
    run(b, Needs::Nothing, |ctx| {
        ctx.s().prepare("a", None, &lbl(&[("k", "v")])).unwrap();
        ctx.s().commit("c", "a", &none()).unwrap();
        ctx.s()
            .prepare("a", Some("c"), &lbl(&[("k", "v")]))
            .unwrap();
        let before = ctx.s().walk().unwrap();
        match (ctx.b.open)(&ctx.root) {
            Err(e @ SnapshotError::Locked { .. }) => {
                assert_eq!(e.kind(), hull_api::ErrorKind::Conflict)
            }
            Err(e) => panic!("second open: expected Locked, got {e}"),
            Ok(_) => panic!("second open: expected Locked, got a store"),
        }
        ctx.reopen();
        assert_eq!(ctx.s().walk().unwrap(), before);
        ctx.s().remove("a").unwrap();
        ctx.s().remove("c").unwrap();
    });
}

/// Environment of a child process: what to do, and the scratch directory.
const CHILD_ENV: &str = "HULL_SNAPSHOT_SUITE_CHILD";
const DIR_ENV: &str = "HULL_SNAPSHOT_SUITE_DIR";

/// In a child process: open the store and run `op` until killed.
fn child(b: &Backend, op: &str) {
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("the scratch dir"));
    let s = (b.open)(&dir.join("store")).expect("child: opening the store");
    let upper = dir.join("upper");
    let n = none();
    match op {
        "prepare" => drop(s.prepare("x", Some("base"), &n).unwrap()),
        "view" => drop(s.view("x", Some("base"), &n).unwrap()),
        "commit" => drop(s.commit("x-committed", "x-active", &n).unwrap()),
        "commit_from_dir" => drop(s.commit_from_dir("x", Some("base"), &upper, &n).unwrap()),
        "remove" => s.remove("x").unwrap(),
        "churn" => {
            let round = std::env::var("HULL_SNAPSHOT_SUITE_ROUND").unwrap();
            println!("churning");
            std::io::stdout().flush().unwrap();
            for i in 0.. {
                let k = format!("{round}-{i}");
                let (a, c, v, u) = (
                    format!("a-{k}"),
                    format!("c-{k}"),
                    format!("v-{k}"),
                    format!("u-{k}"),
                );
                s.prepare(&a, Some("base"), &n).unwrap();
                s.commit(&c, &a, &n).unwrap();
                s.view(&v, Some(&c), &n).unwrap();
                s.remove(&v).unwrap();
                s.commit_from_dir(&u, Some("base"), &upper, &n).unwrap();
                s.update_labels(&u, &[("round".to_string(), Some(round.clone()))].into())
                    .unwrap();
                if i % 2 == 1 {
                    s.remove(&u).unwrap();
                    s.remove(&c).unwrap();
                }
            }
        }
        other => panic!("unknown child op {other:?}"),
    }
    panic!(
        "child {op}: not killed at crash point {:?} (does the backend call crash::point there?)",
        std::env::var(crash::ENV).ok()
    );
}

fn spawn_child(ctx: &Ctx, op: &str, point: Option<&str>, round: usize) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        ctx.b.test.as_str(),
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, op)
    .env(DIR_ENV, &ctx.dir)
    .env("HULL_SNAPSHOT_SUITE_ROUND", round.to_string())
    .env_remove(crash::ENV)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(p) = point {
        cmd.env(crash::ENV, p);
    }
    cmd.spawn().unwrap()
}

/// Wait at most `limit` for `child`, killing it then.
fn wait_child(mut child: std::process::Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

fn assert_killed(out: &Output, what: &str) {
    assert_eq!(
        out.status.signal(),
        Some(nix::sys::signal::Signal::SIGKILL as i32),
        "{what}: the child was not killed at its crash point ({})\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Write the upper directory `commit_from_dir` children copy.
fn make_upper(dir: &Path, files: usize, size: usize) {
    for i in 0..files {
        write(
            &dir.join(format!("upper/d{}/f{i}", i % 4)),
            &vec![(i % 256) as u8; size],
        );
    }
}

/// Kill a child process at every crash point of every operation, reopen,
/// and check: no half-made snapshot, the operation either happened or
/// didn't, and the root holds exactly the files it would hold without the
/// crash.
pub fn crash_recovery(b: &Backend) {
    if let Ok(op) = std::env::var(CHILD_ENV) {
        return child(b, &op);
    }
    run(b, Needs::Root, |ctx| {
        ctx.commit_layer("base", None, |d| write(&d.join("f"), b"base"));
        make_upper(&ctx.dir, 8, 4096);
        let base_tree = ctx.view_tree("base", Detail::Content);
        let clean = closed_listing(ctx);
        let killed = |ctx: &mut Ctx, op: &str, point: &str| {
            ctx.close();
            let out = wait_child(
                spawn_child(ctx, op, Some(point), 0),
                Duration::from_secs(60),
            );
            assert_killed(&out, &format!("{op} at {point}"));
            ctx.reopen();
        };

        for (op, point) in [
            ("prepare", crash::STAGED),
            ("prepare", crash::PLACED),
            ("view", crash::STAGED),
            ("view", crash::PLACED),
            ("commit_from_dir", crash::STAGED),
            ("commit_from_dir", crash::PLACED),
        ] {
            killed(ctx, op, point);
            assert_not_found(ctx.s().stat("x"), &format!("{op} killed at {point}"));
            assert_eq!(ctx.s().walk().unwrap().len(), 1, "{op} at {point}");
            assert_eq!(
                closed_listing(ctx),
                clean,
                "{op} killed at {point} left files behind"
            );
        }

        // commit, killed before and after its transaction commits.
        ctx.reopen();
        ctx.in_active("x-active", Some("base"), |d| {
            write(&d.join("mine"), b"mine")
        });
        let with_active = closed_listing(ctx);
        killed(ctx, "commit", crash::COMMITTING);
        assert_eq!(ctx.s().stat("x-active").unwrap().kind, Kind::Active);
        assert_not_found(
            ctx.s().stat("x-committed"),
            "commit killed before its transaction",
        );
        {
            let mnt = ctx.mount(&ctx.s().mounts("x-active").unwrap(), "x-active");
            assert_eq!(fs::read(mnt.path().join("mine")).unwrap(), b"mine");
        }
        assert_eq!(
            closed_listing(ctx),
            with_active,
            "commit killed before its transaction"
        );
        killed(ctx, "commit", crash::COMMITTED);
        assert_not_found(
            ctx.s().stat("x-active"),
            "commit killed after its transaction",
        );
        assert_eq!(ctx.s().stat("x-committed").unwrap().kind, Kind::Committed);
        let got = ctx.view_tree("x-committed", Detail::Content);
        assert_eq!(
            got.get("/mine").map(|n| &n.entry),
            Some(&Entry::File {
                len: 4,
                hash: hash(b"mine")
            })
        );
        assert_eq!(got.get("/f"), base_tree.get("/f"));
        ctx.s().remove("x-committed").unwrap();
        assert_eq!(
            closed_listing(ctx),
            clean,
            "after removing the commit killed half-way"
        );

        // remove, killed after its transaction.
        ctx.reopen();
        ctx.s().prepare("x", Some("base"), &none()).unwrap();
        killed(ctx, "remove", crash::REMOVED);
        assert_not_found(ctx.s().stat("x"), "remove killed after its transaction");
        assert_eq!(
            closed_listing(ctx),
            clean,
            "remove killed half-way left files behind"
        );
        ctx.reopen();
    });
}

fn hash(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(data);
    h.finish()
}

/// Kill a child process busy with every kind of operation at random
/// instants, several times; after each reopen every snapshot is whole
/// (views show complete contents), and removing them all leaves the root
/// as it was.
pub fn killed_at_random(b: &Backend) {
    if let Ok(op) = std::env::var(CHILD_ENV) {
        return child(b, &op);
    }
    run(b, Needs::Root, |ctx| {
        ctx.commit_layer("base", None, |d| write(&d.join("f"), b"base"));
        make_upper(&ctx.dir, 64, 32 * 1024);
        ctx.s()
            .commit_from_dir("reference", Some("base"), &ctx.dir.join("upper"), &none())
            .unwrap();
        let reference = ctx.view_tree("reference", Detail::Content);
        let base = ctx.view_tree("base", Detail::Content);
        ctx.s().remove("reference").unwrap();
        let clean = closed_listing(ctx);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        let mut total = 0;
        for round in 0..6 {
            let mut child = spawn_child(ctx, "churn", None, round);
            // Wait until the child has opened the store and started.
            let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            let started = stdout
                .lines()
                .any(|l| l.is_ok_and(|l| l.contains("churning")));
            assert!(
                started,
                "churn child {round} exited before starting: {:?}",
                wait_child(child, Duration::ZERO)
            );
            let delay = 5 + (seed.wrapping_mul(round as u64 + 7) >> 3) % 100;
            std::thread::sleep(Duration::from_millis(delay));
            let out = wait_child(child, Duration::ZERO);
            assert_killed(&out, &format!("churn round {round}"));
            ctx.reopen();
            let all = ctx.s().walk().unwrap();
            eprintln!(
                "round {round}: killed after {delay} ms; {} snapshots",
                all.len()
            );
            total += all.len();
            for info in &all {
                match (info.kind, info.key.as_bytes()[0]) {
                    (Kind::Committed, b'u') => assert_trees_eq(
                        &ctx.view_tree(&info.key, Detail::Content),
                        &reference,
                        &format!("{} after a kill", info.key),
                    ),
                    (Kind::Committed, b'c') => assert_trees_eq(
                        &ctx.view_tree(&info.key, Detail::Content),
                        &base,
                        &format!("{} after a kill", info.key),
                    ),
                    (Kind::Committed, _) => assert_eq!(info.key, "base"),
                    (Kind::Active | Kind::View, _) => drop(ctx.s().mounts(&info.key).unwrap()),
                }
            }
            ctx.close();
        }
        assert!(
            total > 6,
            "the children made hardly any snapshots ({total})"
        );
        ctx.reopen();
        loop {
            let all = ctx.s().walk().unwrap();
            let parents: BTreeSet<String> = all.iter().filter_map(|i| i.parent.clone()).collect();
            let leaves: Vec<_> = all
                .iter()
                .filter(|i| i.key != "base" && !parents.contains(&i.key))
                .collect();
            if leaves.is_empty() {
                break;
            }
            for l in leaves {
                ctx.s().remove(&l.key).unwrap();
            }
        }
        assert_eq!(
            closed_listing(ctx),
            clean,
            "files left after removing everything"
        );
        ctx.reopen();
    });
}

/// Eight threads prepare, commit, view and remove at once, and race for the
/// same keys: exactly one wins each race, and walk shows exactly the
/// survivors.
pub fn concurrent_operations(b: &Backend) {
    run(b, Needs::Nothing, |ctx| {
        let s = ctx.s();
        s.prepare("base-a", None, &none()).unwrap();
        s.commit("base", "base-a", &none()).unwrap();
        const THREADS: usize = 8;
        const ROUNDS: usize = 10;
        let barrier = Barrier::new(THREADS);
        let prepared = AtomicUsize::new(0);
        let committed = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (barrier, prepared, committed) = (&barrier, &prepared, &committed);
                scope.spawn(move || {
                    barrier.wait();
                    match s.prepare("race", Some("base"), &none()) {
                        Ok(_) => drop(prepared.fetch_add(1, Ordering::SeqCst)),
                        Err(SnapshotError::AlreadyExists { .. }) => {}
                        Err(e) => panic!("racing prepare: {e}"),
                    }
                    barrier.wait();
                    match s.commit("race-c", "race", &none()) {
                        Ok(_) => drop(committed.fetch_add(1, Ordering::SeqCst)),
                        Err(
                            SnapshotError::NotFound { .. } | SnapshotError::AlreadyExists { .. },
                        ) => {}
                        Err(e) => panic!("racing commit: {e}"),
                    }
                    for i in 0..ROUNDS {
                        let (a, c, v) = (
                            format!("t{t}-a{i}"),
                            format!("t{t}-c{i}"),
                            format!("t{t}-v{i}"),
                        );
                        s.prepare(
                            &a,
                            Some("base"),
                            &lbl(&[("thread", t.to_string().as_str())]),
                        )
                        .unwrap();
                        s.commit(&c, &a, &none()).unwrap();
                        s.view(&v, Some(&c), &none()).unwrap();
                        assert_eq!(s.stat(&v).unwrap().parent.as_deref(), Some(c.as_str()));
                        if i % 2 == 0 {
                            s.remove(&v).unwrap();
                            s.remove(&c).unwrap();
                        }
                        assert!(s.walk().unwrap().iter().any(|i| i.key == "base"));
                    }
                });
            }
        });
        assert_eq!(
            prepared.load(Ordering::SeqCst),
            1,
            "one prepare wins the race"
        );
        assert_eq!(
            committed.load(Ordering::SeqCst),
            1,
            "one commit wins the race"
        );
        let mut want = BTreeSet::from(["base".to_string(), "race-c".to_string()]);
        for t in 0..THREADS {
            for i in (1..ROUNDS).step_by(2) {
                want.insert(format!("t{t}-c{i}"));
                want.insert(format!("t{t}-v{i}"));
            }
        }
        let got: BTreeSet<String> = s.walk().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(got, want);
        ctx.close();
        ctx.reopen();
        let again: BTreeSet<String> = ctx.s().walk().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(again, want, "the same after reopening");
    });
}

/// A chain of 130 layers (well past what fits a page of `mount(2)` options
/// for the overlay backend) mounts, and its view is the sum of its layers.
pub fn deep_chain(b: &Backend) {
    run(b, Needs::Root, |ctx| {
        const LAYERS: usize = 130;
        let mut parent: Option<String> = None;
        for i in 0..LAYERS {
            let name = format!("layer-{i}");
            ctx.commit_layer(&name, parent.as_deref(), |d| {
                write(&d.join(format!("files/{i}")), i.to_string().as_bytes());
                write(&d.join("top"), i.to_string().as_bytes());
                if i == 100 {
                    fs::remove_file(d.join("files/50")).unwrap();
                    fs::remove_dir_all(d.join("only-early")).unwrap();
                }
                if i < 10 {
                    write(&d.join(format!("only-early/{i}")), b"early");
                }
            });
            parent = Some(name);
        }
        let t = ctx.view_tree(parent.as_deref().unwrap(), Detail::Content);
        let content = |p: &str| match &t.get(p).unwrap_or_else(|| panic!("{p} missing")).entry {
            Entry::File { hash, .. } => *hash,
            e => panic!("{p}: {e:?}"),
        };
        assert_eq!(content("/top"), hash(b"129"));
        for i in 0..LAYERS {
            let p = format!("/files/{i}");
            if i == 50 {
                assert!(!t.contains_key(&p), "deleted in layer 100");
            } else {
                assert_eq!(content(&p), hash(i.to_string().as_bytes()), "{p}");
            }
        }
        assert!(!t.contains_key("/only-early"));
        // Writable on top of the whole chain too.
        ctx.in_active("tip", parent.as_deref(), |d| {
            assert_eq!(fs::read(d.join("top")).unwrap(), b"129");
            write(&d.join("top"), b"tip");
        });
    });
}
