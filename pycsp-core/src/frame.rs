//! Frames: how every message of the socket protocol, and of a process's control connection,
//! is cut out of a byte stream.
//!
//! A frame is a little-endian `u32` length `N`, then `N` bytes: one byte of [`Kind`] and
//! `N - 1` bytes of body. `N` is at least 1 and at most [`MAX_FRAME`]; anything else, an unknown
//! kind, or a stream that ends inside a frame is a [`FrameError`], and the connection that
//! sent it is closed. The layout of each kind's body is in the book's wire-format chapter and
//! in [`crate::net::proto`]; a control connection (parent and child process) carries one
//! [`Kind::Args`] frame one way and one [`Kind::Report`] frame back.

use std::io::{self, Read, Write};

/// The largest message a socket channel carries (its MessagePack encoding), in bytes.
pub const MAX_MESSAGE: usize = 64 << 20;

/// The largest frame length (kind byte and body), in bytes.
pub const MAX_FRAME: usize = MAX_MESSAGE + 1;

macro_rules! kinds {
    ($($(#[$m:meta])* $name:ident = $v:expr,)*) => {
        /// What a frame is (its first byte after the length).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Kind { $($(#[$m])* $name = $v,)* }

        impl Kind {
            /// The kind with this byte, if there is one.
            pub fn from_byte(b: u8) -> Option<Kind> {
                match b { $($v => Some(Kind::$name),)* _ => None }
            }
        }
    };
}

kinds! {
    /// Server to client, first frame: 32 random bytes to answer.
    Challenge = 0x01,
    /// Client to server: HMAC of the challenge (32 bytes), then the client's own 32-byte
    /// challenge.
    Answer = 0x02,
    /// Server to client: HMAC of the client's challenge (32 bytes).
    Proof = 0x03,
    /// Client to server: which channel, which type, which side (MessagePack map).
    Open = 0x10,
    /// Server to client: the channel is open (MessagePack map with its capacity).
    Opened = 0x11,
    /// Client to server: one message (its MessagePack encoding) to write.
    Write = 0x20,
    /// Server to client: the last request succeeded.
    Done = 0x21,
    /// Client to server: one message to write for a select that may change its mind (a
    /// remote select's output guard on a rendezvous channel): the host waits for a reader
    /// until one takes it (`Done`) or the client sends `Withdraw` (`Error` `timeout`: not
    /// taken).
    Offer = 0x23,
    /// Client to server, while its `Offer` waits: take it back (ignored once answered).
    Withdraw = 0x24,
    /// Client to server: read one message.
    Read = 0x30,
    /// Server to client: the message read (its MessagePack encoding).
    Message = 0x31,
    /// Client to server: the last message was taken by a reader.
    Ack = 0x32,
    /// Client to server: the last message was not taken; put it back.
    Nack = 0x33,
    /// Client to server: poison the channel.
    Poison = 0x40,
    /// Client to server: this end retires; the connection closes after `Done`.
    Retire = 0x41,
    /// Client to server: this end moves to another process, which will present the token in
    /// its `Open` (body: the token, `u64` little-endian); the connection closes after `Done`.
    Handoff = 0x42,
    /// Parent to child, on a process's control connection: its arguments (MessagePack).
    Args = 0x50,
    /// Child to parent, on a process's control connection: how it ended (MessagePack).
    Report = 0x51,
    /// Either way: the request failed, or the peer refuses the connection (MessagePack map
    /// with `code` and `message`).
    Error = 0x7f,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: Kind,
    /// Its body.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame of `kind` with `body`.
    pub fn new(kind: Kind, body: Vec<u8>) -> Frame {
        Frame { kind, body }
    }

    /// A frame with no body.
    pub fn empty(kind: Kind) -> Frame {
        Frame {
            kind,
            body: Vec::new(),
        }
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(5 + self.body.len());
        v.extend_from_slice(&((self.body.len() + 1) as u32).to_le_bytes());
        v.push(self.kind as u8);
        v.extend_from_slice(&self.body);
        v
    }
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream ended between frames (the peer closed the connection).
    #[error("the connection was closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("the connection was closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes of the frame received.
        got: usize,
        /// Bytes the frame said it had.
        want: usize,
    },
    /// A frame length of 0 (every frame has at least its kind byte).
    #[error("a frame of length 0")]
    Empty,
    /// A frame longer than the limit.
    #[error("a frame of {len} bytes; the limit is {max}")]
    TooLarge {
        /// The length it announced.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A kind byte that is not in the protocol.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A frame of a kind that is not expected at this point of the conversation, or whose body
    /// is malformed.
    #[error("unexpected or malformed frame: {0}")]
    Unexpected(String),
    /// The operating system reported an error (includes time-outs of dead links).
    #[error("{0}")]
    Io(String),
}

/// Parses one frame at the start of `buf`: `Ok(None)` if `buf` holds only part of one,
/// else the frame and the bytes it used.
pub fn parse(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() == 4 {
        return Ok(None);
    }
    let kind = Kind::from_byte(buf[4]).ok_or(FrameError::UnknownKind(buf[4]))?;
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let frame = Frame::new(kind, buf[5..4 + len].to_vec());
    Ok(Some((frame, 4 + len)))
}

/// How much of a frame's announced body [`read_frame`] reserves before any of it arrived.
const PREALLOCATE: usize = 1 << 20;

/// Reads one frame of at most `max` bytes from `r`. The body is allocated only after its
/// length passed the limit, and beyond 1 MiB only as its bytes arrive.
///
/// The length and the kind byte are asked for in one read (a frame without a body, such as
/// `Done`, `Read` or `Ack`, costs one system call; one with a body, two), but the length is
/// checked as soon as its four bytes are in: a bad one is refused without waiting for more.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Frame, FrameError> {
    let mut head = [0u8; 5];
    let mut got = 0;
    let mut len = None;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        }
        if got >= 4 && len.is_none() {
            let l = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
            if l == 0 {
                return Err(FrameError::Empty);
            }
            if l > max {
                return Err(FrameError::TooLarge { len: l, max });
            }
            len = Some(l);
        }
    }
    let len = match (got, len) {
        (0, _) => return Err(FrameError::Closed),
        (_, None) => return Err(FrameError::Truncated { got, want: 5 }),
        (4, Some(l)) => {
            return Err(FrameError::Truncated {
                got: 4,
                want: 4 + l,
            })
        }
        (_, Some(l)) => l,
    };
    let kind = Kind::from_byte(head[4]).ok_or(FrameError::UnknownKind(head[4]))?;
    // Memory for the body grows with the bytes that arrive (up to 1 MiB is reserved at once):
    // a peer that announces a long frame and sends little of it holds little memory here.
    let want = len - 1;
    let mut body = Vec::with_capacity(want.min(PREALLOCATE));
    let n = r
        .take(want as u64)
        .read_to_end(&mut body)
        .map_err(io_error)?;
    if n < want {
        return Err(FrameError::Truncated {
            got: 5 + n,
            want: 4 + len,
        });
    }
    Ok(Frame { kind, body })
}

