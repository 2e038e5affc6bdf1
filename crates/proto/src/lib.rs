//! The host <-> guest protocol: framing, messages and versioning.
//!
//! One operation per connection. The host connects to the guest agent's unix
//! socket (or, later, a virtio channel), sends one [`Request`] frame, then
//! exchanges data frames for as long as the operation needs (stdin, output,
//! file content, a TCP stream) and closes. Keeping operations on separate
//! connections gives each one its own kernel back-pressure and lets either
//! side abandon an operation by closing its connection.
//!
//! A frame is a 4-byte big-endian length `N` (of what follows, at most
//! [`MAX_FRAME`]), a 1-byte [`FrameKind`] and `N - 1` bytes of body:
//! a JSON message for `Control`, raw bytes for `Data`, and for `Stdout` /
//! `Stderr` an 8-byte big-endian timestamp (microseconds since the Unix epoch)
//! followed by the bytes.
//!
//! Versioning: every request carries the protocol version the host speaks on
//! this connection. The host learns the guest's range once with
//! [`Op::Hello`] and speaks `min(host max, guest max)`, so a newer daemon
//! still talks to an older guest that keeps running across a daemon upgrade.
//! Version 2 added shell sessions (the `shell_*` operations), version 3
//! code-interpreter contexts (`kernel_*`, `code_run`), version 4 streamed
//! code runs (`code_run_stream`, answered with `code_output` messages),
//! version 5 directory watches (`watch_start`, answered with `watch_events`);
//! nothing else changed, so an older host is served exactly as before.
//! Messages only ever gain optional fields within a version
//! (`#[serde(default)]`); unknown fields are ignored.
//!
//! Limits: frames are capped at [`MAX_FRAME`] bytes; larger payloads are sent
//! as several data frames. Nothing here trusts the peer: every decode path
//! returns a [`ProtoError`] instead of panicking.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod client;
pub mod init;
pub mod messages;
pub use messages::*;

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 5;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// The largest frame (kind byte plus body) either side accepts.
pub const MAX_FRAME: usize = 1 << 20;
/// The largest chunk of raw bytes put in one data frame.
pub const CHUNK: usize = 64 * 1024;

/// What a frame's body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON [`Request`] or [`Response`].
    Control = 1,
    /// Raw bytes: stdin, file content, a tar stream, a TCP stream.
    Data = 2,
    /// Timestamped bytes a process wrote to its stdout (or its PTY).
    Stdout = 3,
    /// Timestamped bytes a process wrote to its stderr.
    Stderr = 4,
    /// End of the data stream in this direction (e.g. stdin closed).
    Eof = 5,
}

