//! The host side of the protocol: one async client per guest agent socket.
//!
//! Each operation opens its own connection (see the crate docs), so a
//! [`GuestClient`] is just the socket path and the negotiated version; it is
//! cheap to share. Streams (file content, tar archives, process output, TCP)
//! are returned as readers or handles that own their connection.
//!
//! Limits: no retries and no timeouts here: callers bound what they wait for.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::{
    CHUNK, CODE_PROTOCOL_VERSION, CODE_STREAM_PROTOCOL_VERSION, CodeOutput, CodeRunDone,
    CodeRunSpec, ExecInput, ExecSpec, ExitStatus, FileStat, Frame, GuestError, KernelInfo,
    MAX_FRAME, MAX_SHELL_OUTPUT, MIN_PROTOCOL_VERSION, Op, PROTOCOL_VERSION, ProcInfo, ProtoError,
    Request, Response, SHELL_PROTOCOL_VERSION, ShellInfo, ShellOpenSpec, ShellRunDone,
    ShellRunSpec, ShellSendDone, ShellSendSpec, WATCH_PROTOCOL_VERSION, WatchEvent, negotiate,
    read_frame, write_frame,
};

/// What can go wrong talking to a guest.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The guest answered with an error.
    #[error("{}", .0.message)]
    Guest(GuestError),
    #[error("cannot reach the guest agent at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("i/o error on a guest agent connection")]
    Io(#[from] io::Error),
    /// Reading the data to upload (file content, a tar stream) failed.
    #[error("reading the data to send to the guest")]
    Body(#[source] io::Error),
    #[error(transparent)]
    Proto(ProtoError),
    #[error(
        "the guest speaks protocol versions {min}..={max}; this host speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
    )]
    Version { min: u32, max: u32 },
    /// The guest is older than the operation needs.
    #[error(
        "the sandbox's guest agent speaks protocol version {have}; {what} needs version {need} (recreate the sandbox with a newer hull)"
    )]
    Unsupported {
        what: &'static str,
        need: u32,
        have: u32,
    },
    #[error("unexpected answer from the guest: {0}")]
    Unexpected(String),
}

impl From<ProtoError> for ClientError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::Io(e) => ClientError::Io(e),
            other => ClientError::Proto(other),
        }
    }
}

/// A reader of bytes the guest streams to us.
pub type ByteStream = Pin<Box<dyn AsyncRead + Send + 'static>>;

/// A client for one guest agent.
#[derive(Debug, Clone)]
pub struct GuestClient {
    socket: PathBuf,
    version: u32,
    agent: String,
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Error(e) => ClientError::Guest(e),
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

async fn recv(conn: &mut (impl AsyncRead + Unpin)) -> Result<Response, ClientError> {
    let f = read_frame(conn).await?;
    Ok(f.parse()?)
}

impl GuestClient {
    /// Connect, learn the guest's protocol range and pick a version.
    pub async fn connect(socket: &Path) -> Result<GuestClient, ClientError> {
        let mut conn =
            UnixStream::connect(socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: socket.to_path_buf(),
                    source,
                })?;
        let hello = Request::new(Op::Hello {
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        });
        write_frame(&mut conn, &Frame::control(&hello)?).await?;
        match recv(&mut conn).await? {
            Response::Hello { min, max, agent } => {
                let version = negotiate((MIN_PROTOCOL_VERSION, PROTOCOL_VERSION), (min, max))
                    .ok_or(ClientError::Version { min, max })?;
                Ok(GuestClient {
                    socket: socket.to_path_buf(),
                    version,
                    agent,
                })
            }
            other => Err(unexpected(other)),
        }
    }

