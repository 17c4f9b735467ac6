//! The WebSocket wire of a session (RFC 6455, server side) and its
//! `permessage-deflate` extension (RFC 7692), compressed once per frame.
//!
//! Guarantees:
//! - An idle connection holds no buffer: bytes are read into a buffer taken
//!   when they arrive and released once they are parsed; a write's bytes
//!   are gathered in a buffer released once they are out.
//! - Every client frame is checked as RFC 6455 asks (masked, no reserved
//!   opcode or bit, control frames short and final, continuations only
//!   inside a message, text is UTF-8), and a message (its frames together,
//!   and once inflated) never exceeds the hard cap: a frame announcing more
//!   is refused from its header, and inflation stops at the cap, so a
//!   deflate bomb costs at most the cap in memory.
//! - `permessage-deflate` is accepted with `server_no_context_takeover` and
//!   `client_no_context_takeover`: every message is compressed on its own,
//!   so an event frame is compressed once (`compressed_of`, kept next to
//!   its plain bytes in the shared `Frame`) and the same bytes are written
//!   to every connection that negotiated the extension. Replies are sent
//!   uncompressed (RSV1 clear), which the extension allows.
//! - Reads and writes are cancel-safe: their progress lives in `Reader` and
//!   `Writer`, so a `select!` that drops a read loses no byte, and a write
//!   stopped mid-way resumes whole frames before the next one (the close).

use super::hub::Frame;
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::io::Cursor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The `Sec-WebSocket-Extensions` answer to an acceptable offer.
pub const DEFLATE_RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The tail every compressed message ends with before it is sent, and
/// that the receiver appends back before inflating (RFC 7692 7.2.1-2).
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Compression level of event frames: they are compressed once for every
/// connection, so the best ratio is affordable; a price frame of ~400
/// bytes takes tens of microseconds.
const DEFLATE_LEVEL: u32 = 9;
/// Bytes read at once while a message arrives.
const READ_CHUNK: usize = 4096;
/// RFC 6455 5.5: a control frame carries at most 125 bytes.
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Whether one of the client's `Sec-WebSocket-Extensions` offers is a
/// `permessage-deflate` whose parameters we can honour: any
/// `client_max_window_bits`, and `server_max_window_bits` only at 15 (we
/// compress once with the full window). Malformed offers are declined.
pub fn offers_deflate<'a>(headers: impl IntoIterator<Item = &'a str>) -> bool {
    headers.into_iter().flat_map(|h| h.split(',')).any(acceptable_offer)
}

fn acceptable_offer(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if seen.contains(&name) {
            return false; // RFC 7692 7: a repeated parameter makes the offer invalid
        }
        seen.push(name);
        let bits_ok = |v: &str| v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b));
        let ok = match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(v)) => bits_ok(v),
            ("server_max_window_bits", Some(v)) => v == "15",
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The compressed payload of an event frame (RSV1 set), computed on first
/// use and kept in the frame for every later connection; `None` when
/// compression would not make it smaller (it then goes out plain).
pub fn compressed_of(frame: &Frame) -> Option<&Bytes> {
    frame.deflated.get_or_init(|| deflate(frame.frame.as_bytes()).filter(|c| c.len() < frame.frame.len())).as_ref()
}

/// One message compressed on its own (no context carried over), without
/// the final empty block's tail, as RFC 7692 sends it.
pub fn deflate(plain: &[u8]) -> Option<Bytes> {
    thread_local! {
        // A compressor's state is large (hundreds of KiB): one per thread,
        // reset between messages, rather than one per message.
        static COMPRESSOR: std::cell::RefCell<Compress> = std::cell::RefCell::new(Compress::new(Compression::new(DEFLATE_LEVEL), false));
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(plain.len() / 2 + 64);
        loop {
            let consumed = c.total_in() as usize;
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            c.compress_vec(&plain[consumed..], &mut out, FlushCompress::Sync).ok()?;
            // Done once all input is in and the flush fitted (room left).
            if c.total_in() as usize == plain.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&DEFLATE_TAIL) {
            out.truncate(out.len() - DEFLATE_TAIL.len());
        }
        Some(Bytes::from(out))
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates beyond the limit (a deflate bomb, or just too big).
    TooBig,
    /// It is not valid deflate data.
    Corrupt,
}

/// Inflates one message (compressed without context), producing at most
/// `limit` bytes: the output grows only as the data does, and stops one
/// byte past the limit.
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut d = Decompress::new(false);
    let mut out: Vec<u8> = Vec::with_capacity((compressed.len() * 4 + 64).min(limit + 1));
    for input in [compressed, &DEFLATE_TAIL[..]] {
        let start = d.total_in();
        loop {
            let consumed = (d.total_in() - start) as usize;
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                let room = (limit + 1 - out.len()).min(out.len().max(1024));
                out.reserve_exact(room);
            }
            let (in_before, out_before) = (d.total_in(), out.len());
            let status = d.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let all_in = (d.total_in() - start) as usize == input.len();
            if status == Status::StreamEnd || (all_in && out.len() < out.capacity()) {
                break;
            }
            if d.total_in() == in_before && out.len() == out_before && out.len() < out.capacity() {
                return Err(InflateError::Corrupt); // no progress with room to spare
            }
        }
    }
    Ok(out)
}

