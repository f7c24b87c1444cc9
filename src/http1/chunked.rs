//! Streaming chunked transfer-coding (RFC 9112 §7.1): a decoder that consumes
//! any split of the input and yields payload ranges, and the canonical encoder
//! used when forwarding. Extensions and trailer fields are validated and
//! dropped (§7.1.1, §7.1.2 allow a recipient that removes the coding to do so).

use std::ops::Range;

/// Longest chunk-size line (with extensions) and trailer section accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("malformed chunk size")]
    BadSize,
    #[error("chunk size too large")]
    SizeTooLarge,
    #[error("malformed chunk extension")]
    BadExtension,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("malformed trailer section")]
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the first hex digit of a chunk size.
    SizeStart,
    Size,
    /// Whitespace after the size: only more whitespace or ';' may follow.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line: a field name, or the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
}

/// One decoding step: `consumed` input bytes, of which `data` is payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub consumed: usize,
    pub data: Range<usize>,
    pub done: bool,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    remaining: u64,
    size_digits: u8,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            remaining: 0,
            size_digits: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing bytes from the start of `input` until payload or the
    /// end of the message. Payload is returned as a range of `input`; call
    /// again with the rest. Bytes after the message (`done`) are left unconsumed.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        let mut pos = 0;
        while pos < input.len() {
            if self.state == State::Data {
                let take =
                    (input.len() - pos).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Step {
                    consumed: pos + take,
                    data: pos..pos + take,
                    done: false,
                });
            }
            let byte = input[pos];
            pos += 1;
            self.advance(byte)?;
            if self.state == State::Done {
                return Ok(Step {
                    consumed: pos,
                    data: pos..pos,
                    done: true,
                });
            }
        }
        Ok(Step {
            consumed: pos,
            data: pos..pos,
            done: self.state == State::Done,
        })
    }

    fn advance(&mut self, byte: u8) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::SizeStart | State::Size => match hex_value(byte) {
                Some(digit) => {
                    // Leading zeros are allowed (1*HEXDIG), within the line cap.
                    self.line_len += 1;
                    if self.line_len > MAX_LINE {
                        return Err(ChunkedError::BadSize);
                    }
                    if self.remaining != 0 || digit != 0 {
                        if self.size_digits == 16 {
                            return Err(ChunkedError::SizeTooLarge);
                        }
                        self.size_digits += 1;
                    }
                    self.remaining = (self.remaining << 4) | u64::from(digit);
                    State::Size
                }
                None if self.state == State::SizeStart => return Err(ChunkedError::BadSize),
                None => match byte {
                    b'\r' => State::SizeLf,
                    b';' => State::Extension,
                    b' ' | b'\t' => State::SizeSpace,
                    _ => return Err(ChunkedError::BadSize),
                },
            },
            State::SizeSpace => match byte {
                b' ' | b'\t' => State::SizeSpace,
                b';' => State::Extension,
                _ => return Err(ChunkedError::BadSize),
            },
            State::Extension => match byte {
                b'\r' => State::SizeLf,
                b'\t' | b' '..=b'~' | 0x80.. => {
                    self.line_len += 1;
                    if self.line_len > MAX_LINE {
                        return Err(ChunkedError::BadExtension);
                    }
                    State::Extension
                }
                _ => return Err(ChunkedError::BadExtension),
            },
            State::SizeLf => {
                if byte != b'\n' {
                    return Err(ChunkedError::BadSize);
                }
                self.size_digits = 0;
                self.line_len = 0;
                if self.remaining == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataLf => match byte {
                b'\n' => State::SizeStart,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            // A trailer field is `token ":" value` (RFC 9112 §7.1.2, §5).
            State::TrailerStart => match byte {
                b'\r' => State::FinalLf,
                _ if is_token_byte(byte) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkedError::BadTrailer),
            },
            State::TrailerName => match byte {
                b':' => self.trailer_byte(State::TrailerValue)?,
                _ if is_token_byte(byte) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkedError::BadTrailer),
            },
            State::TrailerValue => match byte {
                b'\r' => State::TrailerLf,
                b'\t' | b' '..=b'~' | 0x80.. => self.trailer_byte(State::TrailerValue)?,
                _ => return Err(ChunkedError::BadTrailer),
            },
            State::TrailerLf | State::FinalLf => match byte {
                b'\n' if self.state == State::FinalLf => State::Done,
                b'\n' => State::TrailerStart,
                _ => return Err(ChunkedError::BadTrailer),
            },
            State::Data | State::Done => unreachable!("handled by step"),
        };
        Ok(())
    }

    /// Counts one trailer byte against the cap and moves to `next`.
    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkedError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILERS {
            return Err(ChunkedError::BadTrailer);
        }
        Ok(next)
    }
}

/// A `tchar` (RFC 9110 §5.6.2).
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A canonical chunk-size line (lowercase hex, no extensions, CRLF).
pub struct ChunkSizeLine {
    bytes: [u8; 18],
    start: usize,
}

impl ChunkSizeLine {
    pub fn new(len: usize) -> ChunkSizeLine {
        let mut bytes = [0u8; 18];
        bytes[16..].copy_from_slice(b"\r\n");
        let mut n = len;
        let mut start = 16;
        loop {
            start -= 1;
            bytes[start] = b"0123456789abcdef"[n & 0xf];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        ChunkSizeLine { bytes, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

/// Appends a canonical chunk-size line for `len` payload bytes.
pub fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(ChunkSizeLine::new(len).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `split` bytes; returns payload and leftover.
    fn decode_split(input: &[u8], split: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut payload = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in input.chunks(split) {
            pending.extend_from_slice(piece);
            let mut offset = 0;
            while offset < pending.len() && !decoder.is_done() {
                let step = decoder.step(&pending[offset..])?;
                payload.extend_from_slice(&pending[offset..][step.data]);
                offset += step.consumed;
            }
            pending.drain(..offset);
        }
        assert!(decoder.is_done(), "message incomplete");
        Ok((payload, pending))
    }

    #[test]
    fn decodes_any_split() {
        let input = b"5;ext=\"a b\"\r\nhello\r\n1A \t;x\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nGET";
        for split in 1..input.len() {
            let (payload, rest) = decode_split(input, split).unwrap();
            assert_eq!(payload, b"helloabcdefghijklmnopqrstuvwxyz");
            assert_eq!(rest, b"GET");
        }
    }

    #[test]
    fn rejects_malformed() {
        let cases: &[&[u8]] = &[
            b"x\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"-5\r\n",
            b"5 5\r\n",
            b"5 \r\n",
            b"0x5\r\n",
            b"11111111111111111\r\n",
            b"5;a\0b\r\n",
            b"0\r\nbad\nfield\r\n\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nnocolon\r\n\r\n",
            b"0\r\nGET /x HTTP/1.1\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nX-T: a\x01b\r\n\r\n",
        ];
        for case in cases {
            assert!(
                decode_split(case, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn leading_zeros_in_a_size_are_allowed() {
        let input = b"000000000000000000000005\r\nhello\r\n00\r\n\r\n";
        assert_eq!(decode_split(input, 64).unwrap().0, b"hello");
    }

    #[test]
    fn encodes_sizes() {
        let mut out = Vec::new();
        write_chunk_size(&mut out, 0x1a2b);
        write_chunk_size(&mut out, 0);
        assert_eq!(out, b"1a2b\r\n0\r\n");
    }
}