impl FrameKind {
    fn from_u8(b: u8) -> Result<Self, ProtoError> {
        Ok(match b {
            1 => Self::Control,
            2 => Self::Data,
            3 => Self::Stdout,
            4 => Self::Stderr,
            5 => Self::Eof,
            other => return Err(ProtoError::BadFrame(format!("unknown frame kind {other}"))),
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Control(Vec<u8>),
    Data(Vec<u8>),
    Stdout { ts_micros: u64, data: Vec<u8> },
    Stderr { ts_micros: u64, data: Vec<u8> },
    Eof,
}

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o error on guest connection")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    BadFrame(String),
    #[error("malformed message")]
    BadMessage(#[from] serde_json::Error),
    #[error("unexpected frame: {0}")]
    Unexpected(String),
}

impl Frame {
    /// A control frame holding `msg` as JSON.
    pub fn control<T: Serialize>(msg: &T) -> Result<Self, ProtoError> {
        Ok(Frame::Control(serde_json::to_vec(msg)?))
    }

    /// Decode a control frame's JSON into `T`.
    pub fn parse<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtoError> {
        match self {
            Frame::Control(body) => Ok(serde_json::from_slice(body)?),
            other => Err(ProtoError::Unexpected(format!(
                "expected a control message, got {}",
                other.kind_name()
            ))),
        }
    }

    /// A short name for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Control(_) => "control",
            Frame::Data(_) => "data",
            Frame::Stdout { .. } => "stdout",
            Frame::Stderr { .. } => "stderr",
            Frame::Eof => "eof",
        }
    }

    /// The encoded bytes of this frame, header included.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let (kind, ts, body): (FrameKind, Option<u64>, &[u8]) = match self {
            Frame::Control(b) => (FrameKind::Control, None, b),
            Frame::Data(b) => (FrameKind::Data, None, b),
            Frame::Stdout { ts_micros, data } => (FrameKind::Stdout, Some(*ts_micros), data),
            Frame::Stderr { ts_micros, data } => (FrameKind::Stderr, Some(*ts_micros), data),
            Frame::Eof => (FrameKind::Eof, None, &[]),
        };
        let len = 1 + ts.map_or(0, |_| 8) + body.len();
        if len > MAX_FRAME {
            return Err(ProtoError::BadFrame(format!(
                "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
            )));
        }
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(kind as u8);
        if let Some(ts) = ts {
            out.extend_from_slice(&ts.to_be_bytes());
        }
        out.extend_from_slice(body);
        Ok(out)
    }

    fn decode(kind: u8, mut body: Vec<u8>) -> Result<Self, ProtoError> {
        let kind = FrameKind::from_u8(kind)?;
        let split_ts = |body: &mut Vec<u8>| -> Result<u64, ProtoError> {
            if body.len() < 8 {
                return Err(ProtoError::BadFrame(
                    "output frame without timestamp".into(),
                ));
            }
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&body[..8]);
            body.drain(..8);
            Ok(u64::from_be_bytes(ts))
        };
        Ok(match kind {
            FrameKind::Control => Frame::Control(body),
            FrameKind::Data => Frame::Data(body),
            FrameKind::Stdout => {
                let ts_micros = split_ts(&mut body)?;
                Frame::Stdout {
                    ts_micros,
                    data: body,
                }
            }
            FrameKind::Stderr => {
                let ts_micros = split_ts(&mut body)?;
                Frame::Stderr {
                    ts_micros,
                    data: body,
                }
            }
            FrameKind::Eof => Frame::Eof,
        })
    }
}

fn check_len(len: usize) -> Result<(), ProtoError> {
    if len == 0 || len > MAX_FRAME {
        return Err(ProtoError::BadFrame(format!(
            "frame length {len} out of range"
        )));
    }
    Ok(())
}

/// Read one frame (async). `Err(Closed)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, ProtoError> {
    let mut hdr = [0u8; 4];
    match r.read_exact(&mut hdr).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ProtoError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(hdr) as usize;
    check_len(len)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    let kind = buf.remove(0);
    Frame::decode(kind, buf)
}

/// Write one frame (async) and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), ProtoError> {
    let bytes = f.encode()?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Read one frame (blocking).
pub fn read_frame_sync<R: Read>(r: &mut R) -> Result<Frame, ProtoError> {
    let mut hdr = [0u8; 4];
    match r.read_exact(&mut hdr) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ProtoError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(hdr) as usize;
    check_len(len)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    let kind = buf.remove(0);
    Frame::decode(kind, buf)
}

/// Write one frame (blocking).
pub fn write_frame_sync<W: Write>(w: &mut W, f: &Frame) -> Result<(), ProtoError> {
    w.write_all(&f.encode()?)?;
    w.flush()?;
    Ok(())
}

