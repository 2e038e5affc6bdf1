//! A TCP stream to a port inside the sandbox, tunnelled over the agent
//! connection as `Data` frames (`Eof` half-closes either way).
//!
//! Limits: the target is an IP address (loopback when absent: 127.0.0.1,
//! then ::1), never a name; it is reached from the sandbox's network
//! namespace, so only what the sandbox itself can reach. Connecting gives
//! up after 10 s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hull_proto::{Frame, GuestError, GuestErrorKind, Response, read_frame, write_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::{send, send_error};

pub(crate) async fn connect(mut conn: UnixStream, port: u16, host: Option<String>) {
    // Loopback: 127.0.0.1, then ::1 when nothing listens on the first (a
    // service bound to ::1 only), as a client resolving `localhost` would.
    let ips: Vec<IpAddr> = match host.as_deref() {
        None | Some("") | Some("localhost") => vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
        Some(h) => match h.parse() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let e = GuestError::new(
                    GuestErrorKind::InvalidArgument,
                    format!("invalid address {h:?}: expected an IP address"),
                );
                return send_error(&mut conn, e).await;
            }
        },
    };
    if port == 0 {
        let e = GuestError::new(
            GuestErrorKind::InvalidArgument,
            "port 0 is not a valid destination",
        );
        return send_error(&mut conn, e).await;
    }
    let mut addr = SocketAddr::new(ips[0], port);
    let attempt = async {
        let mut last = None;
        for ip in &ips {
            addr = SocketAddr::new(*ip, port);
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::ECONNREFUSED)))
    };
    let tcp = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Refused, unreachable, reset: nothing in the sandbox answers there.
            let kind = match e.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => {
                    GuestErrorKind::ResourceExhausted
                }
                Some(libc::EACCES | libc::EPERM) => GuestErrorKind::PermissionDenied,
                _ => GuestErrorKind::Unavailable,
            };
            return send_error(
                &mut conn,
                GuestError::new(kind, format!("connecting to {addr} in the sandbox: {e}")),
            )
            .await;
        }
        Err(_) => {
            let e = GuestError::new(
                GuestErrorKind::Unavailable,
                format!("connecting to {addr} in the sandbox timed out"),
            );
            return send_error(&mut conn, e).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    if send(&mut conn, &Response::Connected).await.is_err() {
        return;
    }
    let (mut crd, mut cwr) = conn.into_split();
    let (mut trd, mut twr) = tcp.into_split();
    let up = async move {
        // host -> port
        loop {
            match read_frame(&mut crd).await {
                Ok(Frame::Data(d)) => {
                    if twr.write_all(&d).await.is_err() {
                        break;
                    }
                }
                Ok(Frame::Eof) | Err(_) => break,
                Ok(_) => break,
            }
        }
        let _ = twr.shutdown().await;
    };
    let down = async move {
        // port -> host
        let mut buf = vec![0u8; hull_proto::CHUNK];
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
    tokio::join!(up, down);
}
