//! Buffer plumbing over monoio's ownership-passing I/O.
//!
//! monoio's `read` writes at the start of the buffer it is given, so appending needs a `slice_mut`
//! past the data already held; these helpers keep that in one place.

use std::io;
use std::time::Instant;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

/// Why a bounded read did not produce bytes.
#[derive(Debug)]
pub enum ReadFail {
    Eof,
    Timeout,
    Io(io::Error),
}

/// Appends at least one byte to `buf` (growing it by up to `chunk`), or fails.
/// The buffer comes back in every case except a timeout, where the cancelled read keeps it:
/// the caller then closes the connection anyway and starts over with an empty buffer.
pub async fn read_more<S: AsyncReadRent>(
    stream: &mut S,
    mut buf: Vec<u8>,
    chunk: usize,
    deadline: Option<Instant>,
) -> (Result<usize, ReadFail>, Vec<u8>) {
    if buf.capacity() - buf.len() < chunk / 2 {
        buf.reserve(chunk);
    }
    let len = buf.len();
    let fut = stream.read(buf.slice_mut(len..));
    let (res, slice) = match deadline {
        None => fut.await,
        Some(d) => match monoio::time::timeout_at(d.into(), fut).await {
            Ok(r) => r,
            Err(_) => return (Err(ReadFail::Timeout), Vec::new()),
        },
    };
    let buf = slice.into_inner();
    match res {
        Ok(0) => (Err(ReadFail::Eof), buf),
        Ok(n) => (Ok(n), buf),
        Err(e) => (Err(ReadFail::Io(e)), buf),
    }
}

/// Writes `buf[range]` completely. Returns the buffer.
pub async fn write_range<S: AsyncWriteRent>(
    stream: &mut S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    deadline: Option<Instant>,
) -> (Result<(), WriteFail>, Vec<u8>) {
    if start >= end {
        return (Ok(()), buf);
    }
    let fut = stream.write_all(buf.slice(start..end));
    let (res, slice) = match deadline {
        None => fut.await,
        Some(d) => match monoio::time::timeout_at(d.into(), fut).await {
            Ok(r) => r,
            Err(_) => return (Err(WriteFail::Timeout), Vec::new()),
        },
    };
    let buf = slice.into_inner();
    match res {
        Ok(_) => (Ok(()), buf),
        Err(e) => (Err(WriteFail::Io(e)), buf),
    }
}

/// Writes all of `buf`.
pub async fn write_all_vec<S: AsyncWriteRent>(
    stream: &mut S,
    buf: Vec<u8>,
    deadline: Option<Instant>,
) -> (Result<(), WriteFail>, Vec<u8>) {
    let end = buf.len();
    write_range(stream, buf, 0, end, deadline).await
}

#[derive(Debug)]
pub enum WriteFail {
    Timeout,
    Io(io::Error),
}

impl std::fmt::Display for WriteFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFail::Timeout => f.write_str("write timed out"),
            WriteFail::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Unused-capacity check used by callers that must keep the buffer bounded.
pub fn spare(buf: &mut Vec<u8>) -> usize {
    buf.bytes_total() - buf.bytes_init()
}