/// Microseconds since the Unix epoch, for output timestamps.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The version both sides speak, or `None` when the ranges do not overlap.
pub fn negotiate(host: (u32, u32), guest: (u32, u32)) -> Option<u32> {
    let lo = host.0.max(guest.0);
    let hi = host.1.min(guest.1);
    (lo <= hi).then_some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::control(&Request::new(Op::Hello { min: 1, max: 3 })).unwrap(),
            Frame::Data(b"hello".to_vec()),
            Frame::Stdout {
                ts_micros: 42,
                data: b"out".to_vec(),
            },
            Frame::Stderr {
                ts_micros: 7,
                data: vec![],
            },
            Frame::Eof,
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame_sync(&mut buf, f).unwrap();
        }
        let mut cur = io::Cursor::new(buf);
        for f in &frames {
            assert_eq!(&read_frame_sync(&mut cur).unwrap(), f);
        }
        assert!(matches!(read_frame_sync(&mut cur), Err(ProtoError::Closed)));
    }

    #[test]
    fn hostile_frames_are_errors() {
        // Oversize length.
        let mut cur = io::Cursor::new(((MAX_FRAME + 1) as u32).to_be_bytes().to_vec());
        assert!(matches!(
            read_frame_sync(&mut cur),
            Err(ProtoError::BadFrame(_))
        ));
        // Zero length.
        let mut cur = io::Cursor::new(0u32.to_be_bytes().to_vec());
        assert!(matches!(
            read_frame_sync(&mut cur),
            Err(ProtoError::BadFrame(_))
        ));
        // Unknown kind.
        let mut cur = io::Cursor::new(vec![0, 0, 0, 1, 99]);
        assert!(matches!(
            read_frame_sync(&mut cur),
            Err(ProtoError::BadFrame(_))
        ));
        // Stdout frame too short for its timestamp.
        let mut cur = io::Cursor::new(vec![0, 0, 0, 3, 3, 1, 2]);
        assert!(matches!(
            read_frame_sync(&mut cur),
            Err(ProtoError::BadFrame(_))
        ));
        // Truncated body.
        let mut cur = io::Cursor::new(vec![0, 0, 0, 10, 2, 1]);
        assert!(read_frame_sync(&mut cur).is_err());
        // Garbage JSON in a control frame.
        let f = Frame::Control(b"{not json".to_vec());
        assert!(f.parse::<Request>().is_err());
        // Oversize encode is refused.
        assert!(Frame::Data(vec![0; MAX_FRAME]).encode().is_err());
    }

    #[test]
    fn negotiation_picks_highest_common() {
        assert_eq!(negotiate((1, 3), (1, 2)), Some(2));
        assert_eq!(negotiate((2, 3), (1, 5)), Some(3));
        assert_eq!(negotiate((3, 4), (1, 2)), None);
    }

    #[test]
    fn error_reasons_are_optional_both_ways() {
        // From an older guest: no reason.
        let old = br#"{"type":"error","kind":"not_found","message":"x: command not found"}"#;
        let r: Response = Frame::Control(old.to_vec()).parse().unwrap();
        assert_eq!(
            r,
            Response::Error(GuestError::new(
                GuestErrorKind::NotFound,
                "x: command not found"
            ))
        );
        // No reason is not sent, so older hosts see what they always saw.
        let sent = serde_json::to_string(&r).unwrap();
        assert!(!sent.contains("reason"), "{sent}");
        let with = Response::Error(
            GuestError::new(GuestErrorKind::PermissionDenied, "denied")
                .with_reason(GuestErrorReason::CommandNotExecutable),
        );
        let sent = serde_json::to_string(&with).unwrap();
        assert!(
            sent.contains(r#""reason":"command_not_executable""#),
            "{sent}"
        );
        assert_eq!(
            Frame::Control(sent.into_bytes())
                .parse::<Response>()
                .unwrap(),
            with
        );
        // From a newer guest: a reason this build does not know.
        let newer =
            br#"{"type":"error","kind":"internal","message":"m","reason":"from_the_future"}"#;
        match Frame::Control(newer.to_vec()).parse::<Response>().unwrap() {
            Response::Error(e) => assert_eq!(e.reason, Some(GuestErrorReason::Unknown)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let json = br#"{"v":1,"op":{"type":"stat","path":"/x","future_field":true},"extra":1}"#;
        let r: Request = Frame::Control(json.to_vec()).parse().unwrap();
        assert!(matches!(r.op, Op::Stat { .. }));
    }
}