/// A client message (or a control frame the session answers).
#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    /// A close frame; its payload (code and reason), to echo.
    Close(Vec<u8>),
}

/// Why reading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The frames break RFC 6455 or RFC 7692.
    Protocol,
    /// A message above the hard cap (announced, assembled or inflated).
    TooBig,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// The connection ended (no close frame) or failed.
    Lost,
}

/// One WebSocket connection: frames in, messages out, and frames gathered
/// then written in one go. The session never reads while it writes (nor
/// the reverse), so one value owns the socket, with no lock between halves.
pub struct Socket<S> {
    io: S,
    /// Received bytes not yet parsed; no capacity while idle.
    buf: Vec<u8>,
    /// The message being assembled from its frames; no capacity between messages.
    message: Vec<u8>,
    /// The opcode of the message under way and whether it is compressed.
    message_kind: Option<(Data, bool)>,
    /// Bytes to write; no capacity once written.
    out: Vec<u8>,
    /// How many of `out` are written.
    written: usize,
    hard_cap: usize,
    deflate: bool,
    /// A frame was refused: what follows cannot be parsed, only drained.
    failed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    pub fn new(io: S, deflate: bool, hard_cap: usize) -> Self {
        Socket { io, buf: Vec::new(), message: Vec::new(), message_kind: None, out: Vec::new(), written: 0, hard_cap, deflate, failed: false }
    }

