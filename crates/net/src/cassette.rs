//! Cassettes: the HTTP(S) exchanges of a `record` sandbox, stored so that a
//! `replay` sandbox can be answered from them with no live network.
//!
//! # Format
//!
//! One append-only file of JSON lines. The first line is the header
//! `{"hull_cassette":1,"sandbox":"<id>","created":<unix seconds>}`; every
//! following line is one [`Exchange`]: the request as the SANDBOX sent it
//! (method, scheme, host, port, path and query, headers, body) and the
//! response it got (status, headers, body). Bodies and non-UTF-8 header
//! values are base64. Injected headers (secret rules) are added after the
//! request is recorded, so secrets are never in a cassette (an injected
//! value that the upstream echoes in a response body is stored masked with
//! `*`, same length). A line is
//! written with one `write` under a lock, so a crash mid-write leaves at
//! most one torn last line (no trailing newline): loading ignores it (and
//! says so, [`Cassette::torn_tail`]), and reopening for recording cuts it
//! off before appending. Any other damage (a bad header, an unparsable
//! line in the middle, a newer version) is a [`CassetteError`] naming the
//! line.
//!
//! # Limits
//!
//! A recorded body keeps at most [`MAX_RECORDED_BODY`] bytes. The request
//! body's sha256 and length are computed over the whole body (so matching
//! stays exact for large uploads); a longer response body is passed to the
//! live sandbox whole but stored cut and marked `truncated`, and replaying
//! that exchange answers `502` (`x-hull-replay: truncated`) rather than
//! serve a cut body. Exchanges whose bodies did not complete (a client or
//! upstream that hung up), and hull's own answers (`502` when the upstream
//! failed, `421`), are not recorded. The exchanges of one connection are
//! written in request order, those of parallel connections as they
//! complete. Upgraded connections (WebSocket) are not recorded at all, so
//! in replay their requests are misses. A replayed cassette is loaded
//! whole into memory (once per sandbox).
//!
//! # Matching
//!
//! A replayed request matches on [`Key`]: method, scheme, host, port, path
//! with query, and the sha256 of the body; headers are not compared. The
//! n-th request with a key gets the n-th recorded exchange with that key,
//! counted per sandbox; after the last one, the last one is served again
//! (clients retry and poll; a retry then sees what the recording saw
//! last). A key never recorded is a miss.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// The format version written in the header line.
pub const FORMAT_VERSION: u32 = 1;
/// The most bytes of one body a cassette keeps.
pub const MAX_RECORDED_BODY: usize = 16 << 20;

/// Errors of reading and writing cassettes.
#[derive(Debug, thiserror::Error)]
pub enum CassetteError {
    #[error("cassette {}: {what}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cassette {} is empty or its header line is incomplete: not a usable hull cassette", path.display())]
    NoHeader { path: PathBuf },
    #[error("cassette {}: line 1 is not a hull cassette header", path.display())]
    BadHeader { path: PathBuf },
    #[error("cassette {} has format version {found}; this hull reads version {FORMAT_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("cassette {} is corrupt at line {line}: {why}", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// A header value: text when it is UTF-8, else base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    Text(String),
    Bytes { b64: String },
}

impl HeaderValue {
    pub fn from_bytes(b: &[u8]) -> HeaderValue {
        match std::str::from_utf8(b) {
            Ok(s) => HeaderValue::Text(s.to_string()),
            Err(_) => HeaderValue::Bytes { b64: B64.encode(b) },
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            HeaderValue::Text(s) => s.as_bytes().to_vec(),
            HeaderValue::Bytes { b64 } => B64.decode(b64).unwrap_or_default(),
        }
    }
}

/// A recorded body (at most [`MAX_RECORDED_BODY`] bytes of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedBody {
    /// base64 of the kept bytes.
    pub data: String,
    /// The whole body's length.
    pub len: u64,
    /// Whether `data` holds less than `len` bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl RecordedBody {
    pub fn new(kept: &[u8], len: u64) -> RecordedBody {
        RecordedBody {
            data: B64.encode(kept),
            len,
            truncated: (kept.len() as u64) < len,
        }
    }

    /// The kept bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        B64.decode(&self.data)
            .map_err(|e| format!("bad base64 body: {e}"))
    }
}

/// A request as the sandbox sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, HeaderValue)>,
    /// Hex sha256 of the whole body.
    pub body_sha256: String,
    pub body: RecordedBody,
}

/// The response the sandbox got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedResponse {
    pub status: u16,
    pub headers: Vec<(String, HeaderValue)>,
    pub body: RecordedBody,
}

/// One request and its response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    pub request: RecordedRequest,
    pub response: RecordedResponse,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    hull_cassette: u32,
    sandbox: String,
    created: u64,
}

/// What a replayed request is matched on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub target: String,
    /// Hex sha256 of the body.
    pub body_sha256: String,
}

impl Key {
    pub fn of(r: &RecordedRequest) -> Key {
        Key {
            method: r.method.clone(),
            scheme: r.scheme.clone(),
            host: r.host.to_ascii_lowercase(),
            port: r.port,
            target: r.target.clone(),
            body_sha256: r.body_sha256.clone(),
        }
    }
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Appends exchanges to one cassette file. Shared by all connections of a
/// sandbox (one line per exchange, written under a lock).
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    file: Mutex<File>,
}

