//! Streaming decoder and encoder helpers for the chunked transfer coding (RFC 9112 7.1).

use super::fields::is_tchar;
use super::{ParseError, Span};

/// Bound on one chunk-size line (size, extensions, not the CRLF). Extensions carry nothing we use;
/// the bound keeps a peer from making us scan forever.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Written after the last data chunk; the caller then writes trailer field lines (if any) and the
/// final `\r\n`.
pub const LAST_CHUNK: &[u8] = b"0\r\n";

/// Append a chunk-size line for a chunk of `len` bytes: `{len:x}\r\n`.
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = len as u64;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// What one [`ChunkedDecoder::decode`] call found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkEvent {
    /// Body bytes: this span of the `input` given to that call.
    Data(Span),
    /// The trailer field lines including their CRLFs (empty when there are none), as a span of
    /// that call's `input`. It is the last event of a body: the decoder is done after it.
    Trailers(Span),
    /// The body was already complete; nothing was consumed.
    End,
    /// Every byte that could be consumed was; give more input.
    NeedMore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinePhase {
    /// In the hex digits.
    Digits,
    /// Whitespace after the digits; only a `;` may follow (RFC 9112 7.1.1 BWS).
    Space,
    /// Inside chunk extensions, which we skip.
    Ext,
    /// Saw CR, need LF.
    Cr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    SizeLine {
        size: u64,
        digits: u8,
        len: u32,
        phase: LinePhase,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    Trailers,
    Done,
}

const SIZE_LINE_START: State = State::SizeLine {
    size: 0,
    digits: 0,
    len: 0,
    phase: LinePhase::Digits,
};

/// A chunked body decoder that can be fed the body in slices split anywhere.
///
/// Contract: `decode` returns how many bytes of `input` it consumed. Bytes it did not consume must
/// be presented again, at the front of the next call's input, with whatever arrived after them.
/// Size lines and CRLFs are consumed byte by byte, so only the trailer section is ever left
/// unconsumed (it is handed out as one span, so it must be contiguous; `max_trailer_bytes` bounds
/// how much the caller has to hold).
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub fn new(max_trailer_bytes: usize) -> Self {
        ChunkedDecoder {
            state: SIZE_LINE_START,
            max_trailer_bytes,
        }
    }

    /// True once the trailer section (and so the whole body) has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `input`, returning the bytes consumed and one event. Never reads past `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, ChunkEvent), ParseError> {
        // Spans are u32: a larger slice is simply consumed over several calls.
        let input = &input[..input.len().min(u32::MAX as usize)];
        let mut pos = 0;
        loop {
            match self.state {
                State::SizeLine { .. } => {
                    while pos < input.len() && matches!(self.state, State::SizeLine { .. }) {
                        self.size_line_byte(input[pos])?;
                        pos += 1;
                    }
                    if matches!(self.state, State::SizeLine { .. }) {
                        return Ok((pos, ChunkEvent::NeedMore));
                    }
                }
                State::Data { remaining } => {
                    let available = input.len() - pos;
                    if available == 0 {
                        return Ok((pos, ChunkEvent::NeedMore));
                    }
                    // `take` fits a usize because it is at most `available`.
                    let take = remaining.min(available as u64) as usize;
                    self.state = if take as u64 == remaining {
                        State::DataCr
                    } else {
                        State::Data {
                            remaining: remaining - take as u64,
                        }
                    };
                    return Ok((pos + take, ChunkEvent::Data(Span::new(pos, pos + take))));
                }
                State::DataCr | State::DataLf => {
                    let Some(&b) = input.get(pos) else {
                        return Ok((pos, ChunkEvent::NeedMore));
                    };
                    self.state = match (self.state, b) {
                        (State::DataCr, b'\r') => State::DataLf,
                        (State::DataLf, b'\n') => SIZE_LINE_START,
                        _ => return Err(ParseError::BadChunk("missing CRLF after chunk data")),
                    };
                    pos += 1;
                }
                State::Trailers => return self.trailers(input, pos),
                State::Done => return Ok((0, ChunkEvent::End)),
            }
        }
    }

    /// One byte of a chunk-size line. Strict on purpose: every leniency here (trailing spaces, bare
    /// LF, sizes with signs or `0x`) is a way for two parsers to split a body differently.
    fn size_line_byte(&mut self, b: u8) -> Result<(), ParseError> {
        let State::SizeLine {
            mut size,
            mut digits,
            mut len,
            mut phase,
        } = self.state
        else {
            return Ok(());
        };
        if phase != LinePhase::Cr && b != b'\r' {
            len += 1;
            if len as usize > MAX_CHUNK_LINE {
                return Err(ParseError::BadChunk("chunk size line too long"));
            }
        }
        match (phase, b) {
            (LinePhase::Digits, _) if b.is_ascii_hexdigit() => {
                if digits == 16 {
                    return Err(ParseError::BadChunk("chunk size has more than 16 digits"));
                }
                let nibble = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    _ => b - b'A' + 10,
                };
                size = (size << 4) | u64::from(nibble);
                digits += 1;
            }
            (LinePhase::Digits, _) if digits == 0 => {
                return Err(ParseError::BadChunk("chunk size is not hex"));
            }
            (LinePhase::Digits | LinePhase::Space, b' ' | b'\t') => phase = LinePhase::Space,
            (LinePhase::Digits | LinePhase::Space, b';') => phase = LinePhase::Ext,
            (LinePhase::Digits | LinePhase::Ext, b'\r') => phase = LinePhase::Cr,
            (LinePhase::Ext, _) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {}
            (LinePhase::Cr, b'\n') => {
                self.state = if size == 0 {
                    State::Trailers
                } else {
                    State::Data { remaining: size }
                };
                return Ok(());
            }
            (_, b'\n') => return Err(ParseError::BadChunk("bare LF in chunk size line")),
            (LinePhase::Cr, _) => {
                return Err(ParseError::BadChunk("CR without LF in chunk size line"));
            }
            (LinePhase::Space, _) => {
                return Err(ParseError::BadChunk("whitespace after chunk size"));
            }
            (LinePhase::Digits, _) => {
                return Err(ParseError::BadChunk("invalid byte after chunk size"));
            }
            (LinePhase::Ext, _) => {
                return Err(ParseError::BadChunk("control character in chunk extension"));
            }
        }
        self.state = State::SizeLine {
            size,
            digits,
            len,
            phase,
        };
        Ok(())
    }

    /// The trailer section after the last chunk: field lines, then an empty line. Handed out only
    /// once complete, so a split section is left unconsumed until the rest arrives.
    fn trailers(&mut self, input: &[u8], pos: usize) -> Result<(usize, ChunkEvent), ParseError> {
        let section = &input[pos..];
        let mut line_start = 0;
        loop {
            let Some(lf) = section[line_start..].iter().position(|&b| b == b'\n') else {
                // The complete section would be longer than what we hold, which is already more
                // than field lines of `max_trailer_bytes` plus the final CRLF.
                if section.len() >= self.max_trailer_bytes.saturating_add(2) {
                    return Err(ParseError::BadChunk("trailer section too large"));
                }
                return Ok((pos, ChunkEvent::NeedMore));
            };
            let lf = line_start + lf;
            // The bound first: a decoder fed in pieces refuses this line as too large before its
            // LF arrives, so the verdict must not depend on how the bytes were split (found by
            // fuzzing: whole input said "without colon", split input "too large").
            if lf >= self.max_trailer_bytes.saturating_add(2) {
                return Err(ParseError::BadChunk("trailer section too large"));
            }
            if lf == line_start || section[lf - 1] != b'\r' {
                return Err(ParseError::BadChunk("bare LF in trailer section"));
            }
            let line = &section[line_start..lf - 1];
            if line.is_empty() {
                if line_start > self.max_trailer_bytes {
                    return Err(ParseError::BadChunk("trailer section too large"));
                }
                self.state = State::Done;
                return Ok((
                    pos + lf + 1,
                    ChunkEvent::Trailers(Span::new(pos, pos + line_start)),
                ));
            }
            check_trailer_line(line)?;
            line_start = lf + 1;
        }
    }
}

/// Decode, and drop, the part of a chunked body that has already been received: the framing errors
/// in it are found before anything is sent upstream (a probe that arrives in one segment never
/// reaches the upstream at all). Returns the data bytes seen, for the body size limit.
pub fn scan_received(input: &[u8], max_trailer_bytes: usize) -> Result<u64, ParseError> {
    let mut dec = ChunkedDecoder::new(max_trailer_bytes);
    let mut pos = 0;
    let mut data = 0u64;
    loop {
        let (n, ev) = dec.decode(&input[pos..])?;
        pos += n;
        match ev {
            ChunkEvent::Data(span) => data += u64::from(span.end - span.start),
            ChunkEvent::Trailers(_) | ChunkEvent::End | ChunkEvent::NeedMore => return Ok(data),
        }
    }
}

/// `name: value` with a token name and no control characters besides HTAB in the value.
fn check_trailer_line(line: &[u8]) -> Result<(), ParseError> {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(ParseError::BadChunk("trailer line without colon"));
    };
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(ParseError::BadChunk("invalid trailer field name"));
    }
    if line[colon + 1..]
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(ParseError::BadChunk("control character in trailer value"));
    }
    Ok(())
}
