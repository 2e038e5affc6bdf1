//! File operations on a running sandbox, relayed to its guest agent. Paths
//! are resolved by the agent as if chrooted into the sandbox: `..` and
//! symlinks never leave it.

use hull_api::{ApiError, FileInfo, FileList, ProcessInfo, ProcessList};
use hull_proto::{FileStat, FileType};

use crate::{ByteReader, DuplexStream, Runtime, guest_error};

/// Longest path accepted in a file call.
pub const MAX_PATH: usize = 4096;

fn check_path(path: &str) -> Result<(), ApiError> {
    if path.is_empty() {
        return Err(ApiError::invalid("path is empty"));
    }
    if path.len() > MAX_PATH || path.contains('\0') {
        return Err(ApiError::invalid(format!(
            "path must be at most {MAX_PATH} bytes without NUL"
        )));
    }
    Ok(())
}

pub(crate) fn file_info(s: FileStat) -> FileInfo {
    FileInfo {
        path: s.path,
        kind: match s.kind {
            FileType::File => "file",
            FileType::Dir => "dir",
            FileType::Symlink => "symlink",
            FileType::Other => "other",
        }
        .into(),
        size: s.size,
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        mtime: s.mtime,
        link_target: s.link_target,
    }
}

impl Runtime {
    /// A file's metadata and a reader of its content.
    pub async fn read_file(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(FileInfo, ByteReader), ApiError> {
        check_path(path)?;
        let (e, c) = self.running_client(id, "read files of")?;
        let (stat, reader) = c
            .read(path, 0, None)
            .await
            .map_err(|err| guest_error(&e.id(), err))?;
        Ok((file_info(stat), Box::pin(reader)))
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
        check_path(path)?;
        if let Some(m) = mode
            && m > 0o7777
        {
            return Err(ApiError::invalid(format!(
                "mode {m:o} is not a permission mode (at most 7777 octal)"
            )));
        }
        let (e, c) = self.running_client(id, "write files of")?;
        let stat = c
            .write(path, mode, true, Some(max_bytes), body)
            .await
            .map_err(|err| guest_error(&e.id(), err))?;
        Ok(file_info(stat))
    }

    pub async fn stat(&self, id: &str, path: &str) -> Result<FileInfo, ApiError> {
        check_path(path)?;
        let (e, c) = self.running_client(id, "stat files of")?;
        Ok(file_info(
            c.stat(path)
                .await
                .map_err(|err| guest_error(&e.id(), err))?,
        ))
    }

    pub async fn list_dir(&self, id: &str, path: &str, depth: u32) -> Result<FileList, ApiError> {
        check_path(path)?;
        if !(1..=32).contains(&depth) {
            return Err(ApiError::invalid(format!(
                "depth {depth} is outside 1..=32"
            )));
        }
        let (e, c) = self.running_client(id, "list files of")?;
        let (entries, truncated) = c
            .list(path, depth)
            .await
            .map_err(|err| guest_error(&e.id(), err))?;
        Ok(FileList {
            entries: entries.into_iter().map(file_info).collect(),
            truncated,
        })
    }

    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<(), ApiError> {
        check_path(path)?;
        let (e, c) = self.running_client(id, "create directories in")?;
        c.mkdir(path, parents, None)
            .await
            .map_err(|err| guest_error(&e.id(), err))
    }

    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), ApiError> {
        check_path(path)?;
        let (e, c) = self.running_client(id, "remove files of")?;
        c.remove(path, recursive)
            .await
            .map_err(|err| guest_error(&e.id(), err))
    }

    pub async fn rename(&self, id: &str, from: &str, to: &str) -> Result<(), ApiError> {
        check_path(from)?;
        check_path(to)?;
        let (e, c) = self.running_client(id, "rename files of")?;
        c.rename(from, to)
            .await
            .map_err(|err| guest_error(&e.id(), err))
    }

    /// A tar stream of a file or directory.
    pub async fn tar_get(&self, id: &str, path: &str) -> Result<ByteReader, ApiError> {
        check_path(path)?;
        let (e, c) = self.running_client(id, "download files of")?;
        let r = c
            .tar_get(path)
            .await
            .map_err(|err| guest_error(&e.id(), err))?;
        Ok(Box::pin(r))
    }

    /// Unpack a tar stream (at most `max_bytes`) into a directory.
    pub async fn tar_put(
        &self,
        id: &str,
        path: &str,
        max_bytes: u64,
        body: ByteReader,
    ) -> Result<(), ApiError> {
        check_path(path)?;
        let (e, c) = self.running_client(id, "upload files to")?;
        c.tar_put(path, Some(max_bytes), body)
            .await
            .map_err(|err| guest_error(&e.id(), err))
    }

    /// A byte stream to a TCP port inside the sandbox (for CDP, Jupyter, ports).
    pub async fn connect_tcp(
        &self,
        id: &str,
        port: u16,
    ) -> Result<Box<dyn DuplexStream>, ApiError> {
        if port == 0 {
            return Err(ApiError::invalid("port 0 is not a port"));
        }
        let (e, c) = self.running_client(id, "connect to")?;
        let t = c
            .connect_tcp(port)
            .await
            .map_err(|err| guest_error(&e.id(), err))?;
        Ok(Box::new(t))
    }

    pub async fn processes(&self, id: &str) -> Result<ProcessList, ApiError> {
        let (e, c) = self.running_client(id, "list processes of")?;
        let procs = c.procs().await.map_err(|err| guest_error(&e.id(), err))?;
        Ok(ProcessList {
            processes: procs
                .into_iter()
                .map(|p| ProcessInfo {
                    id: p.id,
                    pid: p.pid,
                    argv: p.argv,
                    background: p.background,
                    started_micros: p.started_micros,
                    running: p.exit.is_none(),
                    exit_code: p.exit.as_ref().and_then(|x| x.code),
                    signal: p.exit.as_ref().and_then(|x| x.signal),
                })
                .collect(),
        })
    }

    pub async fn signal_process(
        &self,
        id: &str,
        process: &str,
        signal: i32,
    ) -> Result<(), ApiError> {
        if !(1..=64).contains(&signal) {
            return Err(ApiError::invalid(format!(
                "signal {signal} is outside 1..=64"
            )));
        }
        if process.is_empty() || process.len() > 64 {
            return Err(ApiError::not_found(format!("no process {process:?}")));
        }
        let (e, c) = self.running_client(id, "signal processes of")?;
        c.signal(process, signal)
            .await
            .map_err(|err| guest_error(&e.id(), err))
    }
}