/// Fills `dst[got..]` from `r`, each read asking for all that is missing; a stream that ends
/// first is a truncated frame (of `dst.len()` body bytes).
fn read_exactly(r: &mut impl Read, dst: &mut [u8], mut got: usize) -> Result<(), FrameError> {
    while got < dst.len() {
        match r.read(&mut dst[got..]) {
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got: 5 + got,
                    want: 5 + dst.len(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(())
}

pub(crate) fn io_error(e: io::Error) -> FrameError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            FrameError::Io(format!("no answer from the peer in time ({e})"))
        }
        _ => FrameError::Io(e.to_string()),
    }
}

/// Reads frames from a stream through a buffer: one system call brings in every small frame
/// that has arrived (a stream of `Write` frames, or of their `Done` answers), and a frame
/// longer than the buffer is read into its own body as [`read_frame`] reads it (its memory
/// growing as its bytes arrive).
///
/// Whoever uses one must ask it, not the socket, whether a frame is waiting
/// ([`buffered`](Self::buffered)): the frames it holds are no longer in the socket.
#[derive(Default)]
pub(crate) struct FrameReader {
    /// Bytes read and not yet parsed are `buf[at..end]`; the rest of `buf` is room for the
    /// next read (initialised once, not cleared for each read).
    buf: Vec<u8>,
    at: usize,
    end: usize,
    /// The body of a long frame handed back by [`recycle`](Self::recycle), reused for the next
    /// one: a stream of large messages does not map, fault in and unmap fresh memory for each.
    spare: Vec<u8>,
}

