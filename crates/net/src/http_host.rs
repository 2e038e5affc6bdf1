//! The destination of a plain HTTP/1.x request, read from the first bytes
//! a client sends: the method and the name the request is for.
//!
//! The name is what the server would act on: the authority of an
//! absolute-form target (`GET http://example.com/ HTTP/1.1`, RFC 9112 3.2.2)
//! or else the `Host` header; when both are present they must name the same
//! host (otherwise the request is refused as ambiguous). `CONNECT
//! host:port` yields that host and port (the proxy answers it itself, see
//! `proxy.rs`). Names are normalised with [`normalize_host`]; an IP literal
//! is reported as such (the proxy then treats the connection as raw TCP).
//!
//! Limits: the request head (request line + headers) is bounded at
//! [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers; more is an error. Two
//! `Host` headers, a missing `Host` (HTTP/1.1 without an absolute-form
//! target), userinfo in the authority, or a scheme other than `http` are
//! errors. Only the first request of a connection is read: the proxy
//! decides once per connection (see `proxy.rs`).

use std::net::IpAddr;

use crate::rules::normalize_host;

/// The largest request head looked at.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request head may have.
pub const MAX_HEADERS: usize = 100;

/// Why bytes are not a usable HTTP request head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("not an HTTP/1.x request")]
    NotHttp,
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("HTTP request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("HTTP request without a Host")]
    NoHost,
    #[error("HTTP request names two hosts ({0} and {1})")]
    Mismatch(String, String),
    #[error("invalid host {0:?} in HTTP request")]
    BadHost(String),
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A host name (normalised) and the port written with it, if any.
    Name(String, Option<u16>),
    /// An IP literal and the port written with it, if any.
    Ip(IpAddr, Option<u16>),
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, `CONNECT`, ...
    pub method: String,
    pub target: Target,
    /// Length of the head in bytes, the final CRLF CRLF included.
    pub head_len: usize,
}

impl RequestHead {
    /// Whether this is a `CONNECT` (the target then always has a port).
    pub fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }
}

/// Whether `buf` starts like an HTTP/1.x request line (an upper-case
/// method token followed by a space). A few bytes are enough to say "no".
pub fn looks_like_http(buf: &[u8]) -> bool {
    const MAX_METHOD: usize = 16;
    for (i, b) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b'A'..=b'Z' | b'-' => continue,
            b' ' => return i > 0,
            _ => return false,
        }
    }
    // All upper-case so far (or nothing yet): undecided counts as "maybe"
    // only while short.
    buf.len() <= MAX_METHOD
}

/// Parse the request head at the start of `buf`. `Ok(None)`: a valid
/// prefix so far; read more (up to [`MAX_HEAD`]).
pub fn parse(buf: &[u8]) -> Result<Option<RequestHead>, HttpError> {
    if !looks_like_http(buf) {
        return Err(HttpError::NotHttp);
    }
    let limited = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(limited) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HttpError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default();

    let mut host_header: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            if host_header.is_some() {
                return Err(HttpError::Malformed("two Host headers".into()));
            }
            host_header = Some(h.value);
        }
    }
    let host_header = match host_header {
        Some(v) => {
            let s = std::str::from_utf8(v)
                .map_err(|_| HttpError::BadHost(String::from_utf8_lossy(v).into_owned()))?;
            Some(parse_authority(s.trim())?)
        }
        None => None,
    };

    let target = if method == "CONNECT" {
        let t = parse_authority(path)?;
        match &t {
            Target::Name(_, Some(_)) | Target::Ip(_, Some(_)) => t,
            _ => return Err(HttpError::Malformed("CONNECT target without a port".into())),
        }
    } else if path.starts_with('/') || path == "*" {
        host_header.ok_or(HttpError::NoHost)?
    } else {
        // absolute-form: scheme://authority[/path]
        let (scheme, rest) = path
            .split_once("://")
            .ok_or_else(|| HttpError::Malformed(format!("request target {path:?}")))?;
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(HttpError::Malformed(format!(
                "scheme {scheme:?} on a plain connection"
            )));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let t = parse_authority(&rest[..end])?;
        if let Some(h) = &host_header
            && !same_host(h, &t)
        {
            return Err(HttpError::Mismatch(display(&t), display(h)));
        }
        t
    };
    Ok(Some(RequestHead {
        method,
        target,
        head_len,
    }))
}

fn same_host(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (Target::Name(x, _), Target::Name(y, _)) => x == y,
        (Target::Ip(x, _), Target::Ip(y, _)) => x == y,
        _ => false,
    }
}

