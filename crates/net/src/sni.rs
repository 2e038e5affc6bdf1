//! The server name (SNI) of a TLS ClientHello, read from the first bytes a
//! client sends, without terminating TLS.
//!
//! [`parse`] takes the bytes seen so far (the egress proxy peeks them, so
//! nothing is consumed) and answers "need more bytes", the name, "a
//! ClientHello without a name", or an error. The handshake message may be
//! split over several TLS records and several TCP segments.
//!
//! Limits: the ClientHello handshake message is bounded at
//! [`MAX_HELLO`] bytes (16 KiB; real ones are 0.5-2 KiB, post-quantum key
//! shares included) and anything larger is an error, as are malformed or
//! inconsistent lengths, a second `server_name` extension, and a name that
//! is not a valid host name (IP literals, which RFC 6066 forbids in SNI).
//! Only the `host_name` entry is read. With Encrypted Client Hello the name
//! seen is the outer (public) name: that is the server hull connects to.

use crate::rules::normalize_host;

/// The largest ClientHello handshake message accepted (body + 4-byte
/// handshake header).
pub const MAX_HELLO: usize = 16 * 1024;

/// At most this many bytes of TLS records are looked at: the message plus
/// one 5-byte record header per record (a pathological client could send
/// 1-byte records; they are counted here and refused beyond the bound).
pub const MAX_RECORD_BYTES: usize = MAX_HELLO + 5 * 64;

const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
const NAME_TYPE_HOST: u8 = 0x00;

/// Why bytes are not a usable ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("invalid server name in ClientHello")]
    BadName,
}

/// A complete ClientHello's server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// The `host_name`, normalised with [`normalize_host`].
    Name(String),
    /// A ClientHello without a `server_name` extension (a client that
    /// dialled an IP address).
    None,
}

/// Whether `buf` starts like a TLS handshake record (content type 22,
/// protocol major version 3). One byte is enough to say "no".
pub fn looks_like_tls(buf: &[u8]) -> bool {
    match buf {
        [] => false,
        [t] => *t == CONTENT_HANDSHAKE,
        [t, major, ..] => *t == CONTENT_HANDSHAKE && *major == 3,
    }
}

/// Parse the ClientHello at the start of `buf`. `Ok(None)`: the bytes so
/// far are a valid prefix; read more (up to [`MAX_RECORD_BYTES`]).
pub fn parse(buf: &[u8]) -> Result<Option<Sni>, SniError> {
    let Some(msg) = reassemble(buf)? else {
        return Ok(None);
    };
    client_hello(&msg).map(Some)
}