/// A long frame's body is reserved whole up to this size (an authenticated peer's frame, which
/// its writer announced and is sending); beyond it, it grows as its bytes arrive.
const RESERVE_WHOLE: usize = 4 << 20;

/// Bytes a [`FrameReader`] asks for in one read.
const READ_AHEAD: usize = 64 << 10;

impl FrameReader {
    /// Hands back the body of a frame that is done with, for the next long frame.
    pub(crate) fn recycle(&mut self, body: Vec<u8>) {
        if body.capacity() > self.spare.capacity() && body.capacity() <= RESERVE_WHOLE {
            self.spare = body;
        }
    }

    /// Whether bytes are buffered: a whole frame, part of one, or one that is malformed.
    pub(crate) fn buffered(&self) -> bool {
        self.at < self.end
    }

    /// Whether a frame of `kind` comes among the next frames: those whose heads are buffered
    /// here, then in `more` (the bytes that follow, peeked from the socket). Looks at frame
    /// heads only; stops at a length of 0 or where the bytes end.
    pub(crate) fn announces(&self, kind: Kind, more: &[u8]) -> bool {
        let rest = &self.buf[self.at..self.end];
        let byte = |i: usize| {
            if i < rest.len() {
                rest.get(i).copied()
            } else {
                more.get(i - rest.len()).copied()
            }
        };
        let mut at = 0usize;
        loop {
            let (Some(a), Some(b), Some(c), Some(d), Some(k)) = (
                byte(at),
                byte(at + 1),
                byte(at + 2),
                byte(at + 3),
                byte(at + 4),
            ) else {
                return false;
            };
            let len = u32::from_le_bytes([a, b, c, d]) as usize;
            if len == 0 {
                return false;
            }
            if k == kind as u8 {
                return true;
            }
            at = match at.checked_add(4 + len) {
                Some(next) => next,
                None => return false,
            };
        }
    }

    /// Whether a whole frame (or a malformed one) is buffered.
    pub(crate) fn has_frame(&self, max: usize) -> bool {
        !matches!(parse(&self.buf[self.at..self.end], max), Ok(None))
    }

    /// The next buffered frame, if a whole one is there.
    pub(crate) fn parse(&mut self, max: usize) -> Result<Option<Frame>, FrameError> {
        let r = parse(&self.buf[self.at..self.end], max)?;
        Ok(r.map(|(f, n)| {
            self.at += n;
            if self.at == self.end {
                self.at = 0;
                self.end = 0;
            }
            f
        }))
    }