    /// The protocol version used with this guest.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The guest agent's build version.
    pub fn agent_version(&self) -> &str {
        &self.agent
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Open a connection and send `op`.
    async fn open(&self, op: Op) -> Result<UnixStream, ClientError> {
        let mut conn =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let req = Request {
            v: self.version,
            op,
        };
        write_frame(&mut conn, &Frame::control(&req)?).await?;
        Ok(conn)
    }

    /// Send `op` and expect a single answer.
    async fn call(&self, op: Op) -> Result<Response, ClientError> {
        let mut conn = self.open(op).await?;
        match recv(&mut conn).await? {
            Response::Error(e) => Err(ClientError::Guest(e)),
            r => Ok(r),
        }
    }

    async fn call_ok(&self, op: Op) -> Result<(), ClientError> {
        match self.call(op).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Start a process; returns once the guest reports it started.
    pub async fn exec(&self, spec: ExecSpec) -> Result<ExecHandle, ClientError> {
        let conn = self.open(Op::Exec(spec)).await?;
        ExecHandle::started(conn).await
    }

    /// Reattach to a background process (replaying buffered output first).
    pub async fn attach(&self, id: &str, replay: bool) -> Result<ExecHandle, ClientError> {
        let conn = self
            .open(Op::Attach {
                id: id.to_string(),
                replay,
            })
            .await?;
        ExecHandle::started(conn).await
    }

    pub async fn procs(&self) -> Result<Vec<ProcInfo>, ClientError> {
        match self.call(Op::Procs).await? {
            Response::Procs { procs } => Ok(procs),
            other => Err(unexpected(other)),
        }
    }

    pub async fn signal(&self, id: &str, signal: i32) -> Result<(), ClientError> {
        self.call_ok(Op::Signal {
            id: id.to_string(),
            signal,
        })
        .await
    }

    /// A file's metadata and a reader of (part of) its content.
    pub async fn read(
        &self,
        path: &str,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<(FileStat, ByteStream), ClientError> {
        let mut conn = self
            .open(Op::Read {
                path: path.to_string(),
                offset,
                limit,
            })
            .await?;
        match recv(&mut conn).await? {
            Response::Stat(st) => Ok((st, data_reader(conn, None))),
            other => Err(unexpected(other)),
        }
    }

    /// Replace a file atomically with what `body` yields.
    pub async fn write(
        &self,
        path: &str,
        mode: Option<u32>,
        parents: bool,
        max_bytes: Option<u64>,
        body: impl AsyncRead + Send + Unpin,
    ) -> Result<FileStat, ClientError> {
        let conn = self
            .open(Op::Write {
                path: path.to_string(),
                mode,
                parents,
                max_bytes,
            })
            .await?;
        match upload(conn, body).await? {
            Response::Stat(st) => Ok(st),
            other => Err(unexpected(other)),
        }
    }

    pub async fn stat(&self, path: &str) -> Result<FileStat, ClientError> {
        match self
            .call(Op::Stat {
                path: path.to_string(),
            })
            .await?
        {
            Response::Stat(st) => Ok(st),
            other => Err(unexpected(other)),
        }
    }

    /// Entries under `path`, `depth` levels deep, and whether the list was cut.
    pub async fn list(&self, path: &str, depth: u32) -> Result<(Vec<FileStat>, bool), ClientError> {
        match self
            .call(Op::List {
                path: path.to_string(),
                depth,
            })
            .await?
        {
            Response::Entries { entries, truncated } => Ok((entries, truncated)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn mkdir(
        &self,
        path: &str,
        parents: bool,
        mode: Option<u32>,
    ) -> Result<(), ClientError> {
        self.call_ok(Op::Mkdir {
            path: path.to_string(),
            parents,
            mode,
        })
        .await
    }

    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), ClientError> {
        self.call_ok(Op::Remove {
            path: path.to_string(),
            recursive,
        })
        .await
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ClientError> {
        self.call_ok(Op::Rename {
            from: from.to_string(),
            to: to.to_string(),
        })
        .await
    }

    /// A tar stream of a file or directory.
    pub async fn tar_get(&self, path: &str) -> Result<ByteStream, ClientError> {
        let mut conn = self
            .open(Op::TarGet {
                path: path.to_string(),
            })
            .await?;
        // The first frame is data (or an error).
        let first = read_frame(&mut conn).await?;
        match first {
            Frame::Control(_) => Err(unexpected(first.parse()?)),
            Frame::Data(d) => Ok(data_reader(conn, Some(d))),
            Frame::Eof => Ok(Box::pin(tokio::io::empty())),
            other => Err(ClientError::Unexpected(format!(
                "a {} frame",
                other.kind_name()
            ))),
        }
    }

    /// Unpack a tar stream into a directory.
    pub async fn tar_put(
        &self,
        path: &str,
        max_bytes: Option<u64>,
        body: impl AsyncRead + Send + Unpin,
    ) -> Result<(), ClientError> {
        let conn = self
            .open(Op::TarPut {
                path: path.to_string(),
                max_bytes,
            })
            .await?;
        match upload(conn, body).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn need_code(&self) -> Result<(), ClientError> {
        if self.version < CODE_PROTOCOL_VERSION {
            return Err(ClientError::Unsupported {
                what: "code interpreter contexts",
                need: CODE_PROTOCOL_VERSION,
                have: self.version,
            });
        }
        Ok(())
    }

    /// Start a code-interpreter context; returns the kernel's pid.
    pub async fn kernel_start(&self, context: &str, language: &str) -> Result<i32, ClientError> {
        self.need_code()?;
        match self
            .call(Op::KernelStart {
                context: context.to_string(),
                language: language.to_string(),
            })
            .await?
        {
            Response::KernelStarted { pid } => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    /// Run code in a context.
    pub async fn code_run(&self, spec: CodeRunSpec) -> Result<CodeRunDone, ClientError> {
        self.need_code()?;
        match self.call(Op::CodeRun(spec)).await? {
            Response::CodeRan(done) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    /// Run code in a context, streaming its outputs: returns once the run
    /// is with the kernel (an unknown context is an error here). Dropping
    /// the stream closes the connection, which interrupts the code.
    /// Needs protocol version 4 ([`ClientError::Unsupported`] before).
    pub async fn code_run_stream(&self, spec: CodeRunSpec) -> Result<CodeStream, ClientError> {
        if self.version < CODE_STREAM_PROTOCOL_VERSION {
            return Err(ClientError::Unsupported {
                what: "streamed code runs",
                need: CODE_STREAM_PROTOCOL_VERSION,
                have: self.version,
            });
        }
        let mut conn = self.open(Op::CodeRunStream(spec)).await?;
        match recv(&mut conn).await? {
            Response::Ok => Ok(CodeStream { conn, done: false }),
            other => Err(unexpected(other)),
        }
    }

    /// Watch a directory: returns once the guest watches it (a missing
    /// path, a file, or too many watches is an error here). Dropping the
    /// stream closes the connection, which ends the watch in the guest.
    /// Needs protocol version 5 ([`ClientError::Unsupported`] before).
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<WatchStream, ClientError> {
        if self.version < WATCH_PROTOCOL_VERSION {
            return Err(ClientError::Unsupported {
                what: "directory watches",
                need: WATCH_PROTOCOL_VERSION,
                have: self.version,
            });
        }
        let mut conn = self
            .open(Op::WatchStart {
                path: path.to_string(),
                recursive,
            })
            .await?;
        match recv(&mut conn).await? {
            Response::Ok => Ok(WatchStream { conn }),
            other => Err(unexpected(other)),
        }
    }

    pub async fn kernel_interrupt(&self, context: &str) -> Result<(), ClientError> {
        self.need_code()?;
        self.call_ok(Op::KernelInterrupt {
            context: context.to_string(),
        })
        .await
    }

    /// Restart a context's kernel; returns the new pid.
    pub async fn kernel_restart(&self, context: &str) -> Result<i32, ClientError> {
        self.need_code()?;
        match self
            .call(Op::KernelRestart {
                context: context.to_string(),
            })
            .await?
        {
            Response::KernelStarted { pid } => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    pub async fn kernel_stop(&self, context: &str) -> Result<(), ClientError> {
        self.need_code()?;
        self.call_ok(Op::KernelStop {
            context: context.to_string(),
        })
        .await
    }

    pub async fn kernel_list(&self) -> Result<Vec<KernelInfo>, ClientError> {
        self.need_code()?;
        match self.call(Op::KernelList).await? {
            Response::Kernels { contexts } => Ok(contexts),
            other => Err(unexpected(other)),
        }
    }

    fn need_shells(&self) -> Result<(), ClientError> {
        if self.version < SHELL_PROTOCOL_VERSION {
            return Err(ClientError::Unsupported {
                what: "shell sessions",
                need: SHELL_PROTOCOL_VERSION,
                have: self.version,
            });
        }
        Ok(())
    }

    /// Start a shell session; returns the shell's pid.
    pub async fn shell_open(&self, spec: ShellOpenSpec) -> Result<i32, ClientError> {
        self.need_shells()?;
        match self.call(Op::ShellOpen(spec)).await? {
            Response::ShellOpened { pid } => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    /// Run a command in a session: its output (UTF-8) and how it ended.
    pub async fn shell_run(
        &self,
        spec: ShellRunSpec,
    ) -> Result<(String, ShellRunDone), ClientError> {
        self.need_shells()?;
        let mut conn = self.open(Op::ShellRun(spec)).await?;
        match shell_output(&mut conn).await? {
            (out, Response::ShellRan(done)) => Ok((out, done)),
            (_, other) => Err(unexpected(other)),
        }
    }

    /// Type into a session's terminal: the output that followed and how
    /// the wait ended.
    pub async fn shell_send(
        &self,
        spec: ShellSendSpec,
    ) -> Result<(String, ShellSendDone), ClientError> {
        self.need_shells()?;
        let mut conn = self.open(Op::ShellSend(spec)).await?;
        match shell_output(&mut conn).await? {
            (out, Response::ShellSent(done)) => Ok((out, done)),
            (_, other) => Err(unexpected(other)),
        }
    }

    pub async fn shell_close(&self, session: &str) -> Result<(), ClientError> {
        self.need_shells()?;
        self.call_ok(Op::ShellClose {
            session: session.to_string(),
        })
        .await
    }

    pub async fn shell_list(&self) -> Result<Vec<ShellInfo>, ClientError> {
        self.need_shells()?;
        match self.call(Op::ShellList).await? {
            Response::Shells { sessions } => Ok(sessions),
            other => Err(unexpected(other)),
        }
    }

    /// A byte stream to a TCP port on the sandbox's loopback.
    pub async fn connect_tcp(&self, port: u16) -> Result<TcpTunnel, ClientError> {
        let mut conn = self.open(Op::Connect { port, host: None }).await?;
        match recv(&mut conn).await? {
            Response::Connected => Ok(TcpTunnel::new(conn)),
            other => Err(unexpected(other)),
        }
    }
}

/// `Data` frames (the output of a shell call, at most
/// [`MAX_SHELL_OUTPUT`] plus the truncation note), then one answer.
async fn shell_output(conn: &mut UnixStream) -> Result<(String, Response), ClientError> {
    let mut out = Vec::new();
    loop {
        match read_frame(conn).await? {
            Frame::Data(d) => {
                if out.len() + d.len() > MAX_SHELL_OUTPUT as usize + CHUNK {
                    return Err(ClientError::Unexpected(
                        "a shell call's output exceeds its budget".into(),
                    ));
                }
                out.extend_from_slice(&d);
            }
            f @ Frame::Control(_) => {
                let r: Response = f.parse()?;
                return Ok((String::from_utf8_lossy(&out).into_owned(), r));
            }
            other => {
                return Err(ClientError::Unexpected(format!(
                    "a {} frame in a shell call's output",
                    other.kind_name()
                )));
            }
        }
    }
}

/// Send `body` as data frames and an EOF, then read the answer. If the
/// guest stops reading (it refused the upload), its answer wins.
async fn upload(
    conn: UnixStream,
    mut body: impl AsyncRead + Send + Unpin,
) -> Result<Response, ClientError> {
    let (mut rd, mut wr) = conn.into_split();
    let mut buf = vec![0u8; CHUNK];
    let sent: Result<(), ClientError> = async {
        loop {
            let n = body.read(&mut buf).await.map_err(ClientError::Body)?;
            if n == 0 {
                break;
            }
            write_frame(&mut wr, &Frame::Data(buf[..n].to_vec())).await?;
        }
        write_frame(&mut wr, &Frame::Eof).await?;
        Ok(())
    }
    .await;
    if let Err(e @ ClientError::Body(_)) = sent {
        // The guest still waits for data: dropping the connection without
        // an `Eof` abandons the upload.
        return Err(e);
    }
    match (sent, recv(&mut rd).await) {
        (_, Ok(Response::Error(e))) => Err(ClientError::Guest(e)),
        (Ok(()), Ok(r)) => Ok(r),
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e),
    }
}

/// Turn `Data` frames up to `Eof` into a byte stream (after `first`, if
/// any). A guest error or a connection that ends early becomes an I/O error
/// of the reader, never silently short data.
fn data_reader(conn: UnixStream, first: Option<Vec<u8>>) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
    tokio::spawn(async move {
        let mut conn = conn;
        if let Some(d) = first
            && tx.send(Ok(d)).await.is_err()
        {
            return;
        }
        loop {
            let item = match read_frame(&mut conn).await {
                Ok(Frame::Data(d)) => Ok(d),
                Ok(Frame::Eof) => return,
                Ok(f @ Frame::Control(_)) => Err(match f.parse::<Response>() {
                    Ok(Response::Error(e)) => io::Error::other(e.message),
                    _ => io::Error::other("unexpected message in a data stream"),
                }),
                Ok(other) => Err(io::Error::other(format!(
                    "unexpected {} frame in a data stream",
                    other.kind_name()
                ))),
                Err(ProtoError::Closed) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the guest closed the stream before its end",
                )),
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    Box::pin(ChanReader {
        rx,
        buf: Vec::new(),
        pos: 0,
    })
}

struct ChanReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl AsyncRead for ChanReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        while self.pos >= self.buf.len() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    self.buf = d;
                    self.pos = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = out.remaining().min(self.buf.len() - self.pos);
        let pos = self.pos;
        out.put_slice(&self.buf[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Output of a process.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecOutput {
    Stdout { ts_micros: u64, data: Vec<u8> },
    Stderr { ts_micros: u64, data: Vec<u8> },
    Exited(ExitStatus),
}

/// A running process: its output, and input to it.
pub struct ExecHandle {
    pub id: String,
    pub pid: i32,
    input: ExecInputHalf,
    output: ExecOutputHalf,
}

impl ExecHandle {
    async fn started(mut conn: UnixStream) -> Result<ExecHandle, ClientError> {
        match recv(&mut conn).await? {
            Response::Started { id, pid } => {
                let (rd, wr) = conn.into_split();
                Ok(ExecHandle {
                    input: ExecInputHalf { wr: Some(wr) },
                    output: ExecOutputHalf {
                        id: id.clone(),
                        pid,
                        rd,
                        done: false,
                    },
                    id,
                    pid,
                })
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.input.stdin(data).await
    }
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        self.input.close_stdin().await
    }
    pub async fn signal(&mut self, signal: i32) -> Result<(), ClientError> {
        self.input.signal(signal).await
    }
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.input.resize(rows, cols).await
    }
    pub async fn next(&mut self) -> Result<ExecOutput, ClientError> {
        self.output.next().await
    }
    /// Separate input and output, to drive them from different tasks.
    pub fn split(self) -> (ExecInputHalf, ExecOutputHalf) {
        (self.input, self.output)
    }
}

/// Sends stdin, signals and resizes to a process.
pub struct ExecInputHalf {
    wr: Option<OwnedWriteHalf>,
}

impl ExecInputHalf {
    fn wr(&mut self) -> Result<&mut OwnedWriteHalf, ClientError> {
        self.wr
            .as_mut()
            .ok_or_else(|| ClientError::Unexpected("the connection is closed".into()))
    }
    pub async fn stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(CHUNK) {
            write_frame(self.wr()?, &Frame::Data(chunk.to_vec())).await?;
        }
        Ok(())
    }
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        write_frame(self.wr()?, &Frame::Eof).await?;
        Ok(())
    }
    pub async fn signal(&mut self, signal: i32) -> Result<(), ClientError> {
        write_frame(self.wr()?, &Frame::control(&ExecInput::Signal { signal })?).await?;
        Ok(())
    }
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        write_frame(
            self.wr()?,
            &Frame::control(&ExecInput::Resize { rows, cols })?,
        )
        .await?;
        Ok(())
    }
}

/// Receives a process's output and its exit status.
pub struct ExecOutputHalf {
    pub id: String,
    pub pid: i32,
    rd: OwnedReadHalf,
    done: bool,
}

impl ExecOutputHalf {
    /// The next piece of output, or the exit status (last).
    pub async fn next(&mut self) -> Result<ExecOutput, ClientError> {
        if self.done {
            return Err(ClientError::Unexpected("the process already exited".into()));
        }
        match read_frame(&mut self.rd).await? {
            Frame::Stdout { ts_micros, data } => Ok(ExecOutput::Stdout { ts_micros, data }),
            Frame::Stderr { ts_micros, data } => Ok(ExecOutput::Stderr { ts_micros, data }),
            f @ Frame::Control(_) => match f.parse::<Response>()? {
                Response::Exited(st) => {
                    self.done = true;
                    Ok(ExecOutput::Exited(st))
                }
                other => Err(unexpected(other)),
            },
            other => Err(ClientError::Unexpected(format!(
                "a {} frame during exec",
                other.kind_name()
            ))),
        }
    }
}

/// What a streamed code run yields: outputs, then how it ended (last).
#[derive(Debug, Clone, PartialEq)]
pub enum CodeStreamItem {
    Output(CodeOutput),
    Done(CodeRunDone),
}

/// The outputs of a streamed code run, as the kernel produces them.
pub struct CodeStream {
    conn: UnixStream,
    done: bool,
}

impl CodeStream {
    /// The next output, or the run's end (last; its outputs are empty).
    pub async fn next(&mut self) -> Result<CodeStreamItem, ClientError> {
        if self.done {
            return Err(ClientError::Unexpected("the run already ended".into()));
        }
        match recv(&mut self.conn).await? {
            Response::CodeOutput { output } => Ok(CodeStreamItem::Output(output)),
            Response::CodeRan(d) => {
                self.done = true;
                Ok(CodeStreamItem::Done(d))
            }
            other => {
                self.done = true;
                Err(unexpected(other))
            }
        }
    }
}

/// The changes in a watched directory, as the guest reports them.
pub struct WatchStream {
    conn: UnixStream,
}

impl WatchStream {
    /// The next batch of events (never empty). An error ends the watch:
    /// the guest's (the directory went away) or the connection's.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, ClientError> {
        loop {
            match recv(&mut self.conn).await? {
                Response::WatchEvents { events } if events.is_empty() => continue,
                Response::WatchEvents { events } => return Ok(events),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Ask the guest to end the watch and close the connection.
    pub async fn stop(mut self) {
        let _ = write_frame(&mut self.conn, &Frame::Eof).await;
    }
}

/// A TCP connection inside the sandbox, as a byte stream.
pub struct TcpTunnel {
    inner: tokio::io::DuplexStream,
}

impl TcpTunnel {
    fn new(conn: UnixStream) -> TcpTunnel {
        let (ours, theirs) = tokio::io::duplex(CHUNK * 2);
        let (mut trd, mut twr) = tokio::io::split(theirs);
        let (mut crd, mut cwr) = conn.into_split();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // guest -> user
            let down = async {
                while let Ok(Frame::Data(d)) = read_frame(&mut crd).await {
                    if twr.write_all(&d).await.is_err() {
                        break;
                    }
                }
                let _ = twr.shutdown().await;
            };
            // user -> guest
            let up = async {
                let mut buf = vec![0u8; CHUNK.min(MAX_FRAME - 1)];
                loop {
                    match trd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if write_frame(&mut cwr, &Frame::Data(buf[..n].to_vec()))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                let _ = write_frame(&mut cwr, &Frame::Eof).await;
            };
            tokio::join!(down, up);
        });
        TcpTunnel { inner: ours }
    }
}

impl AsyncRead for TcpTunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpTunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted guest: one that answers `hello` with a
    //! chosen version range and hands every other request to a closure. The
    //! real agent is exercised in `crates/guest/tests/agent_exec.rs`.

    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;
    use crate::{GuestErrorKind, PtySize};

    /// A socket path, removed on drop.
    struct Sock(PathBuf);

    impl Drop for Sock {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn fake_guest<F, Fut>(range: (u32, u32), serve: F) -> Sock
    where
        F: Fn(Request, UnixStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "hull-proto-client-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let serve = Arc::new(serve);
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let serve = serve.clone();
                tokio::spawn(async move {
                    let req: Request = read_frame(&mut c).await.unwrap().parse().unwrap();
                    if let Op::Hello { .. } = req.op {
                        let hello = Response::Hello {
                            min: range.0,
                            max: range.1,
                            agent: "scripted".into(),
                        };
                        write_frame(&mut c, &Frame::control(&hello).unwrap())
                            .await
                            .unwrap();
                        return;
                    }
                    serve(req, c).await
                });
            }
        });
        Sock(path)
    }

    async fn answer(c: &mut UnixStream, r: Response) {
        write_frame(c, &Frame::control(&r).unwrap()).await.unwrap();
    }

    #[tokio::test]
    async fn negotiates_and_uses_the_common_version() {
        let g = fake_guest((1, 7), |req, mut c| async move {
            let r = if req.v == PROTOCOL_VERSION {
                Response::Procs { procs: vec![] }
            } else {
                Response::Error(GuestError::new(GuestErrorKind::InvalidArgument, "version"))
            };
            answer(&mut c, r).await;
        });
        let client = GuestClient::connect(&g.0).await.unwrap();
        assert_eq!(client.version(), PROTOCOL_VERSION);
        assert_eq!(client.agent_version(), "scripted");
        assert!(client.procs().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn streamed_code_runs_yield_outputs_then_the_end_and_need_version_4() {
        let g = fake_guest((1, 4), |req, mut c| async move {
            let Op::CodeRunStream(spec) = req.op else {
                return;
            };
            if spec.context == "nope" {
                let e = GuestError::new(GuestErrorKind::NotFound, "no code context named nope");
                answer(&mut c, Response::Error(e)).await;
                return;
            }
            answer(&mut c, Response::Ok).await;
            for text in ["1\n", "2\n"] {
                let output = CodeOutput::Stdout { text: text.into() };
                answer(&mut c, Response::CodeOutput { output }).await;
            }
            let done = CodeRunDone {
                execution_count: Some(3),
                ..Default::default()
            };
            answer(&mut c, Response::CodeRan(done)).await;
        });
        let client = GuestClient::connect(&g.0).await.unwrap();
        let spec = |context: &str| CodeRunSpec {
            context: context.into(),
            code: "print(1); print(2)".into(),
            timeout_ms: None,
        };
        let mut s = client.code_run_stream(spec("a")).await.unwrap();
        let mut got = Vec::new();
        loop {
            match s.next().await.unwrap() {
                CodeStreamItem::Output(CodeOutput::Stdout { text }) => got.push(text),
                CodeStreamItem::Output(o) => panic!("{o:?}"),
                CodeStreamItem::Done(d) => {
                    assert_eq!(d.execution_count, Some(3));
                    break;
                }
            }
        }
        assert_eq!(got, ["1\n", "2\n"]);
        assert!(s.next().await.is_err(), "nothing after the end");
        match client.code_run_stream(spec("nope")).await {
            Err(ClientError::Guest(e)) => assert_eq!(e.kind, GuestErrorKind::NotFound),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // A version-3 guest is not asked at all.
        let old = fake_guest((1, 3), |_, _| async { panic!("asked a v3 guest") });
        let client = GuestClient::connect(&old.0).await.unwrap();
        assert!(matches!(
            client.code_run_stream(spec("a")).await,
            Err(ClientError::Unsupported {
                need: 4,
                have: 3,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn shell_calls_gather_output_and_need_version_2() {
        let g = fake_guest((1, 2), |req, mut c| async move {
            let Op::ShellRun(spec) = req.op else { return };
            assert_eq!(spec.command, "echo hi");
            for d in [&b"h"[..], b"i\n"] {
                write_frame(&mut c, &Frame::Data(d.to_vec())).await.unwrap();
            }
            let done = ShellRunDone {
                exit_code: Some(0),
                cwd: "/w".into(),
                ..Default::default()
            };
            answer(&mut c, Response::ShellRan(done)).await;
        });
        let client = GuestClient::connect(&g.0).await.unwrap();
        let (out, done) = client
            .shell_run(ShellRunSpec {
                session: "s".into(),
                command: "echo hi".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (out.as_str(), done.exit_code, done.cwd.as_str()),
            ("hi\n", Some(0), "/w")
        );
        // A version-1 guest is not asked at all.
        let old = fake_guest((1, 1), |_, _| async { panic!("asked a v1 guest") });
        let client = GuestClient::connect(&old.0).await.unwrap();
        assert!(matches!(
            client.shell_list().await,
            Err(ClientError::Unsupported {
                need: 2,
                have: 1,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn no_common_version_is_an_error() {
        let g = fake_guest((PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 5), |_, _| async {
        });
        match GuestClient::connect(&g.0).await {
            Err(ClientError::Version { min, max }) => {
                assert_eq!((min, max), (PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 5))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_socket_fails_fast() {
        let path = std::env::temp_dir().join("hull-proto-client-no-such.sock");
        let start = std::time::Instant::now();
        assert!(matches!(
            GuestClient::connect(&path).await,
            Err(ClientError::Connect { .. })
        ));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[tokio::test]
    async fn guest_errors_and_odd_answers() {
        let g = fake_guest((1, 1), |req, mut c| async move {
            let r = match req.op {
                Op::Stat { path } if path == "/missing" => Response::Error(GuestError::new(
                    GuestErrorKind::NotFound,
                    "/missing: no such file",
                )),
                // Not what a stat is answered with.
                Op::Stat { .. } => Response::Ok,
                Op::TarGet { .. } => {
                    Response::Error(GuestError::new(GuestErrorKind::PermissionDenied, "denied"))
                }
                _ => return,
            };
            answer(&mut c, r).await;
        });
        let client = GuestClient::connect(&g.0).await.unwrap();
        match client.stat("/missing").await {
            Err(ClientError::Guest(GuestError {
                kind,
                message,
                reason,
            })) => {
                assert_eq!(kind, GuestErrorKind::NotFound);
                assert_eq!(message, "/missing: no such file");
                assert_eq!(reason, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            client.stat("/odd").await,
            Err(ClientError::Unexpected(_))
        ));
        match client.tar_get("/x").await {
            Err(ClientError::Guest(e)) => assert_eq!(e.kind, GuestErrorKind::PermissionDenied),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a refused tar_get succeeded"),
        }
        // A guest that closes without answering.
        assert!(matches!(
            client.procs().await,
            Err(ClientError::Proto(ProtoError::Closed))
        ));
    }

    #[tokio::test]
    async fn a_read_stream_cut_short_is_an_error() {
        let g = fake_guest((1, 1), |req, mut c| async move {
            let Op::Read {
                path,
                offset,
                limit,
            } = req.op
            else {
                return;
            };
            assert_eq!((offset, limit), (3, Some(10)));
            let st = FileStat {
                path: path.clone(),
                kind: crate::FileType::File,
                size: 6,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                link_target: None,
            };
            answer(&mut c, Response::Stat(st)).await;
            write_frame(&mut c, &Frame::Data(b"abc".to_vec()))
                .await
                .unwrap();
            if path == "/whole" {
                write_frame(&mut c, &Frame::Data(b"def".to_vec()))
                    .await
                    .unwrap();
                write_frame(&mut c, &Frame::Eof).await.unwrap();
            }
            // "/cut": the connection closes without an Eof.
        });
        let client = GuestClient::connect(&g.0).await.unwrap();
        let (st, mut r) = client.read("/whole", 3, Some(10)).await.unwrap();
        assert_eq!(st.size, 6);
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"abcdef");
        let (_, mut r) = client.read("/cut", 3, Some(10)).await.unwrap();
        let mut buf = Vec::new();
        let e = r.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn exec_handles_stream_output_and_send_input() {
        let g = fake_guest((1, 1), |req, mut c| async move {
            let Op::Exec(spec) = req.op else { return };
            assert_eq!(spec.pty, Some(PtySize { rows: 2, cols: 3 }));
            answer(
                &mut c,
                Response::Started {
                    id: "p7".into(),
                    pid: 42,
                },
            )
            .await;
            // What the host must send, in order.
            let mut stdin = Vec::new();
            loop {
                match read_frame(&mut c).await.unwrap() {
                    Frame::Data(d) => stdin.extend_from_slice(&d),
                    Frame::Eof => break,
                    other => panic!("{other:?}"),
                }
            }
            let sig: ExecInput = read_frame(&mut c).await.unwrap().parse().unwrap();
            let resize: ExecInput = read_frame(&mut c).await.unwrap().parse().unwrap();
            let ok = stdin.len() == 2 * CHUNK + 1
                && sig == ExecInput::Signal { signal: 15 }
                && resize == ExecInput::Resize { rows: 5, cols: 6 };
            for f in [
                Frame::Stdout {
                    ts_micros: 1,
                    data: b"out".to_vec(),
                },
                Frame::Stderr {
                    ts_micros: 2,
                    data: b"err".to_vec(),
                },
            ] {
                write_frame(&mut c, &f).await.unwrap();
            }
            let st = ExitStatus {
                code: Some(if ok { 0 } else { 1 }),
                ..Default::default()
            };
            answer(&mut c, Response::Exited(st)).await;
        });
        let client = GuestClient::connect(&g.0).await.unwrap();
        let mut h = client
            .exec(ExecSpec {
                argv: vec!["x".into()],
                pty: Some(PtySize { rows: 2, cols: 3 }),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((h.id.as_str(), h.pid), ("p7", 42));
        h.stdin(&vec![b'z'; 2 * CHUNK + 1]).await.unwrap();
        h.close_stdin().await.unwrap();
        h.signal(15).await.unwrap();
        h.resize(5, 6).await.unwrap();
        let (_input, mut output) = h.split();
        assert_eq!((output.id.as_str(), output.pid), ("p7", 42));
        assert_eq!(
            output.next().await.unwrap(),
            ExecOutput::Stdout {
                ts_micros: 1,
                data: b"out".to_vec()
            }
        );
        assert_eq!(
            output.next().await.unwrap(),
            ExecOutput::Stderr {
                ts_micros: 2,
                data: b"err".to_vec()
            }
        );
        match output.next().await.unwrap() {
            ExecOutput::Exited(st) => assert_eq!(st.code, Some(0), "the guest saw wrong input"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            output.next().await,
            Err(ClientError::Unexpected(_))
        ));
    }

    /// A body that fails after some bytes.
    struct Failing(usize);

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(io::Error::other("disk on fire")));
            }
            let n = self.0.min(buf.remaining()).min(1000);
            buf.put_slice(&vec![b'q'; n]);
            self.0 -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn uploads_report_the_guests_refusal_and_body_errors() {
        let g = fake_guest((1, 1), |req, mut c| async move {
            match req.op {
                Op::Write { path, .. } if path == "/big" => {
                    // Refuse after the first frame, without reading the rest.
                    let _ = read_frame(&mut c).await;
                    answer(
                        &mut c,
                        Response::Error(GuestError::new(
                            GuestErrorKind::ResourceExhausted,
                            "over max_bytes",
                        )),
                    )
                    .await;
                }
                Op::Write { .. } | Op::TarPut { .. } => {
                    // Read to the end; a connection that closes without Eof
                    // is an abandoned upload and gets no answer.
                    loop {
                        match read_frame(&mut c).await {
                            Ok(Frame::Data(_)) => {}
                            Ok(Frame::Eof) => break,
                            _ => return,
                        }
                    }
                    answer(&mut c, Response::Ok).await;
                }
                _ => {}
            }
        });
        let client = GuestClient::connect(&g.0).await.unwrap();
        let body = io::Cursor::new(vec![0u8; 8 << 20]);
        match client.write("/big", None, false, Some(10), body).await {
            Err(ClientError::Guest(e)) => assert_eq!(e.kind, GuestErrorKind::ResourceExhausted),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            client.tar_put("/dir", None, Failing(5000)).await,
            Err(ClientError::Body(_))
        ));
        client
            .tar_put("/dir", None, io::Cursor::new(b"tar".to_vec()))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn tcp_tunnel_carries_bytes_both_ways() {
        let g = fake_guest((1, 1), |req, mut c| async move {
            let Op::Connect {
                port: 8080,
                host: None,
            } = req.op
            else {
                return;
            };
            answer(&mut c, Response::Connected).await;
            // Echo, reversed per frame, until the host half-closes.
            while let Ok(Frame::Data(mut d)) = read_frame(&mut c).await {
                d.reverse();
                write_frame(&mut c, &Frame::Data(d)).await.unwrap();
            }
            write_frame(&mut c, &Frame::Data(b"bye".to_vec()))
                .await
                .unwrap();
            write_frame(&mut c, &Frame::Eof).await.unwrap();
        });
        let client = GuestClient::connect(&g.0).await.unwrap();
        let mut t = client.connect_tcp(8080).await.unwrap();
        t.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        t.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"cba");
        t.shutdown().await.unwrap();
        let mut rest = Vec::new();
        t.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
    }
}
