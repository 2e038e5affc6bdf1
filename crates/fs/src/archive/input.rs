//! The input side of every archive: compression detected by magic bytes,
//! consumed bytes counted (for progress), the expansion of compressed
//! streams bounded, and the budget of entries and bytes that
//! [`Limits`] allow, shared by every tar stream of one import.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

use super::{ArchiveError, Limits, RATIO_FLOOR};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// What the tar streams of one operation have used of their [`Limits`].
#[derive(Debug, Default, Clone)]
pub(crate) struct Budget {
    pub entries: u64,
    pub bytes: u64,
}

/// A decompressed input and the count of raw bytes consumed from it.
pub(crate) struct Input<'a> {
    pub reader: Box<dyn Read + 'a>,
    pub consumed: Rc<Cell<u64>>,
    pub compression: Compression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    n: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Errors of the input itself are tagged, so that a decompressor's
        // own errors can be told from them.
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(ArchiveError::Read(e).into_io()),
        };
        self.n.set(self.n.get() + n as u64);
        Ok(n)
    }
}

/// A decompressor's output: its own errors are [`ArchiveError::Corrupt`]
/// (or `Truncated`), and it fails once the output exceeds `max` times the
/// compressed input (after [`RATIO_FLOOR`] bytes).
struct Ratio<R> {
    inner: R,
    out: u64,
    consumed: Rc<Cell<u64>>,
    max: u64,
}

impl<R: Read> Read for Ratio<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                return Err(match ArchiveError::unwrap_io(e) {
                    Ok(ours) => ours,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        ArchiveError::Truncated("the compressed stream ends early".into())
                    }
                    Err(e) => ArchiveError::Corrupt(e),
                }
                .into_io());
            }
        };
        self.out += n as u64;
        if self.max > 0
            && self.out > RATIO_FLOOR
            && self.out > self.consumed.get().saturating_mul(self.max)
        {
            return Err(ArchiveError::Limit {
                entry: None,
                field: "max_compression_ratio",
                detail: format!(
                    "{} compressed bytes expanded to {} (more than {}:1)",
                    self.consumed.get(),
                    self.out,
                    self.max
                ),
            }
            .into_io());
        }
        Ok(n)
    }
}