fn display(t: &Target) -> String {
    match t {
        Target::Name(n, _) => n.clone(),
        Target::Ip(ip, _) => ip.to_string(),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, `v4:port`.
fn parse_authority(s: &str) -> Result<Target, HttpError> {
    let bad = || HttpError::BadHost(s.to_string());
    if s.is_empty() {
        return Err(HttpError::NoHost);
    }
    if s.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        let ip: std::net::Ipv6Addr = h.parse().map_err(|_| bad())?;
        return Ok(Target::Ip(IpAddr::V6(ip), parse_port(port, s)?));
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = parse_port(port, s)?;
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return Ok(Target::Ip(IpAddr::V4(ip), port));
    }
    let name = normalize_host(host).ok_or_else(bad)?;
    Ok(Target::Name(name, port))
}

fn parse_port(p: Option<&str>, whole: &str) -> Result<Option<u16>, HttpError> {
    match p {
        None => Ok(None),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
            _ => Err(HttpError::BadHost(whole.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(n: &str, p: Option<u16>) -> Target {
        Target::Name(n.into(), p)
    }

    #[test]
    fn origin_form() {
        let r = b"GET /x HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\nBODY";
        let h = parse(r).unwrap().unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, name("example.com", Some(8080)));
        assert_eq!(h.head_len, r.len() - 4);
        for n in 0..h.head_len {
            assert_eq!(parse(&r[..n]), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn absolute_form_and_connect() {
        let r = b"GET http://a.example.com/p?q HTTP/1.1\r\nHost: a.example.com\r\n\r\n";
        assert_eq!(
            parse(r).unwrap().unwrap().target,
            name("a.example.com", None)
        );
        let r = b"GET http://a.example.com/ HTTP/1.1\r\nHost: b.example.com\r\n\r\n";
        assert!(matches!(parse(r), Err(HttpError::Mismatch(..))));
        let r = b"GET http://a.example.com:81 HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse(r).unwrap().unwrap().target,
            name("a.example.com", Some(81))
        );
        let r = b"GET https://a.example.com/ HTTP/1.1\r\n\r\n";
        assert!(parse(r).is_err());
        let r = b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n";
        let h = parse(r).unwrap().unwrap();
        assert!(h.is_connect());
        assert_eq!(h.target, name("api.example.com", Some(443)));
        assert!(parse(b"CONNECT api.example.com HTTP/1.1\r\n\r\n").is_err());
        let r = b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse(r).unwrap().unwrap().target,
            Target::Ip("2001:db8::1".parse().unwrap(), Some(443))
        );
    }

    #[test]
    fn hostile_heads() {
        let two = b"GET / HTTP/1.1\r\nHost: a.com\r\nhost: b.com\r\n\r\n";
        assert!(parse(two).is_err());
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(HttpError::NoHost));
        assert_eq!(parse(b"GET / HTTP/1.0\r\n\r\n"), Err(HttpError::NoHost));
        for bad in [
            "a b.com",
            "u@a.com",
            "a.com:0",
            "a.com:99999",
            "a.com:+1",
            "[::1",
            "[::1]x",
            "",
        ] {
            let r = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert!(parse(r.as_bytes()).is_err(), "{bad:?}");
        }
        let ip = b"GET / HTTP/1.1\r\nHost: 192.0.2.7\r\n\r\n";
        assert_eq!(
            parse(ip).unwrap().unwrap().target,
            Target::Ip("192.0.2.7".parse().unwrap(), None)
        );
        assert_eq!(parse(b"\x16\x03\x01"), Err(HttpError::NotHttp));
        assert_eq!(parse(b"get / HTTP/1.1\r\n"), Err(HttpError::NotHttp));
        let mut huge = b"GET / HTTP/1.1\r\nHost: a.com\r\n".to_vec();
        while huge.len() < MAX_HEAD + 10 {
            huge.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse(&huge), Err(HttpError::TooLarge));
        let mut many = b"GET / HTTP/1.1\r\nHost: a.com\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many), Err(HttpError::TooLarge));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b);
        }

        #[test]
        fn random_after_method_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut v = b"GET ".to_vec();
            v.extend_from_slice(&b);
            let _ = parse(&v);
        }

        #[test]
        fn random_host_values(h in "\\PC{0,80}") {
            let r = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
            if let Ok(Some(head)) = parse(r.as_bytes())
                && let Target::Name(n, _) = head.target
            {
                prop_assert_eq!(normalize_host(&n), Some(n.clone()));
            }
        }
    }
}