impl Recorder {
    /// Open `path` for appending: a new file gets a header line; an
    /// existing one must be a cassette of this version, and a torn last
    /// line is cut off.
    pub fn open(path: &Path, sandbox_id: &str) -> Result<Recorder, CassetteError> {
        let io = |what| {
            let path = path.to_path_buf();
            move |source| CassetteError::Io { what, path, source }
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("creating its directory"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("opening"))?;
        let len = file.metadata().map_err(io("reading"))?.len();
        if len == 0 {
            let h = Header {
                hull_cassette: FORMAT_VERSION,
                sandbox: sandbox_id.to_string(),
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            let mut line = serde_json::to_vec(&h).unwrap_or_default();
            line.push(b'\n');
            file.write_all(&line).map_err(io("writing"))?;
        } else {
            let mut text = Vec::new();
            file.read_to_end(&mut text).map_err(io("reading"))?;
            parse_header(path, &text)?;
            let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if (keep as u64) < len {
                tracing::warn!(path = %path.display(), "cassette: cutting off a torn last record");
                file.set_len(keep as u64).map_err(io("repairing"))?;
            }
        }
        file.seek(SeekFrom::End(0)).map_err(io("seeking"))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one exchange (one line).
    pub fn append(&self, x: &Exchange) -> Result<(), CassetteError> {
        let mut line = serde_json::to_vec(x).map_err(|e| CassetteError::Io {
            what: "encoding",
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line).map_err(|source| CassetteError::Io {
            what: "appending",
            path: self.path.clone(),
            source,
        })
    }
}

fn parse_header(path: &Path, text: &[u8]) -> Result<Header, CassetteError> {
    let Some(end) = text.iter().position(|&b| b == b'\n') else {
        return Err(CassetteError::NoHeader {
            path: path.to_path_buf(),
        });
    };
    let v: serde_json::Value =
        serde_json::from_slice(&text[..end]).map_err(|_| CassetteError::BadHeader {
            path: path.to_path_buf(),
        })?;
    let found = v
        .get("hull_cassette")
        .and_then(|x| x.as_u64())
        .ok_or_else(|| CassetteError::BadHeader {
            path: path.to_path_buf(),
        })?;
    if found != u64::from(FORMAT_VERSION) {
        return Err(CassetteError::Version {
            path: path.to_path_buf(),
            found: u32::try_from(found).unwrap_or(u32::MAX),
        });
    }
    serde_json::from_value(v).map_err(|_| CassetteError::BadHeader {
        path: path.to_path_buf(),
    })
}

/// A loaded cassette.
#[derive(Debug)]
pub struct Cassette {
    path: PathBuf,
    sandbox: String,
    exchanges: Vec<Exchange>,
    index: HashMap<Key, Vec<usize>>,
    torn_tail: bool,
}

impl Cassette {
    /// Read and check a whole cassette.
    pub fn load(path: &Path) -> Result<Cassette, CassetteError> {
        let text = fs::read(path).map_err(|source| CassetteError::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        let header = parse_header(path, &text)?;
        let mut exchanges = Vec::new();
        let mut index: HashMap<Key, Vec<usize>> = HashMap::new();
        let mut torn_tail = false;
        let mut rest = &text[text.iter().position(|&b| b == b'\n').unwrap_or(0) + 1..];
        let mut line_no = 1;
        while !rest.is_empty() {
            line_no += 1;
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                torn_tail = true;
                tracing::warn!(path = %path.display(), line = line_no, "cassette: ignoring a torn last record");
                break;
            };
            let line = &rest[..end];
            rest = &rest[end + 1..];
            let corrupt = |why: String| CassetteError::Corrupt {
                path: path.to_path_buf(),
                line: line_no,
                why,
            };
            let x: Exchange = serde_json::from_slice(line)
                .map_err(|e| corrupt(format!("not an exchange: {e}")))?;
            x.request.body.bytes().map_err(corrupt)?;
            x.response.body.bytes().map_err(corrupt)?;
            if x.request.body_sha256.len() != 64 {
                return Err(corrupt("bad body_sha256".into()));
            }
            index
                .entry(Key::of(&x.request))
                .or_default()
                .push(exchanges.len());
            exchanges.push(x);
        }
        Ok(Cassette {
            path: path.to_path_buf(),
            sandbox: header.sandbox,
            exchanges,
            index,
            torn_tail,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sandbox that recorded it.
    pub fn sandbox(&self) -> &str {
        &self.sandbox
    }

    /// Every exchange, in recording order.
    pub fn exchanges(&self) -> &[Exchange] {
        &self.exchanges
    }

    /// Whether a torn last record (a crash mid-write) was ignored.
    pub fn torn_tail(&self) -> bool {
        self.torn_tail
    }

    /// The `n`-th (0-based) exchange recorded with `key`; past the last,
    /// the last.
    pub fn lookup(&self, key: &Key, n: usize) -> Option<&Exchange> {
        let v = self.index.get(key)?;
        let i = v.get(n).or_else(|| v.last())?;
        self.exchanges.get(*i)
    }
}

/// Where the daemon keeps the cassette a `record` sandbox writes:
/// `<state_dir>/net/cassettes/<sandbox id>.hcas`.
pub fn recording_path(state_dir: &Path, sandbox_id: &str) -> PathBuf {
    state_dir
        .join("net")
        .join("cassettes")
        .join(format!("{sandbox_id}.hcas"))
}

/// Where the daemon keeps the cassette attached to a snapshot (copied from
/// the recording with [`copy_complete`] when the snapshot is taken; read by
/// `replay` sandboxes made from it): `<state_dir>/net/cassettes/snap-<id>.hcas`.
pub fn snapshot_path(state_dir: &Path, snapshot_id: &str) -> PathBuf {
    state_dir
        .join("net")
        .join("cassettes")
        .join(format!("snap-{snapshot_id}.hcas"))
}

/// Copy the complete records of cassette `src` to `dst` (a temporary file
/// renamed into place), safe while a [`Recorder`] appends to `src`: only
/// bytes up to the last newline are copied. For attaching a recording
/// sandbox's cassette to its snapshot.
pub fn copy_complete(src: &Path, dst: &Path) -> Result<u64, CassetteError> {
    let io = |what, p: &Path| {
        let path = p.to_path_buf();
        move |source| CassetteError::Io { what, path, source }
    };
    let text = fs::read(src).map_err(io("reading", src))?;
    parse_header(src, &text)?;
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(io("creating the directory of", dst))?;
    }
    let tmp = dst.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io("writing", &tmp))?;
        f.write_all(&text[..keep]).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("writing", &tmp))?;
    }
    fs::rename(&tmp, dst).map_err(io("renaming into", dst))?;
    Ok(keep as u64)
}

/// Attach a sandbox's cassette to a snapshot: [`copy_complete`] from
/// `src` to `dst`, or, when the sandbox has recorded nothing yet (no
/// `src`), an empty cassette (header only) at `dst`, so that a `replay`
/// sandbox made from the snapshot replays "nothing recorded" (every
/// request a miss) rather than fail to load. Returns the bytes written.
pub fn attach_to_snapshot(src: &Path, dst: &Path, sandbox_id: &str) -> Result<u64, CassetteError> {
    if src.exists() {
        return copy_complete(src, dst);
    }
    let tmp = dst.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    Recorder::open(&tmp, sandbox_id)?;
    fs::rename(&tmp, dst).map_err(|source| CassetteError::Io {
        what: "renaming into",
        path: dst.to_path_buf(),
        source,
    })?;
    Ok(fs::metadata(dst).map_or(0, |m| m.len()))
}

/// The open recorders and loaded cassettes of the interceptor, so that all
/// connections of a sandbox share one file and one replay position.
#[derive(Debug, Default)]
pub struct CassetteSet {
    recorders: Mutex<HashMap<PathBuf, Arc<Recorder>>>,
    replays: Mutex<HashMap<(String, PathBuf), Arc<Replay>>>,
}

/// One sandbox's replay of a cassette: the cassette and how many times
/// each key was asked for so far.
#[derive(Debug)]
pub struct Replay {
    cassette: Cassette,
    seen: Mutex<HashMap<Key, usize>>,
}

impl Replay {
    pub fn new(cassette: Cassette) -> Replay {
        Replay {
            cassette,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for the next request with `key` (`None`: a miss).
    pub fn next(&self, key: &Key) -> Option<&Exchange> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let n = seen.entry(key.clone()).or_insert(0);
        let x = self.cassette.lookup(key, *n)?;
        *n += 1;
        Some(x)
    }

    pub fn cassette(&self) -> &Cassette {
        &self.cassette
    }
}

impl CassetteSet {
    pub fn new() -> CassetteSet {
        CassetteSet::default()
    }

    /// The recorder appending to `path` (opened on first use).
    pub fn recorder(&self, path: &Path, sandbox_id: &str) -> Result<Arc<Recorder>, CassetteError> {
        let mut m = self.recorders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = m.get(path) {
            return Ok(r.clone());
        }
        let r = Arc::new(Recorder::open(path, sandbox_id)?);
        m.insert(path.to_path_buf(), r.clone());
        Ok(r)
    }

    /// Sandbox `sandbox_id`'s replay of `path` (loaded on first use).
    pub fn replay(&self, path: &Path, sandbox_id: &str) -> Result<Arc<Replay>, CassetteError> {
        let key = (sandbox_id.to_string(), path.to_path_buf());
        let mut m = self.replays.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = m.get(&key) {
            return Ok(r.clone());
        }
        let r = Arc::new(Replay::new(Cassette::load(path)?));
        m.insert(key, r.clone());
        Ok(r)
    }

    /// Close the recorder of `path` and drop every replay of `sandbox_id`
    /// (when a sandbox is removed or its policy changes).
    pub fn forget(&self, sandbox_id: &str, path: Option<&Path>) {
        if let Some(p) = path {
            self.recorders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(p);
        }
        self.replays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(s, _), _| s != sandbox_id);
    }
}