/// Detect the compression of `r` and decompress it.
pub(crate) fn decompress<'a, R: Read + 'a>(
    r: R,
    limits: &Limits,
) -> Result<Input<'a>, ArchiveError> {
    let consumed = Rc::new(Cell::new(0));
    let mut counted = Counted {
        inner: r,
        n: consumed.clone(),
    };
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match counted.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ArchiveError::from_read(e)),
        }
    }
    let head = io::Cursor::new(magic).take(got as u64);
    let stream = head.chain(counted);
    let ratio = |inner: Box<dyn Read + 'a>| Ratio {
        inner,
        out: 0,
        consumed: consumed.clone(),
        max: limits.max_compression_ratio,
    };
    let (reader, compression): (Box<dyn Read + 'a>, _) = if got >= 2 && magic[..2] == GZIP_MAGIC {
        let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(64 << 10, stream));
        (Box::new(ratio(Box::new(gz))), Compression::Gzip)
    } else if got == 4 && magic == ZSTD_MAGIC {
        let zs = zstd::stream::read::Decoder::new(stream).map_err(ArchiveError::Read)?;
        (Box::new(ratio(Box::new(zs))), Compression::Zstd)
    } else {
        (Box::new(stream), Compression::None)
    };
    Ok(Input {
        reader,
        consumed,
        compression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn all(input: Input<'_>) -> Result<Vec<u8>, ArchiveError> {
        let mut out = Vec::new();
        let mut r = input.reader;
        r.read_to_end(&mut out).map_err(ArchiveError::from_read)?;
        Ok(out)
    }

    #[test]
    fn detects_compression() {
        let data = b"hello tar".repeat(100);
        let plain = decompress(&data[..], &Limits::default()).unwrap();
        assert_eq!(plain.compression, Compression::None);
        assert_eq!(all(plain).unwrap(), data);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let input = decompress(&gz[..], &Limits::default()).unwrap();
        assert_eq!(input.compression, Compression::Gzip);
        let consumed = input.consumed.clone();
        assert_eq!(all(input).unwrap(), data);
        assert_eq!(consumed.get(), gz.len() as u64);

        let zs = zstd::encode_all(&data[..], 3).unwrap();
        let input = decompress(&zs[..], &Limits::default()).unwrap();
        assert_eq!(input.compression, Compression::Zstd);
        assert_eq!(all(input).unwrap(), data);

        // Short inputs are plain.
        assert_eq!(
            all(decompress(&b"ab"[..], &Limits::default()).unwrap()).unwrap(),
            b"ab"
        );
        assert!(
            all(decompress(&b""[..], &Limits::default()).unwrap())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn corrupt_streams_are_reported() {
        let mut zs = zstd::encode_all(&b"x".repeat(10_000)[..], 3).unwrap();
        let mid = zs.len() / 2;
        zs[mid] ^= 0xff;
        zs.truncate(zs.len() - 2);
        let e = all(decompress(&zs[..], &Limits::default()).unwrap()).unwrap_err();
        assert!(
            matches!(e, ArchiveError::Corrupt(_) | ArchiveError::Truncated(_)),
            "{e:?}"
        );
    }

    #[test]
    fn decompressor_errors_are_bad_input() {
        // A zstd frame asking for a 2 GiB window: refused by the decoder.
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3, 0x01, 0x00, 0x00];
        let e = all(decompress(&frame[..], &Limits::default()).unwrap()).unwrap_err();
        assert!(matches!(e, ArchiveError::Corrupt(_)), "{e:?}");
        assert_eq!(e.kind(), hull_api::ErrorKind::InvalidArgument);
        // A gzip header followed by garbage.
        let mut bad = gz_bytes(b"hello");
        for b in &mut bad[10..] {
            *b ^= 0x5a;
        }
        let e = all(decompress(&bad[..], &Limits::default()).unwrap()).unwrap_err();
        assert!(
            matches!(e, ArchiveError::Corrupt(_) | ArchiveError::Truncated(_)),
            "{e:?}"
        );
        assert_eq!(e.kind(), hull_api::ErrorKind::InvalidArgument);
        // An input that fails is not the archive's fault.
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(5))
            }
        }
        let e = match decompress(Failing, &Limits::default()) {
            Err(e) => e,
            Ok(_) => panic!("a failing input was read"),
        };
        assert!(
            matches!(&e, ArchiveError::Read(inner) if inner.raw_os_error() == Some(5)),
            "{e:?}"
        );
        let gz_then_fail = io::Cursor::new(gz_bytes(b"x")[..4].to_vec()).chain(Failing);
        let e = all(decompress(gz_then_fail, &Limits::default()).unwrap()).unwrap_err();
        assert!(matches!(e, ArchiveError::Read(_)), "{e:?}");
    }

    fn gz_bytes(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn expansion_is_bounded() {
        // 128 MiB of zeros from a few KiB: frames of 1 MiB, concatenated.
        let frame = zstd::encode_all(&vec![0u8; 1 << 20][..], 3).unwrap();
        let bomb: Vec<u8> = frame.repeat(128);
        let limits = Limits {
            max_compression_ratio: 100,
            ..Limits::default()
        };
        let e = all(decompress(&bomb[..], &limits).unwrap()).unwrap_err();
        assert!(e.to_string().contains("max_compression_ratio"), "{e}");
        let off = Limits {
            max_compression_ratio: 0,
            ..Limits::default()
        };
        assert_eq!(
            all(decompress(&bomb[..], &off).unwrap()).unwrap().len(),
            128 << 20
        );
    }
}
