//! Templates: named, read-only root filesystems that sandboxes are born from.
//!
//! A [`Template`] is a list of read-only layers, each a host directory
//! merged at a path inside the sandbox. The container substrate idmaps each
//! layer once (so files owned by host root appear root-owned inside) and
//! stacks a private writable layer on top with overlayfs.
//!
//! Built in:
//! - `host`: a read-only view of this machine's `/usr` (and `/bin`, `/sbin`,
//!   `/lib*` where they are not symlinks into it) plus a private copy of the
//!   few `/etc` files programs need — no `/etc/shadow`, no ssh keys, no
//!   `/root`. It follows the host, so it is tied to this machine.
//! - `busybox`: a hermetic root built from Debian's `busybox-static`.
//! - `scratch`: only the directories every root needs; imported OCI images
//!   and Debian builds ([`archive`], [`debian`]) are snapshots over it.
//!
//! Named templates beyond these are snapshots in the store (the runtime
//! keeps that list). The `host` template's `/etc` copy is made when the
//! store is first opened and refreshed by `hull system reset`.
#![forbid(unsafe_code)]

pub mod archive;
pub mod debian;
pub mod snapshot;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The built-in empty template that imported images and Debian builds are
/// snapshots of (its root holds only the directories every root needs).
pub const SCRATCH: &str = "scratch";

/// Where Debian's `busybox-static` installs its binary.
pub const BUSYBOX_BINARY: &str = "/bin/busybox";

/// `/etc` entries copied into the `host` template. Everything else in the
/// host's `/etc` (shadow files, ssh keys, sudoers, credentials) stays out.
const HOST_ETC_ALLOW: &[&str] = &[
    "passwd",
    "group",
    "hosts",
    "host.conf",
    "resolv.conf",
    "nsswitch.conf",
    "gai.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "issue",
    "profile",
    "profile.d",
    "bash.bashrc",
    "environment",
    "inputrc",
    "mime.types",
    "protocols",
    "services",
    "networks",
    "ethertypes",
    "rpc",
    "shells",
    "login.defs",
    "skel",
    "gitconfig",
    "magic",
    "mailcap",
    "python3",
    "python3.11",
    "python3.12",
    "python3.13",
    "perl",
    "pip.conf",
    "xdg",
    "manpath.config",
    "locale.alias",
    "locale.gen",
    "default/locale",
    "debconf.conf",
    "dpkg",
    "apt",
];

/// Directories a root filesystem needs even when its template lacks them.
const SKELETON_DIRS: &[(&str, u32)] = &[
    ("etc", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("var/tmp", 0o1777),
    ("var/lib", 0o755),
    ("var/cache", 0o755),
    ("var/log", 0o755),
    ("run", 0o755),
    ("root", 0o700),
    ("home", 0o755),
    ("mnt", 0o755),
    ("opt", 0o755),
    ("srv", 0o755),
];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {0:?} does not exist (built in: host, busybox, scratch)")]
    NotFound(String),
    #[error("template {name:?} is unavailable: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("building template {name:?}: {what} {path}")]
    Build {
        name: String,
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// One read-only layer: a host directory merged at `target` inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Absolute path inside the sandbox (`/` or e.g. `/usr`).
    pub target: String,
    /// The host directory holding the layer's files.
    pub source: PathBuf,
}

/// A template ready to start sandboxes from.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub description: String,
    /// The root layer (`/`) first, then layers mounted inside it.
    pub layers: Vec<Layer>,
    /// Environment every process in sandboxes of this template starts with.
    pub env: Vec<(String, String)>,
}

/// A template's availability, for `hull info`.
#[derive(Debug, Clone)]
pub struct TemplateStatus {
    pub name: String,
    pub description: String,
    pub available: bool,
    pub note: Option<String>,
}

