//! The lifecycle controller: sandboxes, their states and transitions, the
//! persistent store, TTLs and idle timeouts, and re-adoption after a daemon
//! restart.
//!
//! Every transport (HTTP, MCP, CLI through HTTP) calls the methods of
//! [`Runtime`]; nothing else mutates sandbox state. Each method checks the
//! transition, acts on the substrate, persists the result and only then
//! returns (DESIGN.md invariant 3).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use hull_api::{
    ApiError, CreateSandbox, ExecClientMessage, ExecEvent, ExecRequest, ExecResult, FileInfo,
    FileList, HostInfo, Limits, ProcessList, ProcessStarted, Sandbox,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// A byte stream flowing into or out of a sandbox.
pub type ByteReader = Pin<Box<dyn AsyncRead + Send + 'static>>;

/// A bidirectional byte stream to a TCP port inside a sandbox.
pub trait DuplexStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> DuplexStream for T {}

/// Output budget of a buffered exec: stdout and stderr together.
pub const EXEC_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// Daemon settings the runtime needs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where the store, templates and per-sandbox files live (`/var/lib/hull`).
    pub state_dir: PathBuf,
    /// The statically linked guest agent binary.
    pub guest_binary: PathBuf,
    /// Limits applied where a request names none.
    pub defaults: Limits,
}

/// A running streaming exec (or an attach to a background process).
pub struct ExecStream {
    /// `started`, then output events, then `exit` (or `error`).
    pub events: mpsc::Receiver<ExecEvent>,
    /// Stdin bytes, EOF, signals and resizes for the process.
    pub input: mpsc::Sender<ExecClientMessage>,
}

/// The lifecycle controller. Cheap to share: wrap in an `Arc`.
pub struct Runtime {
    _private: (),
}

impl Runtime {
    /// Open (or create) the state directory, re-adopt live sandboxes, clean
    /// up half-created ones, and start the TTL/idle/OOM monitor.
    pub async fn open(config: RuntimeConfig) -> Result<Arc<Runtime>, ApiError> {
        let _ = config;
        todo!()
    }

    pub fn host_info(&self) -> HostInfo {
        todo!()
    }

    pub async fn create(&self, req: CreateSandbox) -> Result<Sandbox, ApiError> {
        let _ = req;
        todo!()
    }

    /// Look up by id or name.
    pub async fn get(&self, id_or_name: &str) -> Result<Sandbox, ApiError> {
        let _ = id_or_name;
        todo!()
    }

    /// All sandboxes carrying every given label.
    pub async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Sandbox>, ApiError> {
        let _ = labels;
        todo!()
    }

    pub async fn pause(&self, id: &str) -> Result<Sandbox, ApiError> {
        let _ = id;
        todo!()
    }

    pub async fn resume(&self, id: &str) -> Result<Sandbox, ApiError> {
        let _ = id;
        todo!()
    }

    /// Reset the TTL to `ttl_seconds` from now (0 removes it).
    pub async fn set_ttl(&self, id: &str, ttl_seconds: u64) -> Result<Sandbox, ApiError> {
        let _ = (id, ttl_seconds);
        todo!()
    }

    pub async fn destroy(&self, id: &str) -> Result<(), ApiError> {
        let _ = id;
        todo!()
    }

    /// Run a command to completion, buffering at most [`EXEC_OUTPUT_LIMIT`] bytes.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, ApiError> {
        let _ = (id, req);
        todo!()
    }

    /// Start a command in the background; it keeps running after the call.
    pub async fn exec_background(
        &self,
        id: &str,
        req: ExecRequest,
    ) -> Result<ProcessStarted, ApiError> {
        let _ = (id, req);
        todo!()
    }

    /// Start a command and stream its events; stdin and signals go through `input`.
    pub async fn exec_stream(&self, id: &str, req: ExecRequest) -> Result<ExecStream, ApiError> {
        let _ = (id, req);
        todo!()
    }

    /// Reattach to a background process: its buffered output, then live output.
    pub async fn attach(&self, id: &str, process: &str) -> Result<ExecStream, ApiError> {
        let _ = (id, process);
        todo!()
    }

    pub async fn processes(&self, id: &str) -> Result<ProcessList, ApiError> {
        let _ = id;
        todo!()
    }

    pub async fn signal_process(&self, id: &str, process: &str, signal: i32) -> Result<(), ApiError> {
        let _ = (id, process, signal);
        todo!()
    }

    /// A file's metadata and a reader of its content.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<(FileInfo, ByteReader), ApiError> {
        let _ = (id, path);
        todo!()
    }

    /// Replace a file atomically with `body` (at most `max_bytes`).
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        max_bytes: u64,
        body: ByteReader,
    ) -> Result<FileInfo, ApiError> {
        let _ = (id, path, mode, max_bytes, body);
        todo!()
    }

    pub async fn stat(&self, id: &str, path: &str) -> Result<FileInfo, ApiError> {
        let _ = (id, path);
        todo!()
    }

    pub async fn list_dir(&self, id: &str, path: &str, depth: u32) -> Result<FileList, ApiError> {
        let _ = (id, path, depth);
        todo!()
    }

    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<(), ApiError> {
        let _ = (id, path, parents);
        todo!()
    }

    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), ApiError> {
        let _ = (id, path, recursive);
        todo!()
    }

    pub async fn rename(&self, id: &str, from: &str, to: &str) -> Result<(), ApiError> {
        let _ = (id, from, to);
        todo!()
    }

    /// A tar stream of a file or directory.
    pub async fn tar_get(&self, id: &str, path: &str) -> Result<ByteReader, ApiError> {
        let _ = (id, path);
        todo!()
    }

    /// Unpack a tar stream (at most `max_bytes`) into a directory.
    pub async fn tar_put(
        &self,
        id: &str,
        path: &str,
        max_bytes: u64,
        body: ByteReader,
    ) -> Result<(), ApiError> {
        let _ = (id, path, max_bytes, body);
        todo!()
    }

    /// A byte stream to a TCP port inside the sandbox (for CDP, Jupyter, ports).
    pub async fn connect_tcp(&self, id: &str, port: u16) -> Result<Box<dyn DuplexStream>, ApiError> {
        let _ = (id, port);
        todo!()
    }

    /// Destroy every sandbox and remove everything this daemon made on the host
    /// (cgroups, mounts, its state under the state directory except the token).
    pub async fn system_reset(&self) -> Result<(), ApiError> {
        todo!()
    }

    /// Stop background tasks; sandboxes keep running.
    pub async fn shutdown(&self) {}
}
