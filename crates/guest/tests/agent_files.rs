//! The agent's file operations, driven with raw protocol frames over a unix
//! socket against a temp directory as the sandbox root.
//!
//! Every fixture writes a marker file *outside* the root (next to it) and,
//! when it is dropped, asserts that the marker is unchanged and that nothing
//! else appeared outside the root: whatever a test tries, the agent must
//! never read, write or create anything there.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hull_guest::agent::{AgentConfig, serve};
use hull_proto::{
    CHUNK, FileStat, FileType, Frame, GuestError, GuestErrorKind, Op, Request, Response,
    read_frame_sync, write_frame_sync,
};

const SECRET: &[u8] = b"host secret: never readable through the agent\n";
const MARKER: &str = "OUTSIDE-MARKER";

struct Fx {
    /// The temp parent: holds `root`, the marker and the socket.
    base: PathBuf,
    root: PathBuf,
    sock: PathBuf,
}

fn fx() -> Fx {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir().join(format!(
        "hull-agent-files-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(base.join(MARKER), SECRET).unwrap();
    let sock = base.join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let config = AgentConfig {
        root: root.clone(),
        base_env: vec![],
        default_user: None,
        default_cwd: None,
        pid1: false,
    };
    // The agent serves until the test process ends.
    std::thread::spawn(move || {
        let _ = serve(listener, config);
    });
    Fx { base, root, sock }
}

impl Drop for Fx {
    fn drop(&mut self) {
        let check = || {
            let marker = self.base.join(MARKER);
            assert_eq!(std::fs::read(&marker).unwrap(), SECRET, "marker changed");
            assert_eq!(std::fs::symlink_metadata(&marker).unwrap().nlink(), 1);
            let names: BTreeSet<String> = std::fs::read_dir(&self.base)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let expected: BTreeSet<String> = [MARKER, "root", "agent.sock"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            assert_eq!(names, expected, "something appeared outside the root");
        };
        let panicking = std::thread::panicking();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
        let _ = std::fs::remove_dir_all(&self.base);
        if let Err(e) = result
            && !panicking
        {
            std::panic::resume_unwind(e);
        }
    }
}

impl Fx {
    /// The marker's absolute host path (a path a plain `open` would reach).
    fn marker(&self) -> PathBuf {
        self.base.join(MARKER)
    }

    fn host(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn put_file(&self, p: &str, data: &[u8]) {
        let h = self.host(p);
        std::fs::create_dir_all(h.parent().unwrap()).unwrap();
        std::fs::write(h, data).unwrap();
    }

    fn open(&self, op: Op) -> UnixStream {
        let mut s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write_frame_sync(&mut s, &Frame::control(&Request::new(op)).unwrap()).unwrap();
        s
    }

    fn call(&self, op: Op) -> Response {
        let mut s = self.open(op);
        response(&mut s)
    }

    fn ok(&self, op: Op) -> Result<(), GuestError> {
        match self.call(op) {
            Response::Ok => Ok(()),
            Response::Error(e) => Err(e),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn stat(&self, path: &str) -> Result<FileStat, GuestError> {
        match self.call(Op::Stat { path: path.into() }) {
            Response::Stat(st) => Ok(st),
            Response::Error(e) => Err(e),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn list(&self, path: &str, depth: u32) -> Result<(Vec<FileStat>, bool), GuestError> {
        match self.call(Op::List {
            path: path.into(),
            depth,
        }) {
            Response::Entries { entries, truncated } => Ok((entries, truncated)),
            Response::Error(e) => Err(e),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn list_paths(&self, path: &str, depth: u32) -> Vec<String> {
        let (entries, truncated) = self.list(path, depth).unwrap();
        assert!(!truncated);
        entries.into_iter().map(|e| e.path).collect()
    }

    fn mkdir(&self, path: &str, parents: bool) -> Result<(), GuestError> {
        self.ok(Op::Mkdir {
            path: path.into(),
            parents,
            mode: None,
        })
    }

    fn remove(&self, path: &str, recursive: bool) -> Result<(), GuestError> {
        self.ok(Op::Remove {
            path: path.into(),
            recursive,
        })
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), GuestError> {
        self.ok(Op::Rename {
            from: from.into(),
            to: to.into(),
        })
    }

    fn read_range(
        &self,
        path: &str,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<(FileStat, Vec<u8>), GuestError> {
        let mut s = self.open(Op::Read {
            path: path.into(),
            offset,
            limit,
        });
        let st = match response(&mut s) {
            Response::Stat(st) => st,
            Response::Error(e) => return Err(e),
            other => panic!("unexpected answer {other:?}"),
        };
        let mut data = Vec::new();
        loop {
            match read_frame_sync(&mut s).unwrap() {
                Frame::Data(d) => {
                    assert!(d.len() <= CHUNK);
                    data.extend_from_slice(&d);
                }
                Frame::Eof => return Ok((st, data)),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, GuestError> {
        self.read_range(path, 0, None).map(|(_, d)| d)
    }

    fn write_with(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
        parents: bool,
        max_bytes: Option<u64>,
    ) -> Result<FileStat, GuestError> {
        let mut s = self.open(Op::Write {
            path: path.into(),
            mode,
            parents,
            max_bytes,
        });
        match upload(&mut s, data) {
            Response::Stat(st) => Ok(st),
            Response::Error(e) => Err(e),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<FileStat, GuestError> {
        self.write_with(path, data, None, false, None)
    }

    fn tar_get(&self, path: &str) -> Result<Vec<u8>, GuestError> {
        let mut s = self.open(Op::TarGet { path: path.into() });
        let mut data = Vec::new();
        loop {
            match read_frame_sync(&mut s).unwrap() {
                Frame::Data(d) => data.extend_from_slice(&d),
                Frame::Eof => return Ok(data),
                f @ Frame::Control(_) => match f.parse::<Response>().unwrap() {
                    Response::Error(e) => return Err(e),
                    other => panic!("unexpected answer {other:?}"),
                },
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    fn tar_put(&self, path: &str, archive: &[u8], max: Option<u64>) -> Result<(), GuestError> {
        let mut s = self.open(Op::TarPut {
            path: path.into(),
            max_bytes: max,
        });
        match upload(&mut s, archive) {
            Response::Ok => Ok(()),
            Response::Error(e) => Err(e),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// Names in a host directory of the root.
    fn names(&self, p: &str) -> BTreeSet<String> {
        std::fs::read_dir(self.host(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

fn response(s: &mut UnixStream) -> Response {
    read_frame_sync(s).unwrap().parse().unwrap()
}

/// Send `data` as data frames and an EOF, then read the answer. Send errors
/// are ignored: the agent may refuse part-way and close.
fn upload(s: &mut UnixStream, data: &[u8]) -> Response {
    for c in data.chunks(CHUNK) {
        if write_frame_sync(s, &Frame::Data(c.to_vec())).is_err() {
            break;
        }
    }
    let _ = write_frame_sync(s, &Frame::Eof);
    response(s)
}

#[track_caller]
fn assert_kind<T: std::fmt::Debug>(r: Result<T, GuestError>, kind: GuestErrorKind) -> GuestError {
    match r {
        Err(e) => {
            assert_eq!(e.kind, kind, "{e:?}");
            e
        }
        Ok(v) => panic!("expected a {kind:?} error, got {v:?}"),
    }
}

/// Wait until `cond` holds (the agent works on its own thread).
#[track_caller]
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

use hull_testkit::privileged;

// ---- tar helpers ----

/// Append an entry with the raw `name` (and link name), bypassing the tar
/// crate's own checks so that hostile archives can be built.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &[u8],
    link: Option<&[u8]>,
    data: &[u8],
    mode: u32,
) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    raw_entry(
        b,
        tar::EntryType::Regular,
        name.as_bytes(),
        None,
        data,
        0o644,
    );
}

fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, target: &str) {
    raw_entry(
        b,
        kind,
        name.as_bytes(),
        Some(target.as_bytes()),
        b"",
        0o777,
    );
}

/// (path, kind, link target or content) of every entry of an archive.
fn entries(data: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
    let mut a = tar::Archive::new(data);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let kind = e.header().entry_type();
            let body = match e.link_name().unwrap() {
                Some(l) => l.as_os_str().as_bytes().to_vec(),
                None => {
                    let mut v = Vec::new();
                    e.read_to_end(&mut v).unwrap();
                    v
                }
            };
            (path, kind, body)
        })
        .collect()
}

// ---- read ----

#[test]
fn read_whole_ranges_and_large_files() {
    let f = fx();
    f.put_file("/a.txt", b"hello world");
    let (st, data) = f.read_range("/a.txt", 0, None).unwrap();
    assert_eq!(data, b"hello world");
    assert_eq!(st.kind, FileType::File);
    assert_eq!(st.size, 11);
    assert_eq!(st.path, "/a.txt");
    assert_eq!(f.read_range("/a.txt", 6, None).unwrap().1, b"world");
    assert_eq!(f.read_range("/a.txt", 2, Some(3)).unwrap().1, b"llo");
    assert_eq!(f.read_range("/a.txt", 0, Some(0)).unwrap().1, b"");
    assert_eq!(f.read_range("/a.txt", 100, None).unwrap().1, b"");
    // Several chunks.
    let big: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| (i % 251) as u8).collect();
    f.put_file("/big", &big);
    assert_eq!(f.read("/big").unwrap(), big);
    assert_eq!(
        f.read_range("/big", CHUNK as u64 - 1, Some(CHUNK as u64 + 2))
            .unwrap()
            .1,
        &big[CHUNK - 1..2 * CHUNK + 1]
    );
    // A symlink inside the root is followed, inside the root.
    symlink("a.txt", f.host("/rel-link")).unwrap();
    symlink("/a.txt", f.host("/abs-link")).unwrap();
    assert_eq!(f.read("/rel-link").unwrap(), b"hello world");
    assert_eq!(f.read("/abs-link").unwrap(), b"hello world");
}

#[test]
fn read_refuses_dirs_specials_and_missing_files() {
    let f = fx();
    std::fs::create_dir(f.host("/d")).unwrap();
    let e = assert_kind(f.read("/d"), GuestErrorKind::InvalidArgument);
    assert!(e.message.contains("is a directory"), "{e:?}");
    assert_kind(f.read("/"), GuestErrorKind::InvalidArgument);
    assert_kind(f.read("/missing"), GuestErrorKind::NotFound);
    assert_kind(f.read("/d/missing/x"), GuestErrorKind::NotFound);
    // A FIFO must neither hang the agent nor be read.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        f.host("/fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    assert_kind(f.read("/fifo"), GuestErrorKind::InvalidArgument);
}

#[test]
fn hostile_paths_are_refused_in_every_op() {
    let f = fx();
    let long = format!("/{}", "a/".repeat(3000));
    for bad in ["", "relative", "a/b", "./x", "/x\0y", long.as_str()] {
        assert_kind(f.read(bad), GuestErrorKind::InvalidArgument);
        assert_kind(f.write(bad, b"x"), GuestErrorKind::InvalidArgument);
        assert_kind(f.stat(bad), GuestErrorKind::InvalidArgument);
        assert_kind(f.list(bad, 1), GuestErrorKind::InvalidArgument);
        assert_kind(f.mkdir(bad, true), GuestErrorKind::InvalidArgument);
        assert_kind(f.remove(bad, true), GuestErrorKind::InvalidArgument);
        assert_kind(f.rename(bad, "/ok"), GuestErrorKind::InvalidArgument);
        assert_kind(f.rename("/ok", bad), GuestErrorKind::InvalidArgument);
        assert_kind(f.tar_get(bad), GuestErrorKind::InvalidArgument);
        assert_kind(f.tar_put(bad, &[], None), GuestErrorKind::InvalidArgument);
    }
    // Operations on a final component need one that is not `.`, `..` or empty.
    for bad in ["/", "/..", "/d/.", "/d/.."] {
        assert_kind(f.write(bad, b"x"), GuestErrorKind::InvalidArgument);
        assert_kind(f.remove(bad, true), GuestErrorKind::InvalidArgument);
        assert_kind(f.rename(bad, "/x"), GuestErrorKind::InvalidArgument);
    }
    assert!(f.names("/").is_empty());
}

#[test]
fn dotdot_and_symlink_escapes_stay_in_the_root() {
    let f = fx();
    let base = f.base.to_str().unwrap().to_string();
    let marker = f.marker().to_str().unwrap().to_string();
    symlink("/", f.host("/escape")).unwrap();
    symlink("../../../../../../../..", f.host("/up")).unwrap();
    symlink(&base, f.host("/hostdir")).unwrap();
    symlink(&marker, f.host("/hostfile")).unwrap();
    for p in [
        format!("/../{MARKER}"),
        format!("/../../../../..{marker}"),
        format!("/escape/../{MARKER}"),
        format!("/escape{marker}"),
        format!("/up/{MARKER}"),
        format!("/up{marker}"),
        format!("/hostdir/{MARKER}"),
        format!("/up/up/escape/..{marker}"),
    ] {
        assert_kind(f.read(&p), GuestErrorKind::NotFound);
        assert_kind(f.stat(&p), GuestErrorKind::NotFound);
        assert_kind(f.tar_get(&p), GuestErrorKind::NotFound);
    }
    // A final symlink to the host marker: followed in the root when read,
    // reported (and archived) as the link it is otherwise.
    assert_kind(f.read("/hostfile"), GuestErrorKind::NotFound);
    let st = f.stat("/hostfile").unwrap();
    assert_eq!(st.kind, FileType::Symlink);
    assert_eq!(st.link_target.as_deref(), Some(marker.as_str()));
    let got = entries(&f.tar_get("/hostfile").unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].1, got[0].2.as_slice()),
        (tar::EntryType::Symlink, marker.as_bytes())
    );
    // `..` and absolute symlinks land in the root itself.
    f.put_file(&format!("/{MARKER}"), b"inside");
    assert_eq!(f.read(&format!("/../{MARKER}")).unwrap(), b"inside");
    assert_eq!(f.read(&format!("/up/{MARKER}")).unwrap(), b"inside");
    assert_eq!(
        f.read(&format!("/escape/escape/{MARKER}")).unwrap(),
        b"inside"
    );
    // Listing through an escaping symlink lists the root, not the host.
    let names = f.list_paths("/up", 1);
    assert!(names.contains(&"/up/escape".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("agent.sock")), "{names:?}");
    let names = f.list_paths("/escape/..", 1);
    assert!(
        names.contains(&"/escape/../hostdir".to_string()),
        "{names:?}"
    );
}

#[test]
fn proc_magic_links_are_refused() {
    if !privileged("proc_magic_links_are_refused") {
        return;
    }
    let f = fx();
    let proc_dir = f.host("/proc");
    std::fs::create_dir(&proc_dir).unwrap();
    rustix::mount::mount_bind("/proc", &proc_dir).unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH).unwrap();
        }
    }
    let _guard = Unmount(proc_dir);
    let marker = f.marker().to_str().unwrap().to_string();
    // /proc/self/root is the agent's real root: a magic link out of the sandbox.
    for p in [
        format!("/proc/self/root{marker}"),
        format!("/proc/thread-self/root{marker}"),
        format!("/proc/self/cwd/{MARKER}"),
    ] {
        assert_kind(f.read(&p), GuestErrorKind::InvalidArgument);
        assert_kind(f.write(&p, b"pwned"), GuestErrorKind::InvalidArgument);
        assert_kind(f.tar_get(&p), GuestErrorKind::InvalidArgument);
    }
    // Another process's root: refused as a magic link, or before that by
    // the ptrace access check, depending on who that process is.
    let p = format!("/proc/1/root{marker}");
    for r in [f.read(&p).map(|_| ()), f.write(&p, b"pwned").map(|_| ())] {
        let e = r.unwrap_err();
        assert!(
            matches!(
                e.kind,
                GuestErrorKind::InvalidArgument | GuestErrorKind::PermissionDenied
            ),
            "{e:?}"
        );
    }
    assert_kind(
        f.list("/proc/self/root/", 1),
        GuestErrorKind::InvalidArgument,
    );
    assert_kind(f.list("/proc/self/cwd", 1), GuestErrorKind::InvalidArgument);
    assert_kind(
        f.tar_put(
            "/proc/self/root/tmp",
            &archive(|b| file(b, "x", b"x")),
            None,
        ),
        GuestErrorKind::InvalidArgument,
    );
    // Stat reports the link itself, harmlessly.
    let st = f.stat("/proc/self/root").unwrap();
    assert_eq!(st.kind, FileType::Symlink);
    // Ordinary /proc files remain readable.
    assert!(!f.read("/proc/self/status").unwrap().is_empty());
}

// ---- write ----

#[test]
fn write_creates_replaces_and_reports() {
    let f = fx();
    let st = f.write("/new.txt", b"one").unwrap();
    assert_eq!(st.path, "/new.txt");
    assert_eq!(st.kind, FileType::File);
    assert_eq!(st.size, 3);
    assert_eq!(st.mode, 0o644);
    assert_eq!(std::fs::read(f.host("/new.txt")).unwrap(), b"one");
    let ino = std::fs::metadata(f.host("/new.txt")).unwrap().ino();
    // Replace: a new inode (atomic rename), the new content and mode.
    let st = f
        .write_with("/new.txt", b"two!", Some(0o4750), false, None)
        .unwrap();
    assert_eq!(st.mode, 0o4750);
    let md = std::fs::metadata(f.host("/new.txt")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o4750);
    assert_ne!(md.ino(), ino);
    assert_eq!(std::fs::read(f.host("/new.txt")).unwrap(), b"two!");
    // Empty and multi-chunk bodies.
    assert_eq!(f.write("/empty", b"").unwrap().size, 0);
    let big: Vec<u8> = (0..CHUNK * 2 + 5).map(|i| (i % 7) as u8).collect();
    f.write("/big", &big).unwrap();
    assert_eq!(f.read("/big").unwrap(), big);
    // Parents.
    assert_kind(f.write("/a/b/c.txt", b"x"), GuestErrorKind::NotFound);
    f.write_with("/a/b/c.txt", b"deep", None, true, None)
        .unwrap();
    assert_eq!(std::fs::read(f.host("/a/b/c.txt")).unwrap(), b"deep");
    // No temp files left behind.
    assert_eq!(
        f.names("/"),
        ["a", "big", "empty", "new.txt"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    // A directory is not overwritten.
    let e = assert_kind(f.write("/a", b"x"), GuestErrorKind::InvalidArgument);
    assert!(e.message.contains("directory"), "{e:?}");
    // A file in the way of parents.
    assert_kind(
        f.write_with("/new.txt/x", b"x", None, true, None),
        GuestErrorKind::Conflict,
    );
    assert_kind(f.write("/new.txt/x", b"x"), GuestErrorKind::InvalidArgument);
}

#[test]
fn write_over_the_limit_leaves_the_old_file() {
    let f = fx();
    f.put_file("/keep", b"old content");
    let data = vec![b'x'; CHUNK * 4];
    for max in [0, 10, CHUNK as u64, CHUNK as u64 * 3] {
        assert_kind(
            f.write_with("/keep", &data, None, false, Some(max)),
            GuestErrorKind::ResourceExhausted,
        );
        assert_eq!(std::fs::read(f.host("/keep")).unwrap(), b"old content");
        wait_for("no temp file", || f.names("/").len() == 1);
    }
    // At the limit is fine.
    f.write_with("/keep", b"12345", None, false, Some(5))
        .unwrap();
    assert_eq!(std::fs::read(f.host("/keep")).unwrap(), b"12345");
}

#[test]
fn write_refuses_unexpected_frames_and_cleans_up_after_a_dropped_connection() {
    let f = fx();
    f.put_file("/keep", b"old");
    let unexpected = [
        Frame::Stdout {
            ts_micros: 1,
            data: b"x".to_vec(),
        },
        Frame::control(&Request::new(Op::Stat { path: "/".into() })).unwrap(),
    ];
    for bad in unexpected {
        let mut s = f.open(Op::Write {
            path: "/keep".into(),
            mode: None,
            parents: false,
            max_bytes: None,
        });
        write_frame_sync(&mut s, &Frame::Data(b"new".to_vec())).unwrap();
        write_frame_sync(&mut s, &bad).unwrap();
        match response(&mut s) {
            Response::Error(e) => assert_eq!(e.kind, GuestErrorKind::InvalidArgument),
            other => panic!("unexpected answer {other:?}"),
        }
        assert_eq!(std::fs::read(f.host("/keep")).unwrap(), b"old");
        wait_for("no temp file", || f.names("/").len() == 1);
    }
    // The host goes away mid-upload: no new file, no temp file.
    let mut s = f.open(Op::Write {
        path: "/partial".into(),
        mode: None,
        parents: false,
        max_bytes: None,
    });
    write_frame_sync(&mut s, &Frame::Data(b"half".to_vec())).unwrap();
    wait_for("the temp file", || f.names("/").len() == 2);
    drop(s);
    wait_for("no temp file", || f.names("/").len() == 1);
    assert!(!f.host("/partial").exists());
}

#[test]
fn write_never_writes_through_symlinks_out_of_the_root() {
    let f = fx();
    let marker = f.marker().to_str().unwrap().to_string();
    let base = f.base.to_str().unwrap().to_string();
    // A final symlink to the host marker (a plain open() would follow it)
    // is replaced, not written through.
    symlink(&marker, f.host("/hostfile")).unwrap();
    f.write("/hostfile", b"pwned").unwrap();
    let md = std::fs::symlink_metadata(f.host("/hostfile")).unwrap();
    assert!(md.is_file());
    assert_eq!(std::fs::read(f.host("/hostfile")).unwrap(), b"pwned");
    // `..` stops at the root.
    f.write(&format!("/../../{MARKER}"), b"pwned").unwrap();
    assert_eq!(std::fs::read(f.host(MARKER)).unwrap(), b"pwned");
    // Symlinked parents resolve inside the root.
    symlink(&base, f.host("/hostdir")).unwrap();
    symlink("../../../..", f.host("/up")).unwrap();
    assert_kind(
        f.write(&format!("/hostdir/{MARKER}"), b"pwned"),
        GuestErrorKind::NotFound,
    );
    // A dangling symlink is in the way of `parents` (as for mkdir -p).
    assert_kind(
        f.write_with(&format!("/hostdir/{MARKER}"), b"pwned", None, true, None),
        GuestErrorKind::Conflict,
    );
    // Once the same path exists inside the root, writes land there.
    f.mkdir(&base, true).unwrap();
    f.write(&format!("/hostdir/{MARKER}"), b"contained")
        .unwrap();
    assert_eq!(
        std::fs::read(f.host(&format!("{base}/{MARKER}"))).unwrap(),
        b"contained"
    );
    f.write(&format!("/up/up/{MARKER}"), b"again").unwrap();
    assert_eq!(std::fs::read(f.host(MARKER)).unwrap(), b"again");
    f.write_with("/up/escape-dir/x", b"x", None, true, None)
        .unwrap();
    assert!(f.host("/escape-dir/x").is_file());
}

#[test]
fn write_holds_its_directory_when_a_symlink_is_swapped_in() {
    let f = fx();
    let base = f.base.to_str().unwrap().to_string();
    std::fs::create_dir(f.host("/d")).unwrap();
    let mut s = f.open(Op::Write {
        path: format!("/d/{MARKER}"),
        mode: None,
        parents: false,
        max_bytes: None,
    });
    write_frame_sync(&mut s, &Frame::Data(b"part1 ".to_vec())).unwrap();
    // The agent has opened the directory once its temp file exists.
    wait_for("the temp file", || f.names("/d").len() == 1);
    std::fs::rename(f.host("/d"), f.host("/moved")).unwrap();
    // `d` now points at the host directory holding the marker.
    symlink(&base, f.host("/d")).unwrap();
    write_frame_sync(&mut s, &Frame::Data(b"part2".to_vec())).unwrap();
    write_frame_sync(&mut s, &Frame::Eof).unwrap();
    match response(&mut s) {
        Response::Stat(st) => assert_eq!(st.size, 11),
        other => panic!("unexpected answer {other:?}"),
    }
    assert_eq!(
        std::fs::read(f.host(&format!("/moved/{MARKER}"))).unwrap(),
        b"part1 part2"
    );
    assert_eq!(f.names("/moved").len(), 1);
}

// ---- stat and list ----

#[test]
fn stat_reports_files_dirs_and_symlinks() {
    let f = fx();
    f.put_file("/d/file", b"12345");
    std::fs::set_permissions(f.host("/d/file"), PermissionsExt::from_mode(0o640)).unwrap();
    symlink("/d/file", f.host("/link")).unwrap();
    symlink("/nowhere", f.host("/dangling")).unwrap();
    let st = f.stat("/d/file").unwrap();
    assert_eq!(
        (st.kind, st.size, st.path.as_str()),
        (FileType::File, 5, "/d/file")
    );
    assert_eq!(st.mode, 0o640);
    assert!(st.mtime > 1_600_000_000);
    assert_eq!(f.stat("/d").unwrap().kind, FileType::Dir);
    assert_eq!(f.stat("/d/").unwrap().kind, FileType::Dir);
    let root = f.stat("/").unwrap();
    assert_eq!((root.kind, root.path.as_str()), (FileType::Dir, "/"));
    let st = f.stat("/link").unwrap();
    assert_eq!(st.kind, FileType::Symlink);
    assert_eq!(st.link_target.as_deref(), Some("/d/file"));
    let st = f.stat("/dangling").unwrap();
    assert_eq!(st.link_target.as_deref(), Some("/nowhere"));
    // Through a symlinked parent.
    symlink("d", f.host("/dl")).unwrap();
    assert_eq!(f.stat("/dl/file").unwrap().size, 5);
    assert_kind(f.stat("/missing"), GuestErrorKind::NotFound);
    assert_kind(f.stat("/d/file/x"), GuestErrorKind::InvalidArgument);
}

#[test]
fn list_descends_without_following_symlinks() {
    let f = fx();
    f.put_file("/d/a", b"a");
    f.put_file("/d/sub/b", b"b");
    f.put_file("/d/sub/deeper/c", b"c");
    symlink("/", f.host("/d/loop")).unwrap();
    symlink("/d", f.host("/dlink")).unwrap();
    assert_eq!(f.list_paths("/d", 1), ["/d/a", "/d/loop", "/d/sub"]);
    assert_eq!(
        f.list_paths("/d/", 2),
        ["/d/a", "/d/loop", "/d/sub", "/d/sub/b", "/d/sub/deeper"]
    );
    assert_eq!(
        f.list_paths("/d", 64),
        [
            "/d/a",
            "/d/loop",
            "/d/sub",
            "/d/sub/b",
            "/d/sub/deeper",
            "/d/sub/deeper/c"
        ]
    );
    let (entries, _) = f.list("/d", 1).unwrap();
    let lp = entries.iter().find(|e| e.path == "/d/loop").unwrap();
    assert_eq!(lp.kind, FileType::Symlink);
    assert_eq!(lp.link_target.as_deref(), Some("/"));
    // A symlink named as the directory itself is followed (inside the root).
    assert_eq!(
        f.list_paths("/dlink", 1),
        ["/dlink/a", "/dlink/loop", "/dlink/sub"]
    );
    assert_eq!(f.list_paths("/", 1), ["/d", "/dlink"]);
    assert_kind(f.list("/d", 0), GuestErrorKind::InvalidArgument);
    assert_kind(f.list("/d", 65), GuestErrorKind::InvalidArgument);
    assert_kind(f.list("/d/a", 1), GuestErrorKind::InvalidArgument);
    assert_kind(f.list("/missing", 1), GuestErrorKind::NotFound);
}

#[test]
fn list_is_truncated_at_the_entry_and_size_limits() {
    let f = fx();
    std::fs::create_dir(f.host("/many")).unwrap();
    for i in 0..10_050 {
        std::fs::File::create(f.host(&format!("/many/{i}"))).unwrap();
    }
    let (entries, truncated) = f.list("/many", 1).unwrap();
    assert!(truncated);
    assert!(
        entries.len() <= 10_000 && entries.len() > 5_000,
        "{}",
        entries.len()
    );
    // Long names hit the frame-size limit before the entry limit.
    std::fs::create_dir(f.host("/long")).unwrap();
    for i in 0..5_000 {
        let name = format!("{i:05}{}", "n".repeat(240));
        std::fs::File::create(f.host(&format!("/long/{name}"))).unwrap();
    }
    let (entries, truncated) = f.list("/long", 1).unwrap();
    assert!(truncated);
    assert!(
        entries.len() < 5_000 && entries.len() > 1_000,
        "{}",
        entries.len()
    );
    // Exactly what fits is not truncated.
    std::fs::create_dir(f.host("/few")).unwrap();
    for i in 0..100 {
        std::fs::File::create(f.host(&format!("/few/{i}"))).unwrap();
    }
    let (entries, truncated) = f.list("/few", 1).unwrap();
    assert!(!truncated);
    assert_eq!(entries.len(), 100);
}

#[test]
fn names_that_are_not_utf8_are_handled() {
    let f = fx();
    let name = OsStr::from_bytes(b"bad\xffname");
    std::fs::create_dir_all(f.host("/d/sub")).unwrap();
    std::fs::write(f.host("/d").join(name), b"odd").unwrap();
    std::fs::write(f.host("/d/sub").join(name), b"odd").unwrap();
    let (entries, _) = f.list("/d", 2).unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries[0].path.starts_with("/d/bad"));
    assert_eq!(entries[0].size, 3);
    let tar = f.tar_get("/d").unwrap();
    let mut a = tar::Archive::new(tar.as_slice());
    let names: Vec<Vec<u8>> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path_bytes().into_owned())
        .collect();
    assert!(names.contains(&b"bad\xffname".to_vec()), "{names:?}");
    assert!(names.contains(&b"sub/bad\xffname".to_vec()), "{names:?}");
    f.remove("/d", true).unwrap();
    assert!(!f.host("/d").exists());
}

// ---- mkdir, remove, rename ----

#[test]
fn mkdir_plain_and_parents() {
    let f = fx();
    f.mkdir("/a", false).unwrap();
    assert!(f.host("/a").is_dir());
    assert_kind(f.mkdir("/a", false), GuestErrorKind::Conflict);
    f.mkdir("/a", true).unwrap();
    assert_kind(f.mkdir("/x/y/z", false), GuestErrorKind::NotFound);
    f.mkdir("/x/y/z", true).unwrap();
    assert!(f.host("/x/y/z").is_dir());
    f.mkdir("/", true).unwrap();
    assert_kind(f.mkdir("/", false), GuestErrorKind::InvalidArgument);
    f.ok(Op::Mkdir {
        path: "/private".into(),
        parents: false,
        mode: Some(0o700),
    })
    .unwrap();
    let md = std::fs::metadata(f.host("/private")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700);
    f.put_file("/file", b"");
    assert_kind(f.mkdir("/file", false), GuestErrorKind::Conflict);
    assert_kind(f.mkdir("/file", true), GuestErrorKind::Conflict);
    assert_kind(f.mkdir("/file/sub", true), GuestErrorKind::Conflict);
    // Escapes create inside the root.
    let base = f.base.to_str().unwrap().to_string();
    symlink(&base, f.host("/hostdir")).unwrap();
    symlink("../..", f.host("/up")).unwrap();
    assert_kind(f.mkdir("/hostdir/new", true), GuestErrorKind::Conflict);
    assert_kind(f.mkdir("/hostdir/new", false), GuestErrorKind::NotFound);
    f.mkdir(&base, true).unwrap();
    f.mkdir("/hostdir/new", true).unwrap();
    assert!(f.host(&format!("{base}/new")).is_dir());
    f.mkdir("/up/../../up2/new", true).unwrap();
    assert!(f.host("/up2/new").is_dir());
    f.mkdir("/../../../evil", false).unwrap();
    assert!(f.host("/evil").is_dir());
}

#[test]
fn remove_files_links_and_trees() {
    let f = fx();
    let marker = f.marker().to_str().unwrap().to_string();
    f.put_file("/f", b"x");
    f.remove("/f", false).unwrap();
    assert!(!f.host("/f").exists());
    assert_kind(f.remove("/f", false), GuestErrorKind::NotFound);
    // A symlink to a host file: the link goes, never its target.
    symlink(&marker, f.host("/hostfile")).unwrap();
    f.remove("/hostfile", true).unwrap();
    assert!(std::fs::symlink_metadata(f.host("/hostfile")).is_err());
    // `..` cannot reach the marker.
    assert_kind(
        f.remove(&format!("/../{MARKER}"), false),
        GuestErrorKind::NotFound,
    );
    // Empty and non-empty directories.
    f.mkdir("/empty", false).unwrap();
    f.remove("/empty", false).unwrap();
    f.put_file("/tree/a", b"a");
    f.put_file("/tree/sub/b", b"b");
    f.put_file("/keep/precious", b"p");
    symlink("/keep", f.host("/tree/sub/to-keep")).unwrap();
    symlink(&f.base, f.host("/tree/to-host")).unwrap();
    symlink("../../..", f.host("/tree/sub/up")).unwrap();
    assert_kind(f.remove("/tree", false), GuestErrorKind::Conflict);
    assert!(f.host("/tree/a").exists());
    f.remove("/tree", true).unwrap();
    assert!(!f.host("/tree").exists());
    assert_eq!(std::fs::read(f.host("/keep/precious")).unwrap(), b"p");
    // Through a symlinked parent: the entry in the real directory goes.
    symlink("keep", f.host("/kl")).unwrap();
    f.remove("/kl/precious", false).unwrap();
    assert!(!f.host("/keep/precious").exists());
    assert!(f.host("/keep").is_dir());
    // A deep tree.
    let mut p = String::from("/deep");
    for _ in 0..100 {
        p.push_str("/d");
    }
    f.mkdir(&p, true).unwrap();
    f.put_file(&format!("{p}/leaf"), b"x");
    f.remove("/deep", true).unwrap();
    assert!(!f.host("/deep").exists());
    // A directory with more entries than one batch.
    std::fs::create_dir(f.host("/wide")).unwrap();
    for i in 0..5_000 {
        std::fs::File::create(f.host(&format!("/wide/{i}"))).unwrap();
    }
    f.remove("/wide", true).unwrap();
    assert!(!f.host("/wide").exists());
    assert_kind(f.remove("/", true), GuestErrorKind::InvalidArgument);
    assert_eq!(
        f.names("/"),
        ["keep", "kl"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn rename_within_the_root() {
    let f = fx();
    f.put_file("/a", b"a");
    f.rename("/a", "/b").unwrap();
    assert_eq!(std::fs::read(f.host("/b")).unwrap(), b"a");
    assert_kind(f.rename("/a", "/c"), GuestErrorKind::NotFound);
    // Replace a file.
    f.put_file("/c", b"c");
    f.rename("/b", "/c").unwrap();
    assert_eq!(std::fs::read(f.host("/c")).unwrap(), b"a");
    // Directories: onto an empty one works, onto a non-empty one conflicts.
    f.put_file("/d1/x", b"x");
    f.mkdir("/empty", false).unwrap();
    f.rename("/d1", "/empty").unwrap();
    assert!(f.host("/empty/x").exists());
    f.put_file("/d2/y", b"y");
    assert_kind(f.rename("/d2", "/empty"), GuestErrorKind::Conflict);
    assert_kind(f.rename("/c", "/empty"), GuestErrorKind::InvalidArgument);
    assert_kind(
        f.rename("/d2", "/d2/inside"),
        GuestErrorKind::InvalidArgument,
    );
    assert_kind(f.rename("/c", "/missing/c"), GuestErrorKind::NotFound);
    // Both ends resolve inside the root.
    let base = f.base.to_str().unwrap().to_string();
    symlink(&base, f.host("/hostdir")).unwrap();
    symlink("../../..", f.host("/up")).unwrap();
    assert_kind(
        f.rename("/c", &format!("/hostdir/{MARKER}")),
        GuestErrorKind::NotFound,
    );
    assert_kind(
        f.rename(&format!("/hostdir/{MARKER}"), "/stolen"),
        GuestErrorKind::NotFound,
    );
    assert_kind(
        f.rename(&format!("/../{MARKER}"), "/stolen"),
        GuestErrorKind::NotFound,
    );
    f.rename("/c", &format!("/up/{MARKER}")).unwrap();
    assert_eq!(std::fs::read(f.host(MARKER)).unwrap(), b"a");
    // A final symlink is renamed itself; its target stays.
    symlink(f.marker(), f.host("/hostfile")).unwrap();
    f.rename("/hostfile", "/renamed").unwrap();
    assert_eq!(std::fs::read_link(f.host("/renamed")).unwrap(), f.marker());
    // A symlink swapped in for a parent between two renames is resolved
    // in the root the next time.
    std::fs::create_dir(f.host("/p")).unwrap();
    f.put_file("/p/file", b"pf");
    std::fs::rename(f.host("/p"), f.host("/p-real")).unwrap();
    symlink(&base, f.host("/p")).unwrap();
    assert_kind(f.rename("/p/file", "/x"), GuestErrorKind::NotFound);
    assert_kind(
        f.rename("/p-real/file", &format!("/p/{MARKER}")),
        GuestErrorKind::NotFound,
    );
    assert_eq!(std::fs::read(f.host("/p-real/file")).unwrap(), b"pf");
}

// ---- tar ----

#[test]
fn tar_get_streams_files_dirs_and_symlinks() {
    let f = fx();
    f.put_file("/d/a.txt", b"alpha");
    f.put_file("/d/sub/b.bin", &vec![7u8; CHUNK * 2 + 3]);
    symlink("/etc/passwd", f.host("/d/abs")).unwrap();
    symlink("../..", f.host("/d/sub/up")).unwrap();
    std::fs::set_permissions(f.host("/d/a.txt"), PermissionsExt::from_mode(0o750)).unwrap();
    let tar = f.tar_get("/d").unwrap();
    let got = entries(&tar);
    let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["a.txt", "abs", "sub/", "sub/b.bin", "sub/up"]);
    assert_eq!(got[0].2, b"alpha");
    assert_eq!(
        (got[1].1, got[1].2.as_slice()),
        (tar::EntryType::Symlink, &b"/etc/passwd"[..])
    );
    assert_eq!(got[2].1, tar::EntryType::Directory);
    assert_eq!(got[3].2.len(), CHUNK * 2 + 3);
    assert_eq!(
        (got[4].1, got[4].2.as_slice()),
        (tar::EntryType::Symlink, &b"../.."[..])
    );
    let mut a = tar::Archive::new(tar.as_slice());
    let first = a.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.header().mode().unwrap(), 0o750);
    // A single file by its base name; a symlink as a symlink.
    let got = entries(&f.tar_get("/d/a.txt").unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.as_str(), got[0].2.as_slice()),
        ("a.txt", &b"alpha"[..])
    );
    let got = entries(&f.tar_get("/d/abs").unwrap());
    assert_eq!(
        (got[0].0.as_str(), got[0].1),
        ("abs", tar::EntryType::Symlink)
    );
    // The whole root, and an empty directory.
    let got = entries(&f.tar_get("/").unwrap());
    assert_eq!(got.len(), 6);
    assert_eq!(got[0].0, "d/");
    f.mkdir("/e", false).unwrap();
    assert!(entries(&f.tar_get("/e").unwrap()).is_empty());
    assert_kind(f.tar_get("/missing"), GuestErrorKind::NotFound);
    // Round trip through tar_put.
    f.tar_put("/copy", &tar, None).unwrap();
    assert_eq!(std::fs::read(f.host("/copy/a.txt")).unwrap(), b"alpha");
    assert_eq!(
        std::fs::read_link(f.host("/copy/sub/up")).unwrap(),
        Path::new("../..")
    );
}

#[test]
fn tar_put_unpacks_files_dirs_links_modes_and_times() {
    let f = fx();
    let tar = archive(|b| {
        raw_entry(b, tar::EntryType::Directory, b"dir/", None, b"", 0o750);
        raw_entry(
            b,
            tar::EntryType::Regular,
            b"dir/run.sh",
            None,
            b"#!/bin/sh\n",
            0o4755,
        );
        file(b, "./top.txt", b"top");
        file(b, "implicit/parents/f", b"f");
        link(b, tar::EntryType::Symlink, "dir/abs", "/etc/passwd");
        link(b, tar::EntryType::Symlink, "dir/rel", "run.sh");
        link(b, tar::EntryType::Link, "hard", "top.txt");
        raw_entry(b, tar::EntryType::Fifo, b"fifo", None, b"", 0o644);
        raw_entry(b, tar::EntryType::Char, b"null", None, b"", 0o666);
    });
    f.tar_put("/dst", &tar, None).unwrap();
    let md = std::fs::metadata(f.host("/dst/dir/run.sh")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(md.mtime(), 1_600_000_000);
    let md = std::fs::metadata(f.host("/dst/dir")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o750);
    assert_eq!(md.mtime(), 1_600_000_000);
    assert_eq!(std::fs::read(f.host("/dst/top.txt")).unwrap(), b"top");
    assert_eq!(
        std::fs::read(f.host("/dst/implicit/parents/f")).unwrap(),
        b"f"
    );
    assert_eq!(
        std::fs::read_link(f.host("/dst/dir/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::read_link(f.host("/dst/dir/rel")).unwrap(),
        Path::new("run.sh")
    );
    let a = std::fs::metadata(f.host("/dst/hard")).unwrap();
    let b = std::fs::metadata(f.host("/dst/top.txt")).unwrap();
    assert_eq!(a.ino(), b.ino());
    // Devices and FIFOs are skipped.
    assert!(!f.host("/dst/fifo").exists());
    assert!(!f.host("/dst/null").exists());
    // Unpacking again replaces what is there.
    f.tar_put("/dst", &archive(|b| file(b, "top.txt", b"new")), None)
        .unwrap();
    assert_eq!(std::fs::read(f.host("/dst/top.txt")).unwrap(), b"new");
    // An empty archive (just the end marker) is fine, and so is "/".
    f.tar_put("/empty", &archive(|_| {}), None).unwrap();
    assert!(f.host("/empty").is_dir());
    f.tar_put("/", &archive(|b| file(b, "at-root", b"r")), None)
        .unwrap();
    assert_eq!(std::fs::read(f.host("/at-root")).unwrap(), b"r");
}

#[test]
fn tar_put_refuses_entries_that_leave_the_target() {
    let f = fx();
    let marker = f.marker().to_str().unwrap().to_string();
    let base = f.base.to_str().unwrap().to_string();
    f.mkdir("/dst", false).unwrap();
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", archive(|b| file(b, "../evil", b"pwned"))),
        (
            "nested dotdot",
            archive(|b| file(b, "a/../../evil", b"pwned")),
        ),
        (
            "absolute",
            archive(|b| file(b, &format!("/{MARKER}"), b"pwned")),
        ),
        ("absolute host", archive(|b| file(b, &marker, b"pwned"))),
        (
            "symlink to host dir, then a file through it",
            archive(|b| {
                link(b, tar::EntryType::Symlink, "ln", &base);
                file(b, &format!("ln/{MARKER}"), b"pwned");
            }),
        ),
        (
            "symlink to /, then a file through it",
            archive(|b| {
                link(b, tar::EntryType::Symlink, "root", "/");
                file(b, "root/evil", b"pwned");
            }),
        ),
        (
            "relative symlink up, then a file through it",
            archive(|b| {
                link(b, tar::EntryType::Symlink, "up", "../..");
                file(b, "up/evil", b"pwned");
            }),
        ),
        (
            "symlink up, then a directory through it",
            archive(|b| {
                link(b, tar::EntryType::Symlink, "up2", "..");
                raw_entry(b, tar::EntryType::Directory, b"up2/evil/", None, b"", 0o755);
            }),
        ),
        (
            "hard link up",
            archive(|b| link(b, tar::EntryType::Link, "h", "../x")),
        ),
        (
            "hard link through a symlink",
            archive(|b| {
                link(b, tar::EntryType::Symlink, "hl", &base);
                link(b, tar::EntryType::Link, "h2", &format!("hl/{MARKER}"));
            }),
        ),
        (
            "absolute hard link",
            archive(|b| link(b, tar::EntryType::Link, "h3", &marker)),
        ),
    ];
    for (what, tar) in hostile {
        let e = assert_kind(
            f.tar_put("/dst", &tar, None),
            GuestErrorKind::InvalidArgument,
        );
        eprintln!("{what}: {}", e.message);
        assert!(!f.host("/evil").exists(), "{what}");
        assert!(!f.host("/x").exists(), "{what}");
        assert!(!f.host(MARKER).exists(), "{what}");
    }
    // The symlinks planted by those archives are inside the sandbox; nothing
    // was created through them.
    for n in f.names("/dst") {
        let md = std::fs::symlink_metadata(f.host("/dst").join(&n)).unwrap();
        assert!(md.file_type().is_symlink(), "{n}");
    }
}

#[test]
fn tar_put_replaces_planted_symlinks_instead_of_following_them() {
    let f = fx();
    let marker = f.marker().to_str().unwrap().to_string();
    let base = f.base.to_str().unwrap().to_string();
    std::fs::create_dir(f.host("/dst")).unwrap();
    // Planted by the sandbox: absolute host paths a plain open() would follow.
    symlink(&marker, f.host("/dst/file-link")).unwrap();
    symlink(&base, f.host("/dst/dir-link")).unwrap();
    symlink(&marker, f.host("/dst/hard-src")).unwrap();
    let tar = archive(|b| {
        file(b, "file-link", b"replaced");
        raw_entry(b, tar::EntryType::Directory, b"dir-link/", None, b"", 0o755);
        file(b, &format!("dir-link/{MARKER}"), b"inside");
        link(b, tar::EntryType::Link, "hard", "hard-src");
        // Symlink then file with the same name, inside one archive.
        link(b, tar::EntryType::Symlink, "twice", &marker);
        file(b, "twice", b"second");
    });
    f.tar_put("/dst", &tar, None).unwrap();
    assert_eq!(
        std::fs::read(f.host("/dst/file-link")).unwrap(),
        b"replaced"
    );
    assert!(f.host("/dst/dir-link").symlink_metadata().unwrap().is_dir());
    assert_eq!(
        std::fs::read(f.host(&format!("/dst/dir-link/{MARKER}"))).unwrap(),
        b"inside"
    );
    // The hard link is to the symlink itself, not to the host file.
    assert!(
        f.host("/dst/hard")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(f.host("/dst/twice")).unwrap(), b"second");
    // A planted symlink for the target directory itself resolves in the root.
    symlink(&base, f.host("/target-link")).unwrap();
    f.mkdir(&base, true).unwrap();
    f.tar_put(
        "/target-link",
        &archive(|b| file(b, MARKER, b"in root")),
        None,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(f.host(&format!("{base}/{MARKER}"))).unwrap(),
        b"in root"
    );
}

#[test]
fn tar_put_holds_its_directories_when_a_symlink_is_swapped_in() {
    let f = fx();
    let base = f.base.to_str().unwrap().to_string();
    let tar = archive(|b| {
        file(b, "sub/a", b"first");
        file(b, &format!("sub/{MARKER}"), b"pwned");
    });
    // The first entry: its header and one padded block of data.
    let split = 512 + 512;
    let mut s = f.open(Op::TarPut {
        path: "/dst".into(),
        max_bytes: None,
    });
    write_frame_sync(&mut s, &Frame::Data(tar[..split].to_vec())).unwrap();
    wait_for("the first entry", || f.host("/dst/sub/a").exists());
    std::fs::rename(f.host("/dst/sub"), f.host("/moved")).unwrap();
    symlink(&base, f.host("/dst/sub")).unwrap();
    // The agent may refuse (and close) as soon as it reads the second
    // entry, before our last frames are written: what counts is its answer.
    let _ = write_frame_sync(&mut s, &Frame::Data(tar[split..].to_vec()))
        .and_then(|()| write_frame_sync(&mut s, &Frame::Eof));
    match response(&mut s) {
        Response::Error(e) => assert_eq!(e.kind, GuestErrorKind::InvalidArgument, "{e:?}"),
        other => panic!("unexpected answer {other:?}"),
    }
    assert_eq!(std::fs::read(f.host("/moved/a")).unwrap(), b"first");
    assert_eq!(f.names("/moved").len(), 1);
}

#[test]
fn tar_put_enforces_the_size_cap_and_the_stream_format() {
    let f = fx();
    let big = archive(|b| file(b, "big", &vec![1u8; CHUNK * 4]));
    assert_kind(
        f.tar_put("/dst", &big, Some(CHUNK as u64)),
        GuestErrorKind::ResourceExhausted,
    );
    assert_kind(
        f.tar_put("/dst", &big, Some(0)),
        GuestErrorKind::ResourceExhausted,
    );
    f.tar_put("/dst2", &big, Some(big.len() as u64)).unwrap();
    assert_eq!(
        std::fs::metadata(f.host("/dst2/big")).unwrap().len(),
        CHUNK as u64 * 4
    );
    // Not a tar stream.
    assert_kind(
        f.tar_put("/dst3", &[0x55; 4096], None),
        GuestErrorKind::InvalidArgument,
    );
    // Truncated in the middle of an entry.
    assert_kind(
        f.tar_put("/dst4", &big[..2048], None),
        GuestErrorKind::InvalidArgument,
    );
    // An unexpected frame kind.
    let mut s = f.open(Op::TarPut {
        path: "/dst5".into(),
        max_bytes: None,
    });
    write_frame_sync(&mut s, &Frame::Data(big[..512].to_vec())).unwrap();
    write_frame_sync(
        &mut s,
        &Frame::Stderr {
            ts_micros: 0,
            data: vec![],
        },
    )
    .unwrap();
    match response(&mut s) {
        Response::Error(e) => assert_eq!(e.kind, GuestErrorKind::InvalidArgument, "{e:?}"),
        other => panic!("unexpected answer {other:?}"),
    }
    // A target that is a file.
    f.put_file("/file", b"");
    assert_kind(
        f.tar_put("/file", &archive(|b| file(b, "x", b"x")), None),
        GuestErrorKind::Conflict,
    );
    // Trailing data after the end of the archive is drained, not an error.
    let mut padded = archive(|b| file(b, "p", b"p"));
    padded.extend_from_slice(&[0u8; 10_000]);
    f.tar_put("/dst6", &padded, None).unwrap();
    assert_eq!(std::fs::read(f.host("/dst6/p")).unwrap(), b"p");
}