    /// The next message or control frame. Cancel-safe. After an error,
    /// reading discards what arrives until the client closes (so that our
    /// close is not lost to a reset).
    pub async fn next(&mut self) -> Result<Incoming, ReadError> {
        if self.failed {
            self.message = Vec::new();
            loop {
                self.buf.clear();
                self.buf.reserve(READ_CHUNK);
                if self.io.read_buf(&mut self.buf).await.map_err(|_| ReadError::Lost)? == 0 {
                    return Err(ReadError::Lost);
                }
            }
        }
        loop {
            match self.parse() {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
            let n = if self.buf.is_empty() {
                // Idle: wait for the first bytes without holding a buffer.
                self.buf = Vec::new();
                let mut first = [0u8; 2];
                let n = self.io.read(&mut first).await.map_err(|_| ReadError::Lost)?;
                self.buf.reserve(READ_CHUNK);
                self.buf.extend_from_slice(&first[..n]);
                n
            } else {
                self.buf.reserve(READ_CHUNK);
                self.io.read_buf(&mut self.buf).await.map_err(|_| ReadError::Lost)?
            };
            if n == 0 {
                return Err(ReadError::Lost);
            }
        }
    }

    /// Parses the frames in `buf`; a message once one is whole.
    fn parse(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(_) => return Err(ReadError::Protocol), // a reserved opcode
            };
            let head_len = cursor.position() as usize;
            let Some(mask) = header.mask else { return Err(ReadError::Protocol) };
            if header.rsv2 || header.rsv3 {
                return Err(ReadError::Protocol);
            }
            match header.opcode {
                OpCode::Control(_) => {
                    if !header.is_final || len > MAX_CONTROL_PAYLOAD || header.rsv1 {
                        return Err(ReadError::Protocol);
                    }
                }
                OpCode::Data(Data::Continue) => {
                    if self.message_kind.is_none() || header.rsv1 {
                        return Err(ReadError::Protocol);
                    }
                }
                OpCode::Data(_) => {
                    if self.message_kind.is_some() || (header.rsv1 && !self.deflate) {
                        return Err(ReadError::Protocol);
                    }
                }
            }
            if len > self.hard_cap as u64 || (matches!(header.opcode, OpCode::Data(_)) && self.message.len() as u64 + len > self.hard_cap as u64) {
                return Err(ReadError::TooBig);
            }
            let end = head_len + len as usize;
            if self.buf.len() < end {
                return Ok(None);
            }
            let payload = &mut self.buf[head_len..end];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            let done = match header.opcode {
                OpCode::Control(Control::Ping) => Some(Incoming::Ping(payload.to_vec())),
                OpCode::Control(Control::Close) => Some(Incoming::Close(payload.to_vec())),
                OpCode::Control(_) => None, // pong
                OpCode::Data(data) => {
                    if data != Data::Continue {
                        self.message_kind = Some((data, header.rsv1));
                    }
                    if self.message.capacity() == 0 && header.is_final {
                        self.message = payload.to_vec();
                    } else {
                        self.message.extend_from_slice(payload);
                    }
                    if header.is_final { Some(self.finish()?) } else { None }
                }
            };
            self.buf.drain(..end);
            if self.buf.is_empty() {
                self.buf = Vec::new();
            }
            if done.is_some() {
                return Ok(done);
            }
        }
    }

    /// The assembled message, inflated when compressed; `message` is left empty.
    fn finish(&mut self) -> Result<Incoming, ReadError> {
        let (data, compressed) = self.message_kind.take().expect("a message under way");
        let mut bytes = std::mem::take(&mut self.message);
        if compressed {
            bytes = inflate(&bytes, self.hard_cap).map_err(|e| match e {
                InflateError::TooBig => ReadError::TooBig,
                InflateError::Corrupt => ReadError::Protocol,
            })?;
        }
        match data {
            Data::Text => String::from_utf8(bytes).map(Incoming::Text).map_err(|_| ReadError::InvalidUtf8),
            _ => Ok(Incoming::Binary),
        }
    }

    /// Whether `permessage-deflate` was negotiated.
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    fn header(&mut self, opcode: OpCode, rsv1: bool, len: usize) {
        let header = FrameHeader { is_final: true, rsv1, rsv2: false, rsv3: false, opcode, mask: None };
        // Writing into a Vec cannot fail.
        let _ = header.format(len as u64, &mut self.out);
    }

    /// Queues an event frame: its shared compressed bytes when the
    /// connection negotiated deflate (and they are smaller), else plain.
    pub fn feed_event(&mut self, frame: &Frame) {
        // Plain connections never pay for compression.
        match if self.deflate { compressed_of(frame) } else { None } {
            Some(c) => {
                self.header(OpCode::Data(Data::Text), true, c.len());
                self.out.extend_from_slice(c);
            }
            None => self.feed_text(frame.frame.as_str()),
        }
    }

    /// Queues a text message, uncompressed.
    pub fn feed_text(&mut self, text: &str) {
        self.header(OpCode::Data(Data::Text), false, text.len());
        self.out.extend_from_slice(text.as_bytes());
    }

    pub fn feed_pong(&mut self, payload: &[u8]) {
        self.header(OpCode::Control(Control::Pong), false, payload.len());
        self.out.extend_from_slice(payload);
    }

    /// Queues a close frame with a code and reason (cut to fit 125 bytes),
    /// or the client's own close payload echoed (`code` `None`).
    pub fn feed_close(&mut self, code: Option<u16>, reason: &str, echo: &[u8]) {
        let mut payload = Vec::with_capacity(MAX_CONTROL_PAYLOAD as usize);
        match code {
            Some(code) => {
                payload.extend_from_slice(&code.to_be_bytes());
                let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                payload.extend_from_slice(&reason.as_bytes()[..cut]);
            }
            None => payload.extend_from_slice(&echo[..echo.len().min(MAX_CONTROL_PAYLOAD as usize)]),
        }
        self.header(OpCode::Control(Control::Close), false, payload.len());
        self.out.extend_from_slice(&payload);
    }

    /// Writes what is queued (first the rest of an interrupted write).
    /// Cancel-safe: an interrupted flush resumes where it stopped.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        while self.written < self.out.len() {
            let n = self.io.write(&self.out[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        self.out = Vec::new();
        self.written = 0;
        self.io.flush().await
    }

    /// Queues and writes one text message.
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.feed_text(text);
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_read_as_rfc_7692_says() {
        assert!(offers_deflate(["permessage-deflate; client_max_window_bits"]));
        assert!(offers_deflate(["permessage-deflate"]));
        assert!(offers_deflate(["x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover; server_no_context_takeover"]));
        assert!(offers_deflate(["permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=\"15\""]));
        assert!(!offers_deflate(["permessage-deflate; server_max_window_bits=10"]), "a smaller server window is declined");
        assert!(!offers_deflate(["permessage-deflate; client_max_window_bits=16"]));
        assert!(!offers_deflate(["permessage-deflate; client_no_context_takeover; client_no_context_takeover"]));
        assert!(!offers_deflate(["permessage-deflate; unknown"]));
        assert!(!offers_deflate(["x-webkit-deflate-frame"]));
        assert!(!offers_deflate([]));
    }

    #[test]
    fn a_message_deflates_and_inflates_back() {
        let plain = br#"{"type":"event","channel":"prices","data":{"token":"ETH","price":"3120.55","price":"3120.55","chain":1}}"#;
        let c = deflate(plain).unwrap();
        assert!(c.len() < plain.len());
        assert!(!c.ends_with(&DEFLATE_TAIL));
        assert_eq!(inflate(&c, 1024).unwrap(), plain);
        // Deterministic: the same bytes every time (the compressor is reset).
        assert_eq!(deflate(plain).unwrap(), c);
        assert_eq!(inflate(&deflate(b"").unwrap(), 10).unwrap(), b"");
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        let bomb = deflate(&vec![b'a'; 10 * 1024 * 1024]).unwrap();
        assert!(bomb.len() < 20 * 1024, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 64 * 1024), Err(InflateError::TooBig));
        let exact = deflate(&vec![b'a'; 1000]).unwrap();
        assert_eq!(inflate(&exact, 1000).unwrap().len(), 1000);
        assert_eq!(inflate(&exact, 999), Err(InflateError::TooBig));
        assert_eq!(inflate(&[0xff, 0xff, 0xff], 1000), Err(InflateError::Corrupt));
    }
}