/// The set of templates under a state directory.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    dir: PathBuf,
    /// Serialises first-use builds: concurrent creates of a template that
    /// is not built yet must not race on its staging directory.
    building: std::sync::Arc<std::sync::Mutex<()>>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl TemplateStore {
    /// The store at `<state_dir>/templates`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("templates"),
            building: Default::default(),
        }
    }

    /// Names of the built-in templates.
    pub fn names(&self) -> Vec<&'static str> {
        vec!["host", "busybox", SCRATCH]
    }

    /// Availability of every template.
    pub fn status(&self) -> Vec<TemplateStatus> {
        self.names()
            .into_iter()
            .map(|n| {
                let (available, note) = match self.check(n) {
                    Ok(()) => (true, None),
                    Err(e) => (false, Some(e.to_string())),
                };
                TemplateStatus {
                    name: n.into(),
                    description: describe(n).into(),
                    available,
                    note,
                }
            })
            .collect()
    }

    fn check(&self, name: &str) -> Result<(), TemplateError> {
        match name {
            "host" | SCRATCH => Ok(()),
            "busybox" if Path::new(BUSYBOX_BINARY).is_file() => Ok(()),
            "busybox" => Err(TemplateError::Unavailable {
                name: name.into(),
                reason: format!(
                    "{BUSYBOX_BINARY} is missing: install Debian's busybox-static (apt-get install busybox-static)"
                ),
            }),
            other => Err(TemplateError::NotFound(other.into())),
        }
    }

    /// Get a template by name, building its files on first use.
    pub fn get(&self, name: &str) -> Result<Template, TemplateError> {
        self.check(name)?;
        // A poisoned lock only means another build panicked; its staging
        // directory is discarded by the next build, so carry on.
        let _building = self
            .building
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match name {
            "host" => self.host(),
            "busybox" => self.busybox(),
            SCRATCH => self.scratch(),
            other => Err(TemplateError::NotFound(other.into())),
        }
    }

    /// Remove every built template (they are rebuilt on next use).
    pub fn clear(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn host(&self) -> Result<Template, TemplateError> {
        let root = self.dir.join("host").join("root");
        let mut layers = vec![Layer {
            target: "/".into(),
            source: root.clone(),
        }];
        let mut build = Vec::new();
        for top in ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target =
                        fs::read_link(&host).map_err(build_err("host", "reading link", &host))?;
                    build.push((top, Some(target)));
                }
                Ok(m) if m.is_dir() => {
                    build.push((top, None));
                    layers.push(Layer {
                        target: format!("/{top}"),
                        source: host,
                    });
                }
                _ => {}
            }
        }
        if !root.join(".hull-complete").exists() {
            let tmp = self.dir.join("host").join("root.tmp");
            let _ = fs::remove_dir_all(&tmp);
            skeleton(&tmp).map_err(build_err("host", "creating", &tmp))?;
            for (top, link) in &build {
                let p = tmp.join(top);
                match link {
                    Some(target) => symlink(target, &p),
                    None => fs::DirBuilder::new().mode(0o755).create(&p),
                }
                .map_err(build_err("host", "creating", &p))?;
            }
            for entry in HOST_ETC_ALLOW {
                let src = Path::new("/etc").join(entry);
                let dst = tmp.join("etc").join(entry);
                if fs::symlink_metadata(&src).is_ok() {
                    copy_tree(&src, &dst).map_err(build_err("host", "copying", &src))?;
                }
            }
            fs::write(tmp.join(".hull-complete"), b"")
                .map_err(build_err("host", "writing", &tmp))?;
            let _ = fs::remove_dir_all(&root);
            fs::rename(&tmp, &root).map_err(build_err("host", "installing", &root))?;
        }
        Ok(Template {
            name: "host".into(),
            description: describe("host").into(),
            layers,
            env: vec![
                ("PATH".into(), DEFAULT_PATH.into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
        })
    }

    fn scratch(&self) -> Result<Template, TemplateError> {
        let root = self.dir.join(SCRATCH).join("root");
        if !root.join(".hull-complete").exists() {
            let tmp = self.dir.join(SCRATCH).join("root.tmp");
            let _ = fs::remove_dir_all(&tmp);
            skeleton(&tmp).map_err(build_err(SCRATCH, "creating", &tmp))?;
            fs::write(tmp.join(".hull-complete"), b"")
                .map_err(build_err(SCRATCH, "writing", &tmp))?;
            let _ = fs::remove_dir_all(&root);
            fs::rename(&tmp, &root).map_err(build_err(SCRATCH, "installing", &root))?;
        }
        Ok(Template {
            name: SCRATCH.into(),
            description: describe(SCRATCH).into(),
            layers: vec![Layer {
                target: "/".into(),
                source: root,
            }],
            env: vec![("PATH".into(), DEFAULT_PATH.into())],
        })
    }

    fn busybox(&self) -> Result<Template, TemplateError> {
        let root = self.dir.join("busybox").join("root");
        if !root.join(".hull-complete").exists() {
            let tmp = self.dir.join("busybox").join("root.tmp");
            let _ = fs::remove_dir_all(&tmp);
            skeleton(&tmp).map_err(build_err("busybox", "creating", &tmp))?;
            let bin = tmp.join("bin");
            fs::create_dir_all(&bin).map_err(build_err("busybox", "creating", &bin))?;
            fs::copy(BUSYBOX_BINARY, bin.join("busybox")).map_err(build_err(
                "busybox",
                "copying",
                Path::new(BUSYBOX_BINARY),
            ))?;
            let out = Command::new(BUSYBOX_BINARY)
                .arg("--list-full")
                .output()
                .map_err(build_err("busybox", "running", Path::new(BUSYBOX_BINARY)))?;
            for applet in String::from_utf8_lossy(&out.stdout).lines() {
                let rel = applet.trim().trim_start_matches('/');
                if rel.is_empty() || rel.contains("..") || rel == "bin/busybox" {
                    continue;
                }
                let p = tmp.join(rel);
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(build_err("busybox", "creating", parent))?;
                }
                let _ = symlink("/bin/busybox", &p);
            }
            let etc = tmp.join("etc");
            for (name, content) in [
                (
                    "passwd",
                    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
                ),
                ("group", "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n"),
                (
                    "hosts",
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                ),
                (
                    "nsswitch.conf",
                    "passwd: files\ngroup: files\nhosts: files dns\n",
                ),
            ] {
                fs::write(etc.join(name), content)
                    .map_err(build_err("busybox", "writing", &etc))?;
            }
            let home = tmp.join("home/user");
            fs::create_dir_all(&home).map_err(build_err("busybox", "creating", &home))?;
            std::os::unix::fs::chown(&home, Some(1000), Some(1000))
                .map_err(build_err("busybox", "chown", &home))?;
            fs::write(tmp.join(".hull-complete"), b"")
                .map_err(build_err("busybox", "writing", &tmp))?;
            let _ = fs::remove_dir_all(&root);
            fs::rename(&tmp, &root).map_err(build_err("busybox", "installing", &root))?;
        }
        Ok(Template {
            name: "busybox".into(),
            description: describe("busybox").into(),
            layers: vec![Layer {
                target: "/".into(),
                source: root,
            }],
            env: vec![("PATH".into(), DEFAULT_PATH.into())],
        })
    }
}