/// Concatenate handshake record fragments until the whole first handshake
/// message is there; `None` when more bytes are needed.
fn reassemble(buf: &[u8]) -> Result<Option<Vec<u8>>, SniError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if !looks_like_tls(buf) {
        return Err(SniError::NotTls);
    }
    let mut msg: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        if pos >= MAX_RECORD_BYTES {
            return Err(SniError::TooLarge);
        }
        let Some(hdr) = buf.get(pos..pos + 5) else {
            return Ok(None);
        };
        if hdr[0] != CONTENT_HANDSHAKE {
            return Err(if pos == 0 {
                SniError::NotTls
            } else {
                SniError::Malformed("non-handshake record inside the ClientHello")
            });
        }
        if hdr[1] != 3 {
            return Err(SniError::Malformed("record version"));
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len == 0 {
            return Err(SniError::Malformed("empty handshake record"));
        }
        // RFC 8446 5.1: a record's plaintext is at most 2^14 bytes.
        if len > 1 << 14 {
            return Err(SniError::Malformed("record longer than 2^14"));
        }
        let body_start = pos + 5;
        let avail = buf.len().saturating_sub(body_start).min(len);
        msg.extend_from_slice(&buf[body_start..body_start + avail]);
        if msg.len() >= 4 {
            if msg[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(SniError::Malformed(
                    "first handshake message is not a ClientHello",
                ));
            }
            let need =
                4 + (usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]));
            if need > MAX_HELLO {
                return Err(SniError::TooLarge);
            }
            if msg.len() >= need {
                msg.truncate(need);
                return Ok(Some(msg));
            }
        }
        if avail < len {
            return Ok(None);
        }
        pos = body_start + len;
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if n > self.buf.len() {
            return Err(SniError::Malformed(what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, SniError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a 1- or 2-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// `msg`: a whole handshake message (4-byte header included).
fn client_hello(msg: &[u8]) -> Result<Sni, SniError> {
    let mut r = Reader { buf: &msg[4..] };
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    let sid = r.vec8("session_id")?;
    if sid.len() > 32 {
        return Err(SniError::Malformed("session_id longer than 32"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(SniError::Malformed("cipher_suites"));
    }
    if r.vec8("compression_methods")?.is_empty() {
        return Err(SniError::Malformed("compression_methods"));
    }
    if r.is_empty() {
        // A ClientHello without extensions (TLS 1.0-style): no name.
        return Ok(Sni::None);
    }
    let mut exts = Reader {
        buf: r.vec16("extensions")?,
    };
    if !r.is_empty() {
        return Err(SniError::Malformed("bytes after the extensions"));
    }
    let mut found: Option<String> = None;
    while !exts.is_empty() {
        let ty = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        if ty != EXT_SERVER_NAME {
            continue;
        }
        if found.is_some() {
            return Err(SniError::Malformed("two server_name extensions"));
        }
        found = Some(server_name(data)?);
    }
    Ok(found.map_or(Sni::None, Sni::Name))
}

/// The `server_name` extension's data: a list of (type, name).
fn server_name(data: &[u8]) -> Result<String, SniError> {
    let mut outer = Reader { buf: data };
    let mut list = Reader {
        buf: outer.vec16("server_name_list")?,
    };
    if !outer.is_empty() {
        return Err(SniError::Malformed("bytes after server_name_list"));
    }
    let mut host: Option<&[u8]> = None;
    while !list.is_empty() {
        let ty = list.u8("name_type")?;
        let name = list.vec16("host_name")?;
        if ty == NAME_TYPE_HOST {
            if host.is_some() {
                return Err(SniError::Malformed("two host_name entries"));
            }
            host = Some(name);
        }
    }
    let host = host.ok_or(SniError::Malformed("server_name without host_name"))?;
    let s = std::str::from_utf8(host).map_err(|_| SniError::BadName)?;
    normalize_host(s).ok_or(SniError::BadName)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello handshake message (header included) with the given
    /// extensions.
    pub(crate) fn hello_msg(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(32);
        body.extend_from_slice(&[1u8; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        let mut e = Vec::new();
        for (ty, data) in exts {
            e.extend_from_slice(&ty.to_be_bytes());
            e.extend_from_slice(&(data.len() as u16).to_be_bytes());
            e.extend_from_slice(data);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    pub(crate) fn sni_ext(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        (0, data)
    }

    /// Wrap a handshake message in records of at most `chunk` bytes.
    pub(crate) fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in msg.chunks(chunk) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(c.len() as u16).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    /// A whole ClientHello in one record naming `name`.
    pub(crate) fn client_hello_bytes(name: &str) -> Vec<u8> {
        records(
            &hello_msg(&[(10, vec![0, 2, 0, 29]), sni_ext(name)]),
            1 << 14,
        )
    }

    #[test]
    fn finds_the_name() {
        let b = client_hello_bytes("API.Example.com");
        assert_eq!(parse(&b), Ok(Some(Sni::Name("api.example.com".into()))));
        // Trailing bytes (the next record) are ignored.
        let mut more = b.clone();
        more.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
        assert_eq!(parse(&more), Ok(Some(Sni::Name("api.example.com".into()))));
    }

    #[test]
    fn every_prefix_needs_more() {
        let b = client_hello_bytes("example.com");
        for n in 0..b.len() {
            assert_eq!(parse(&b[..n]), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn split_over_records() {
        let msg = hello_msg(&[sni_ext("split.example.com"), (0x2b, vec![2, 3, 4])]);
        for chunk in [1, 2, 3, 7, 50, 100] {
            let b = records(&msg, chunk);
            if b.len() > MAX_RECORD_BYTES {
                assert_eq!(parse(&b), Err(SniError::TooLarge), "chunk {chunk}");
                continue;
            }
            assert_eq!(
                parse(&b),
                Ok(Some(Sni::Name("split.example.com".into()))),
                "chunk {chunk}"
            );
            for n in 0..b.len() {
                assert_eq!(parse(&b[..n]), Ok(None), "chunk {chunk} prefix {n}");
            }
        }
    }

    #[test]
    fn no_name_and_bad_names() {
        let b = records(&hello_msg(&[(10, vec![0, 2, 0, 29])]), 1 << 14);
        assert_eq!(parse(&b), Ok(Some(Sni::None)));
        for bad in ["10.0.0.1", "a..b", "bad name", "", "-x.com"] {
            let b = client_hello_bytes(bad);
            assert!(parse(&b).is_err(), "{bad:?}");
        }
        let two = records(&hello_msg(&[sni_ext("a.com"), sni_ext("b.com")]), 1 << 14);
        assert!(matches!(parse(&two), Err(SniError::Malformed(_))));
    }

    #[test]
    fn not_tls_and_huge() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(SniError::NotTls));
        assert_eq!(parse(&[0x16, 2, 0]), Err(SniError::NotTls));
        // A ClientHello that claims 1 MiB.
        let b = [0x16, 3, 1, 0x40, 0x00, 1, 0x10, 0, 0];
        assert_eq!(parse(&b), Err(SniError::TooLarge));
        // A huge but legal-length padded hello just under the bound parses.
        let big = hello_msg(&[(21, vec![0; MAX_HELLO - 200]), sni_ext("big.example.com")]);
        assert!(big.len() <= MAX_HELLO);
        let b = records(&big, 1 << 14);
        assert_eq!(parse(&b), Ok(Some(Sni::Name("big.example.com".into()))));
        let too_big = hello_msg(&[(21, vec![0; MAX_HELLO]), sni_ext("big.example.com")]);
        assert_eq!(parse(&records(&too_big, 1 << 14)), Err(SniError::TooLarge));
    }

    #[test]
    fn lying_lengths() {
        let good = client_hello_bytes("example.com");
        // Flip every length-like byte to extremes: never a panic, and
        // never a name other than the real one.
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                if let Ok(Some(Sni::Name(n))) = parse(&b) {
                    assert!(n.len() <= 253);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&b);
        }

        #[test]
        fn random_after_tls_header_never_panic(
            b in proptest::collection::vec(any::<u8>(), 0..2048),
            len in 0u16..0x4100,
        ) {
            let mut v = vec![0x16, 3, 1];
            v.extend_from_slice(&len.to_be_bytes());
            v.push(1);
            v.extend_from_slice(&b);
            let _ = parse(&v);
        }

        #[test]
        fn truncations_of_valid_hellos(name in "[a-z]{1,20}(\\.[a-z0-9]{1,10}){1,3}", chunk in 1usize..300, cut in 0usize..2000) {
            let msg = hello_msg(&[sni_ext(&name), (10, vec![0, 2, 0, 29])]);
            let b = records(&msg, chunk);
            let cut = cut.min(b.len());
            match parse(&b[..cut]) {
                Ok(None) => prop_assert!(cut < b.len()),
                Ok(Some(Sni::Name(n))) => prop_assert_eq!(n, name),
                other => prop_assert!(b.len() > MAX_RECORD_BYTES, "{:?}", other),
            }
        }
    }
}