    /// Reads what has arrived, waiting for at least one byte.
    pub(crate) fn fill(&mut self, r: &mut impl Read) -> Result<(), FrameError> {
        if self.at > 0 {
            self.buf.copy_within(self.at..self.end, 0);
            self.end -= self.at;
            self.at = 0;
        }
        let old = self.end;
        if self.buf.len() < old + READ_AHEAD {
            self.buf.resize(old + READ_AHEAD, 0);
        }
        let got = loop {
            match r.read(&mut self.buf[old..old + READ_AHEAD]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                got => break got,
            }
        };
        self.end = old + *got.as_ref().unwrap_or(&0);
        match got {
            Ok(0) if old == 0 => Err(FrameError::Closed),
            Ok(0) => {
                let want = match self.buf[..self.end].get(..4) {
                    Some(l) => 4 + u32::from_le_bytes(l.try_into().unwrap()) as usize,
                    None => 5,
                };
                Err(FrameError::Truncated { got: old, want })
            }
            Ok(_) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    /// The kind and body length of the long frame (longer than a read ahead, of at most `max`
    /// bytes) whose head is buffered and whose body is not all buffered yet, if one is: its
    /// body can be read straight into memory of its own with
    /// [`read_long_body`](Self::read_long_body). A frame that is malformed or too long is left
    /// to [`parse`](Self::parse) and [`next`](Self::next), which refuse it.
    pub(crate) fn long_head(&self, max: usize) -> Option<(Kind, usize)> {
        let rest = &self.buf[self.at..self.end];
        let head: [u8; 4] = rest.get(..4)?.try_into().ok()?;
        let len = u32::from_le_bytes(head) as usize;
        if len <= READ_AHEAD || len > max || rest.len() >= 4 + len {
            return None;
        }
        Some((Kind::from_byte(*rest.get(4)?)?, len - 1))
    }

    /// Reads the body of the long frame [`long_head`](Self::long_head) announced into `dst`,
    /// which must be exactly as long as the body: what is buffered of it, then the rest
    /// straight from `r` (each read asks for all that is missing). The frame is consumed,
    /// also when this fails.
    pub(crate) fn read_long_body(
        &mut self,
        r: &mut impl Read,
        dst: &mut [u8],
    ) -> Result<(), FrameError> {
        let rest = &self.buf[self.at..self.end];
        assert!(
            rest.len() >= 5 && rest.len() - 5 < dst.len(),
            "a long frame's head is buffered, not all of its body"
        );
        let have = rest.len() - 5;
        dst[..have].copy_from_slice(&rest[5..]);
        self.at = 0;
        self.end = 0;
        read_exactly(r, dst, have)
    }

    /// The next frame of at most `max` bytes, waiting for it.
    pub(crate) fn next(&mut self, r: &mut impl Read, max: usize) -> Result<Frame, FrameError> {
        loop {
            if let Some(f) = self.parse(max)? {
                return Ok(f);
            }
            let rest = &self.buf[self.at..self.end];
            if rest.len() >= 5 {
                let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                if len > READ_AHEAD {
                    // A long frame (its length and kind were checked by `parse`): read the
                    // rest of its body into the body itself.
                    let kind = Kind::from_byte(rest[4]).ok_or(FrameError::UnknownKind(rest[4]))?;
                    let want = len - 1;
                    let mut body = std::mem::take(&mut self.spare);
                    body.clear();
                    body.reserve(want.min(RESERVE_WHOLE.max(rest.len())));
                    body.extend_from_slice(&rest[5..]);
                    self.at = 0;
                    self.end = 0;
                    let have = body.len();
                    r.take((want - have) as u64)
                        .read_to_end(&mut body)
                        .map_err(io_error)?;
                    if body.len() < want {
                        return Err(FrameError::Truncated {
                            got: 5 + body.len(),
                            want: 4 + len,
                        });
                    }
                    return Ok(Frame { kind, body });
                }
            }
            self.fill(r)?;
        }
    }
}

/// Bodies up to this size are copied behind their header and go out in one write (one
/// segment); larger ones are written after it without a copy.
pub(crate) const ONE_WRITE: usize = 64 << 10;

/// Appends a frame of `kind` with `body` (at most [`MAX_FRAME`] bytes, checked by whoever
/// made it) to `out`, to be written with others in one system call.
pub(crate) fn append_frame(out: &mut Vec<u8>, kind: Kind, body: &[u8]) {
    debug_assert!(body.len() < MAX_FRAME);
    out.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(body);
}

/// The head of a frame of `kind` with a body of `body_len` bytes (its length, which counts
/// the kind byte, then the kind), or `None` for a body longer than a frame length can say
/// (`u32::MAX - 1` bytes).
pub(crate) fn head(kind: Kind, body_len: usize) -> Option<[u8; 5]> {
    let len = u32::try_from(body_len.checked_add(1)?).ok()?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind as u8;
    Some(head)
}

/// Writes one frame. A body longer than a frame length can say (`u32::MAX - 1` bytes) is
/// refused with [`FrameError::TooLarge`] before anything is written.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), FrameError> {
    let Some(head) = head(frame.kind, frame.body.len()) else {
        return Err(FrameError::TooLarge {
            len: frame.body.len().saturating_add(1),
            max: u32::MAX as usize,
        });
    };
    if frame.body.len() <= ONE_WRITE {
        return w.write_all(&frame.encode()).map_err(io_error);
    }
    write_all_two(w, &head, &frame.body).map_err(io_error)
}

/// Writes `a` then `b` as one stream of bytes, in as few system calls as the stream takes
/// (`writev`): a frame's head and its long body leave together, without a copy and without a
/// segment of their own for the head.
pub(crate) fn write_all_two(w: &mut impl Write, a: &[u8], b: &[u8]) -> io::Result<()> {
    let mut bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
    let mut bufs = &mut bufs[..];
    io::IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes several frames without bodies in one write (one system call, one segment).
pub(crate) fn write_frames(w: &mut impl Write, kinds: &[Kind]) -> Result<(), FrameError> {
    let mut buf = [0u8; 5 * 4];
    let len = kinds.len() * 5;
    assert!(len <= buf.len(), "at most 4 frames at once");
    for (k, b) in kinds.iter().zip(buf.chunks_exact_mut(5)) {
        b[..4].copy_from_slice(&1u32.to_le_bytes());
        b[4] = *k as u8;
    }
    w.write_all(&buf[..len]).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds() -> impl Strategy<Value = Kind> {
        (0u8..=255).prop_filter_map("a kind", Kind::from_byte)
    }

    proptest! {
        #[test]
        fn any_frame_survives_encode_then_parse_and_read(
            kind in kinds(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let f = Frame::new(kind, body);
            let bytes = f.encode();
            prop_assert_eq!(parse(&bytes, MAX_FRAME).unwrap(), Some((f.clone(), bytes.len())));
            prop_assert_eq!(read_frame(&mut &bytes[..], MAX_FRAME).unwrap(), f);
        }

        #[test]
        fn random_bytes_give_a_frame_or_an_error_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = parse(&bytes, 1024);
            let r = read_frame(&mut &bytes[..], 1024);
            // Reading and parsing agree: a frame read is one parse finds too.
            if let Ok(f) = r {
                let (p, used) = parse(&bytes, 1024).unwrap().unwrap();
                prop_assert_eq!(p, f);
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn mutated_frames_are_refused_or_parsed_consistently(
            kind in kinds(),
            body in proptest::collection::vec(any::<u8>(), 0..100),
            at in any::<usize>(),
            byte in any::<u8>(),
            cut in any::<usize>(),
        ) {
            let mut bytes = Frame::new(kind, body).encode();
            let i = at % bytes.len();
            bytes[i] = byte;
            bytes.truncate(cut % (bytes.len() + 1));
            match read_frame(&mut &bytes[..], 256) {
                Ok(f) => {
                    prop_assert!(f.body.len() < 256);
                    prop_assert!(bytes.len() > f.body.len() + 4);
                }
                Err(FrameError::Closed) => prop_assert!(bytes.is_empty()),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_body() {
        let mut bytes = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        bytes.push(Kind::Write as u8);
        assert_eq!(
            read_frame(&mut &bytes[..], MAX_FRAME),
            Err(FrameError::TooLarge {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated_not_closed() {
        let bytes = Frame::new(Kind::Write, vec![1, 2, 3]).encode();
        assert_eq!(
            read_frame(&mut &bytes[..6], MAX_FRAME),
            Err(FrameError::Truncated { got: 6, want: 8 })
        );
        assert_eq!(read_frame(&mut &[][..], MAX_FRAME), Err(FrameError::Closed));
    }

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_frame_longer_than_what_is_reserved_up_front_is_read_whole_as_it_trickles_in() {
        let body: Vec<u8> = (0..3 * PREALLOCATE + 7).map(|i| i as u8).collect();
        let bytes = Frame::new(Kind::Message, body.clone()).encode();
        let mut r = Trickle {
            bytes: &bytes,
            step: 4093,
        };
        assert_eq!(read_frame(&mut r, MAX_FRAME).unwrap().body, body);
        // Announced long, cut short: truncated, after reading what came.
        let mut r = Trickle {
            bytes: &bytes[..PREALLOCATE + 100],
            step: 65536,
        };
        assert_eq!(
            read_frame(&mut r, MAX_FRAME),
            Err(FrameError::Truncated {
                got: PREALLOCATE + 100,
                want: bytes.len()
            })
        );
    }

    #[test]
    fn a_frame_reader_reads_small_and_long_frames_in_order_however_the_bytes_trickle_in() {
        let frames: Vec<Frame> = (0..40u32)
            .map(|i| {
                let len = if i % 7 == 3 {
                    READ_AHEAD + 3 * i as usize
                } else {
                    i as usize
                };
                Frame::new(Kind::Write, vec![i as u8; len])
            })
            .collect();
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        for step in [1, 5, 4093, READ_AHEAD, bytes.len()] {
            let mut r = Trickle {
                bytes: &bytes,
                step,
            };
            let mut fr = FrameReader::default();
            for f in &frames {
                let got = fr.next(&mut r, MAX_FRAME).unwrap();
                assert_eq!(&got, f, "step {step}");
                fr.recycle(got.body);
            }
            assert_eq!(fr.next(&mut r, MAX_FRAME), Err(FrameError::Closed));
        }
        // Cut inside a long frame: truncated.
        let mut r = Trickle {
            bytes: &bytes[..bytes.len() - 1],
            step: 4096,
        };
        let mut fr = FrameReader::default();
        let mut last = Ok(Frame::empty(Kind::Done));
        while last.is_ok() {
            last = fr.next(&mut r, MAX_FRAME);
        }
        assert!(
            matches!(last, Err(FrameError::Truncated { .. })),
            "{last:?}"
        );
    }

    #[test]
    fn a_long_frames_body_is_read_into_memory_of_its_own_and_the_next_frame_stays_whole() {
        let long = Frame::new(Kind::Write, (0..READ_AHEAD * 3).map(|i| i as u8).collect());
        let short = Frame::new(Kind::Write, vec![1, 2, 3]);
        let bytes: Vec<u8> = [long.encode(), short.encode()].concat();
        for step in [1, 4093, READ_AHEAD, bytes.len()] {
            let mut r = Trickle {
                bytes: &bytes,
                step,
            };
            let mut fr = FrameReader::default();
            // The head arrives, a fill at a time.
            while fr.long_head(MAX_FRAME).is_none() {
                assert_eq!(fr.parse(MAX_FRAME), Ok(None), "step {step}");
                fr.fill(&mut r).unwrap();
            }
            assert_eq!(
                fr.long_head(MAX_FRAME),
                Some((Kind::Write, long.body.len())),
                "step {step}"
            );
            let mut body = vec![0u8; long.body.len()];
            fr.read_long_body(&mut r, &mut body).unwrap();
            assert_eq!(body, long.body, "step {step}");
            assert_eq!(fr.next(&mut r, MAX_FRAME), Ok(short.clone()), "step {step}");
        }
        // Too long for the limit, or short: not a long frame to read straight.
        let mut fr = FrameReader::default();
        fr.fill(&mut &bytes[..10]).unwrap();
        assert_eq!(fr.long_head(READ_AHEAD), None);
        assert!(fr.parse(READ_AHEAD).is_err());
        // Cut inside the body: truncated.
        let mut r = Trickle {
            bytes: &bytes[..READ_AHEAD + 100],
            step: 4096,
        };
        let mut fr = FrameReader::default();
        fr.fill(&mut r).unwrap();
        let mut body = vec![0u8; long.body.len()];
        assert!(matches!(
            fr.read_long_body(&mut r, &mut body),
            Err(FrameError::Truncated { .. })
        ));
    }

    /// A writer that takes at most `step` bytes per call, with or without `writev`.
    struct Sink {
        got: Vec<u8>,
        step: usize,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn two_buffers_written_together_arrive_whole_in_order_however_the_writes_are_cut() {
        let (a, b): (Vec<u8>, Vec<u8>) = ((0..100u8).collect(), (100..=255u8).collect());
        for step in [1, 3, 99, 100, 101, 1000] {
            for (x, y) in [(&a[..], &b[..]), (&[][..], &b[..]), (&a[..], &[][..])] {
                let mut w = Sink {
                    got: Vec::new(),
                    step,
                };
                write_all_two(&mut w, x, y).unwrap();
                assert_eq!(w.got, [x, y].concat(), "step {step}");
            }
        }
    }

    #[test]
    fn a_bad_length_is_refused_without_waiting_for_the_kind_byte() {
        /// A stream that fails the test if read past its bytes (a peer that sent no more).
        struct Exactly<'a>(&'a [u8]);
        impl Read for Exactly<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                assert!(!self.0.is_empty(), "read past the length");
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let big = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(
            read_frame(&mut Exactly(&big), MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            read_frame(&mut Exactly(&[0, 0, 0, 0]), MAX_FRAME),
            Err(FrameError::Empty)
        );
    }

    #[test]
    fn unknown_kinds_and_empty_frames_are_refused() {
        assert_eq!(
            read_frame(&mut &[1, 0, 0, 0, 0x99][..], MAX_FRAME),
            Err(FrameError::UnknownKind(0x99))
        );
        assert_eq!(
            read_frame(&mut &[0, 0, 0, 0][..], MAX_FRAME),
            Err(FrameError::Empty)
        );
    }
}