fn describe(name: &str) -> &'static str {
    match name {
        "host" => {
            "read-only view of this host's /usr with a minimal private /etc (tied to this machine)"
        }
        "busybox" => "hermetic busybox root from Debian's busybox-static",
        SCRATCH => "an empty root (the base that imported images and Debian builds are stacked on)",
        _ => "",
    }
}

fn build_err<'a>(
    name: &'a str,
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> TemplateError + 'a {
    move |source| TemplateError::Build {
        name: name.into(),
        what,
        path: path.display().to_string(),
        source,
    }
}

fn skeleton(root: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(root)?;
    for (dir, mode) in SKELETON_DIRS {
        let p = root.join(dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}

/// Copy a file, symlink or directory tree, keeping modes; symlinks are
/// copied as links, never followed.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    let ft = meta.file_type();
    if ft.is_symlink() {
        symlink(fs::read_link(src)?, dst)
    } else if ft.is_dir() {
        fs::DirBuilder::new()
            .mode(meta.permissions().mode() & 0o7777)
            .create(dst)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            // Credentials that can sit inside otherwise harmless config trees.
            let name = entry.file_name();
            if matches!(name.to_str(), Some("auth.conf" | "auth.conf.d" | "private")) {
                continue;
            }
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else if ft.is_file() {
        fs::copy(src, dst).map(|_| ())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_template_has_no_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        let t = store.get("host").unwrap();
        let root = &t.layers[0].source;
        assert!(root.join("etc/passwd").exists());
        for secret in [
            "etc/shadow",
            "etc/gshadow",
            "etc/ssh",
            "etc/sudoers",
            "root/.ssh",
        ] {
            assert!(
                !root.join(secret).exists(),
                "{secret} leaked into the host template"
            );
        }
        assert_eq!(
            fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        assert!(t.layers.iter().any(|l| l.target == "/usr"));
        // Idempotent: a second get reuses the files.
        let again = store.get("host").unwrap();
        assert_eq!(again.layers, t.layers);
    }

    #[test]
    fn concurrent_first_use_builds_once() {
        // Several creates racing on a template that is not built yet must
        // all get it (they used to collide on the staging directory).
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| s.spawn(|| store.clone().get("host").map(|t| t.layers)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert_eq!(r.as_ref().unwrap(), results[0].as_ref().unwrap());
        }
        assert!(
            dir.path()
                .join("templates/host/root/.hull-complete")
                .exists()
        );
        assert!(!dir.path().join("templates/host/root.tmp").exists());
    }

    #[test]
    fn unknown_template() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        assert!(matches!(store.get("nope"), Err(TemplateError::NotFound(_))));
        assert!(matches!(
            store.get("../etc"),
            Err(TemplateError::NotFound(_))
        ));
    }
}
