//! The socket protocol spoken byte by byte, from the book's wire-format chapter alone (frames,
//! handshake, MessagePack bodies), as a program in another language would speak it; and what a
//! host does with a peer that breaks it.

mod common;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use pycsp::prelude::*;
use serde::Serialize;
use sha2::Sha256;

/// How long a test waits for something that should happen at once.
const PROMPT: Duration = Duration::from_secs(5);

/// This process's key (the host's): what a trusted program would be given.
fn key() -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    pycsp::net::key_env().unwrap().1.into_vec()
}

fn hmac(key: &[u8], label: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(label);
    m.update(nonce);
    m.finalize().into_bytes().to_vec()
}

// Frame kinds, as the wire-format chapter lists them.
const CHALLENGE: u8 = 0x01;
const ANSWER: u8 = 0x02;
const PROOF: u8 = 0x03;
const OPEN: u8 = 0x10;
const OPENED: u8 = 0x11;
const WRITE: u8 = 0x20;
const DONE: u8 = 0x21;
const OFFER: u8 = 0x23;
const WITHDRAW: u8 = 0x24;
const READ: u8 = 0x30;
const MESSAGE: u8 = 0x31;
const ACK: u8 = 0x32;
const NACK: u8 = 0x33;
const RETIRE: u8 = 0x41;
const ERROR: u8 = 0x7f;

// ANCHOR: open
/// The `Open` body: a MessagePack map with these field names.
#[derive(Serialize)]
struct Open<'a> {
    channel: &'a str,
    type_name: &'a str,
    fingerprint: u64,
    writer: bool,
    token: Option<u64>,
    process: &'a str,
    pid: u32,
}

/// The fingerprint of a Rust type: FNV-1a (64 bits) of its name, XOR its size rotated left 56.
fn fingerprint(type_name: &str, size: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in type_name.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ size.rotate_left(56)
}
// ANCHOR_END: open

// ANCHOR: raw
/// A connection that speaks the protocol by hand.
struct Raw(TcpStream);

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(PROMPT)).unwrap();
        Raw(s)
    }

    /// A frame: `u32` little-endian length (kind byte + body), the kind, the body.
    fn send(&mut self, kind: u8, body: &[u8]) {
        let mut f = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        f.push(kind);
        f.extend_from_slice(body);
        self.0.write_all(&f).unwrap();
    }

    /// The next frame, or `None` when the host closed the connection.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        match self.0.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading a frame: {e}"),
        }
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 1];
        self.0.read_exact(&mut body).unwrap();
        Some((head[4], body))
    }

    /// Whether the host closed the connection (with nothing more to read).
    fn closed_by_host(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.0.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    /// The client's half of the handshake; the host's answer frame (`Proof` or `Error`).
    fn handshake(&mut self, key: &[u8]) -> (u8, Vec<u8>) {
        let (kind, challenge) = self.recv().expect("a challenge");
        assert_eq!(kind, CHALLENGE);
        assert_eq!(challenge.len(), 32);
        let mine = [7u8; 32];
        let mut answer = hmac(key, b"pycsp-1 client", &challenge);
        answer.extend_from_slice(&mine);
        self.send(ANSWER, &answer);
        let (kind, body) = self.recv().expect("a proof or an error");
        if kind == PROOF {
            assert_eq!(
                body,
                hmac(key, b"pycsp-1 server", &mine),
                "the host's proof"
            );
        }
        (kind, body)
    }

    // ANCHOR_END: raw

    /// Authenticates with this process's key and opens an end of `channel`, carrying u64.
    fn open_u64(port: u16, channel: &str, writer: bool) -> Raw {
        Raw::open_u64_said(port, channel, writer).0
    }

    /// [`open_u64`](Self::open_u64), and the body of the host's `Opened`.
    fn open_u64_said(port: u16, channel: &str, writer: bool) -> (Raw, Vec<u8>) {
        let mut r = Raw::connect(port);
        assert_eq!(r.handshake(&key()).0, PROOF);
        let open = Open {
            channel,
            type_name: "u64",
            fingerprint: fingerprint("u64", 8),
            writer,
            token: None,
            process: "a hand-written client",
            pid: 4242,
        };
        r.send(OPEN, &rmp_serde::to_vec_named(&open).unwrap());
        let (kind, body) = r.recv().expect("an answer to Open");
        assert_eq!(kind, OPENED, "{}", error_text(&body));
        (r, body)
    }

    /// Authenticates and opens an end of `channel` carrying `Vec<u8>` (fingerprint 0: the
    /// host checks only that every message decodes as its type).
    fn open_bytes(port: u16, channel: &str, writer: bool) -> Raw {
        let mut r = Raw::connect(port);
        assert_eq!(r.handshake(&key()).0, PROOF);
        let open = Open {
            channel,
            type_name: "alloc::vec::Vec<u8>",
            fingerprint: 0,
            writer,
            token: None,
            process: "a hand-written client",
            pid: 4343,
        };
        r.send(OPEN, &rmp_serde::to_vec_named(&open).unwrap());
        let (kind, body) = r.recv().expect("an answer to Open");
        assert_eq!(kind, OPENED, "{}", error_text(&body));
        r
    }

    fn write_u64(&mut self, v: u64) -> (u8, Vec<u8>) {
        self.send(WRITE, &rmp_serde::to_vec(&v).unwrap());
        self.recv().expect("an answer to Write")
    }
}

/// The `code` and `message` of an `Error` body.
fn error_fields(body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct E {
        code: String,
        message: String,
    }
    let e: E = rmp_serde::from_slice(body).expect("an Error body is a map with code, message");
    (e.code, e.message)
}

/// An `Error` body as text, for failed assertions.
fn error_text(body: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(body))
}

#[test]
fn a_client_written_from_the_wire_format_alone_writes_and_reads() {
    let inbox = Channel::<u64>::named("tcp://127.0.0.1:0/inbox").unwrap();
    let port = common::port_of(inbox.name());
    let outbox =
        Channel::<u64>::named_buffered(&format!("tcp://127.0.0.1:{port}/outbox"), 4).unwrap();
    let (from_client, to_client) = (inbox.reader(), outbox.writer());
    let host = std::thread::spawn(move || {
        let got: Vec<u64> = (0..3).map(|_| from_client.read().unwrap()).collect();
        for v in &got {
            to_client.write(v * 100).unwrap();
        }
        got
    });
    let mut w = Raw::open_u64(port, "inbox", true);
    for v in [1u64, 2, 3] {
        // A rendezvous channel: Done comes once the host's reader took the message.
        assert_eq!(w.write_u64(v).0, DONE);
    }
    w.send(RETIRE, &[]);
    assert_eq!(w.recv().unwrap().0, DONE);
    assert!(w.closed_by_host());
    assert_eq!(host.join().unwrap(), vec![1, 2, 3]);

    let mut r = Raw::open_u64(port, "outbox", false);
    for want in [100u64, 200, 300] {
        r.send(READ, &[]);
        let (kind, body) = r.recv().unwrap();
        assert_eq!(kind, MESSAGE);
        assert_eq!(rmp_serde::from_slice::<u64>(&body).unwrap(), want);
        r.send(ACK, &[]);
    }
    // The host's only writer is gone: the next Read is answered with Error "retired".
    drop(outbox);
    r.send(READ, &[]);
    let (kind, body) = r.recv().unwrap();
    assert_eq!(kind, ERROR);
    assert_eq!(error_fields(&body).0, "retired");
}

/// A TCP relay that records every byte it forwards, per connection and direction.
type Captured = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

fn relay(to: u16) -> (u16, Captured) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Captured = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let host = TcpStream::connect(("127.0.0.1", to)).unwrap();
            let i = {
                let mut s = seen2.lock().unwrap();
                s.push(Default::default());
                s.len() - 1
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream, up: bool, seen: Captured| {
                std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    while let Ok(n @ 1..) = from.read(&mut b) {
                        let mut s = seen.lock().unwrap();
                        let dir = if up { &mut s[i].0 } else { &mut s[i].1 };
                        dir.extend_from_slice(&b[..n]);
                        drop(s);
                        if to.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                })
            };
            pipe(
                client.try_clone().unwrap(),
                host.try_clone().unwrap(),
                true,
                seen2.clone(),
            );
            pipe(host, client, false, seen2.clone());
        }
    });
    (port, seen)
}

#[test]
fn the_key_never_crosses_the_wire_only_nonces_and_macs_do() {
    let ch = Channel::<String>::named("tcp://127.0.0.1:0/secret-test").unwrap();
    let port = common::port_of(ch.name());
    let (relay_port, captured) = relay(port);
    // This process attaches through the relay, as a process outside the network would.
    let remote =
        Channel::<String>::open(&format!("tcp://127.0.0.1:{relay_port}/secret-test")).unwrap();
    let w = remote.writer();
    let r = ch.reader();
    let t = std::thread::spawn(move || r.read().unwrap());
    w.write("hello".to_string()).unwrap();
    assert_eq!(t.join().unwrap(), "hello");
    w.retire();

    let key = key();
    let conns = captured.lock().unwrap().clone();
    assert!(conns.len() >= 2, "the probe and the writer's connection");
    for (up, down) in &conns {
        for bytes in [up, down] {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_slice()),
                "the key crossed the wire"
            );
        }
        // Host to client: Challenge (32 random bytes) first; then the Proof.
        assert_eq!(&down[..5], &[33, 0, 0, 0, CHALLENGE]);
        let challenge = &down[5..37];
        assert_eq!(&down[37..42], &[33, 0, 0, 0, PROOF]);
        // Client to host: Answer = HMAC(key, "pycsp-1 client" || challenge), own nonce.
        assert_eq!(&up[..5], &[65, 0, 0, 0, ANSWER]);
        assert_eq!(
            &up[5..37],
            hmac(&key, b"pycsp-1 client", challenge).as_slice()
        );
        let nonce = &up[37..69];
        assert_eq!(
            &down[42..74],
            hmac(&key, b"pycsp-1 server", nonce).as_slice()
        );
        assert_eq!(up[73], OPEN, "Open follows the handshake");
    }
}

#[test]
fn a_wrong_key_is_refused_with_an_auth_error_on_both_sides_and_the_host_serves_on() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/guarded", 4).unwrap();
    let port = common::port_of(ch.name());
    let mut bad = Raw::connect(port);
    let (kind, body) = bad.handshake(b"not the key");
    assert_eq!(kind, ERROR);
    let (code, message) = error_fields(&body);
    assert_eq!(code, "auth");
    assert!(message.contains("key differs"), "{message}");
    assert!(bad.closed_by_host());
    match pycsp::net::next_connection_error(&format!("tcp://127.0.0.1:{port}"), PROMPT) {
        Some(ChannelError::Auth { reason, .. }) => {
            assert!(reason.contains("key differs"), "{reason}")
        }
        other => panic!("the host should record an Auth error, got {other:?}"),
    }
    // The host carries on: a peer with the key is served.
    let mut good = Raw::open_u64(port, "guarded", true);
    assert_eq!(good.write_u64(5).0, DONE);
    assert_eq!(ch.reader().read().unwrap(), 5);
}

/// What a bad connection does after authenticating and opening a writing end.
enum Bad {
    /// A `Write` whose body is not a MessagePack u64.
    Malformed,
    /// A length above the limit.
    Oversized,
    /// A kind byte the protocol does not have.
    UnknownKind,
    /// A length of 0 (not even a kind byte).
    Empty,
    /// A frame of a kind a writer's connection never sends.
    WrongKind,
}

#[test]
fn bad_frames_close_only_their_connection_and_lose_no_acknowledged_message() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/robust", 1000).unwrap();
    let port = common::port_of(ch.name());
    let at = format!("tcp://127.0.0.1:{port}");
    let reader = ch.reader();
    let mut good = Raw::open_u64(port, "robust", true);
    let mut acked = Vec::new();
    let mut next = 0u64;
    let mut write_some = |good: &mut Raw, acked: &mut Vec<u64>| {
        for _ in 0..20 {
            assert_eq!(good.write_u64(next).0, DONE);
            acked.push(next);
            next += 1;
        }
    };
    for bad in [
        Bad::Malformed,
        Bad::Oversized,
        Bad::UnknownKind,
        Bad::Empty,
        Bad::WrongKind,
    ] {
        write_some(&mut good, &mut acked);
        let mut b = Raw::open_u64(port, "robust", true);
        let expect = match bad {
            Bad::Malformed => {
                b.send(WRITE, &rmp_serde::to_vec("not a number").unwrap());
                "not a u64"
            }
            Bad::Oversized => {
                let len = (64u32 << 20) + 2;
                let mut head = len.to_le_bytes().to_vec();
                head.push(WRITE);
                b.0.write_all(&head).unwrap();
                "the limit is"
            }
            Bad::UnknownKind => {
                b.send(0x99, &[]);
                "unknown frame kind 0x99"
            }
            Bad::Empty => {
                b.0.write_all(&[0, 0, 0, 0]).unwrap();
                "length 0"
            }
            Bad::WrongKind => {
                b.send(MESSAGE, &rmp_serde::to_vec(&1u64).unwrap());
                "a Message frame on the connection of a writer"
            }
        };
        let (kind, body) = b.recv().expect("an Error frame before the close");
        assert_eq!(kind, ERROR);
        let (code, message) = error_fields(&body);
        assert_eq!(code, "protocol", "{message}");
        assert!(message.contains(expect), "{message}");
        assert!(b.closed_by_host());
        match pycsp::net::next_connection_error(&at, PROMPT) {
            Some(ChannelError::Protocol { reason, address }) => {
                assert!(reason.contains(expect), "{reason}");
                assert_eq!(address, format!("{at}/robust"));
            }
            other => panic!("the host should record a Protocol error, got {other:?}"),
        }
    }
    // Bad frames before any end was opened: in the handshake and in place of Open.
    let mut b = Raw::connect(port);
    b.recv().unwrap();
    b.send(OPEN, b"too early");
    let (kind, body) = b.recv().unwrap();
    assert_eq!((kind, error_fields(&body).0.as_str()), (ERROR, "protocol"));
    assert!(b.closed_by_host());
    assert!(matches!(
        pycsp::net::next_connection_error(&at, PROMPT),
        Some(ChannelError::Protocol { .. })
    ));
    let mut b = Raw::connect(port);
    assert_eq!(b.handshake(&key()).0, PROOF);
    b.send(OPEN, &[0xc1, 0xff, 0x00]);
    let (kind, body) = b.recv().unwrap();
    assert_eq!((kind, error_fields(&body).0.as_str()), (ERROR, "protocol"));
    assert!(matches!(
        pycsp::net::next_connection_error(&at, PROMPT),
        Some(ChannelError::Protocol { .. })
    ));
    write_some(&mut good, &mut acked);
    // Every acknowledged message is there, in order.
    let got: Vec<u64> = (0..acked.len()).map(|_| reader.read().unwrap()).collect();
    assert_eq!(got, acked);
}

#[test]
fn a_reader_that_breaks_the_protocol_after_taking_a_message_gives_it_back() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/given-back", 4).unwrap();
    let port = common::port_of(ch.name());
    let (w, host_reader) = (ch.writer(), ch.reader());
    w.write(11).unwrap();
    let mut r = Raw::open_u64(port, "given-back", false);
    r.send(READ, &[]);
    let (kind, body) = r.recv().unwrap();
    assert_eq!(
        (kind, rmp_serde::from_slice::<u64>(&body).unwrap()),
        (MESSAGE, 11)
    );
    // Garbage instead of Ack: the host closes the connection and keeps the message.
    r.send(0x99, &[]);
    assert_eq!(r.recv().unwrap().0, ERROR);
    assert!(r.closed_by_host());
    assert_eq!(host_reader.read_timeout(PROMPT), Ok(11));
}

#[test]
fn an_offer_waits_for_a_reader_until_the_client_withdraws_it() {
    let ch = Channel::<u64>::named("tcp://127.0.0.1:0/offers").unwrap();
    let port = common::port_of(ch.name());
    let host_reader = ch.reader();
    let mut w = Raw::open_u64(port, "offers", true);
    // Nobody reads: no answer, however long; withdrawn, it was not delivered.
    w.send(OFFER, &rmp_serde::to_vec(&5u64).unwrap());
    unanswered_then_withdrawn(&mut w);
    assert_eq!(
        host_reader.read_timeout(Duration::from_millis(100)),
        Err(ChannelError::Timeout)
    );
    // Offered again, a reader takes it: `Done`; a `Withdraw` sent too late changes nothing.
    w.send(OFFER, &rmp_serde::to_vec(&6u64).unwrap());
    assert_eq!(host_reader.read_timeout(PROMPT), Ok(6));
    assert_eq!(w.recv().unwrap().0, DONE);
    w.send(WITHDRAW, &[]);
    w.send(OFFER, &rmp_serde::to_vec(&7u64).unwrap());
    assert_eq!(host_reader.read_timeout(PROMPT), Ok(7));
    assert_eq!(w.recv().unwrap().0, DONE, "an offer after a late Withdraw");
}

/// After an `Offer` nobody reads: no answer comes (in 300 ms), and a `Withdraw` gets
/// `Error(timeout)`.
fn unanswered_then_withdrawn(w: &mut Raw) {
    w.0.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(w.0.read(&mut b).is_err(), "an answer while nobody read");
    w.0.set_read_timeout(Some(PROMPT)).unwrap();
    w.send(WITHDRAW, &[]);
    let (kind, body) = w.recv().unwrap();
    assert_eq!((kind, error_fields(&body).0.as_str()), (ERROR, "timeout"));
}

/// Reads the next frame, a `Message` of a u64.
fn message_u64(r: &mut Raw) -> u64 {
    let (kind, body) = r.recv().expect("a Message");
    assert_eq!(kind, MESSAGE, "{}", error_text(&body));
    rmp_serde::from_slice(&body).unwrap()
}

#[test]
fn a_reader_asks_for_messages_ahead_within_the_window_and_acknowledges_them_in_order() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/ahead", 4).unwrap();
    let port = common::port_of(ch.name());
    let (w, host_reader) = (ch.writer(), ch.reader());
    for v in 0..4 {
        w.write(v).unwrap();
    }
    let mut r = Raw::open_u64(port, "ahead", false);
    // Three reads ahead, in one write: three messages, in order, none acknowledged yet.
    r.0.write_all(&[1, 0, 0, 0, READ].repeat(3)).unwrap();
    assert_eq!([0, 1, 2].map(|_| message_u64(&mut r)), [0, 1, 2]);
    // Their slots stay taken until acknowledged: the channel (capacity 4) is full.
    assert!(matches!(w.try_write(4), Err(TryWriteError::Full(4))));
    r.send(ACK, &[]);
    r.send(ACK, &[]);
    // Two slots are free again.
    w.write_timeout(4, PROMPT).unwrap();
    w.write_timeout(5, PROMPT).unwrap();
    // Message 2 (not acknowledged) goes back when the reader gives back what it holds, though
    // the channel is full.
    r.send(NACK, &[]);
    let mut rest: Vec<u64> = (0..4)
        .map(|_| host_reader.read_timeout(PROMPT).unwrap())
        .collect();
    rest.sort();
    assert_eq!(rest, [2, 3, 4, 5]);
}

#[test]
fn a_message_given_back_to_a_full_channel_is_read_again() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/full", 1).unwrap();
    let port = common::port_of(ch.name());
    let (w, host_reader) = (ch.writer(), ch.reader());
    w.write(9).unwrap();
    let mut r = Raw::open_u64(port, "full", false);
    r.send(READ, &[]);
    assert_eq!(message_u64(&mut r), 9);
    // Given back while its slot is the whole channel.
    r.send(NACK, &[]);
    assert_eq!(host_reader.read_timeout(PROMPT), Ok(9));
}

/// The `Opened` body's fields that say how much a reader may ask for.
#[derive(serde::Deserialize)]
struct Opened {
    capacity: u64,
    read_window: Option<u64>,
}

#[test]
fn opened_says_the_read_window_and_a_reader_may_ask_that_far_ahead() {
    let window = pycsp::net::READ_WINDOW;
    let mut keep = Vec::new();
    let mut readers = Vec::new();
    // The first channel listens on a port the system picks; the others join it there.
    let mut port = 0;
    for (name, capacity, said) in [("rv", 0, 1), ("four", 4, 4), ("wide", 1000, window)] {
        let at = format!("tcp://127.0.0.1:{port}/{name}");
        keep.push(Channel::<u64>::named_buffered(&at, capacity).unwrap());
        port = common::port_of(keep[0].name());
        let (r, body) = Raw::open_u64_said(port, name, false);
        readers.push(r);
        let o: Opened = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(
            (o.capacity, o.read_window),
            (capacity as u64, Some(said as u64))
        );
    }
    // As many reads ahead as it says, in one write, are answered in order...
    let w = keep[2].writer();
    for v in 0..=window as u64 {
        w.write(v).unwrap();
    }
    let mut r = readers.pop().unwrap();
    r.0.write_all(&[1, 0, 0, 0, READ].repeat(window)).unwrap();
    for v in 0..window as u64 {
        assert_eq!(message_u64(&mut r), v);
    }
    // ... and one more is a protocol error, though the channel has a message for it.
    r.send(READ, &[]);
    let (kind, body) = r.recv().unwrap();
    assert_eq!((kind, error_fields(&body).0.as_str()), (ERROR, "protocol"));
}

#[test]
fn a_read_beyond_the_window_is_a_protocol_error_and_what_the_reader_held_goes_back() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/window", 2).unwrap();
    let port = common::port_of(ch.name());
    let (w, host_reader) = (ch.writer(), ch.reader());
    w.write(7).unwrap();
    w.write(8).unwrap();
    let mut r = Raw::open_u64(port, "window", false);
    r.0.write_all(&[1, 0, 0, 0, READ].repeat(2)).unwrap();
    assert_eq!([0, 1].map(|_| message_u64(&mut r)), [7, 8]);
    // A third read while two messages are held: beyond the capacity of 2.
    r.send(READ, &[]);
    let (kind, body) = r.recv().unwrap();
    assert_eq!((kind, error_fields(&body).0.as_str()), (ERROR, "protocol"));
    assert!(r.closed_by_host());
    let mut back = [0, 1].map(|_| host_reader.read_timeout(PROMPT).unwrap());
    back.sort();
    assert_eq!(back, [7, 8]);
}

#[test]
fn a_reader_that_hangs_up_holding_messages_gives_every_one_back() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/held", 8).unwrap();
    let port = common::port_of(ch.name());
    let (w, host_reader) = (ch.writer(), ch.reader());
    for v in 0..5 {
        w.write(v).unwrap();
    }
    let mut r = Raw::open_u64(port, "held", false);
    r.0.write_all(&[1, 0, 0, 0, READ].repeat(5)).unwrap();
    assert_eq!([0; 5].map(|_| message_u64(&mut r)), [0, 1, 2, 3, 4]);
    r.send(ACK, &[]);
    drop(r);
    let mut back = [0; 4].map(|_| host_reader.read_timeout(PROMPT).unwrap());
    back.sort();
    assert_eq!(back, [1, 2, 3, 4]);
}

#[test]
fn a_client_cut_off_inside_a_frame_is_retired_after_every_acknowledged_message() {
    let ch = Channel::<u64>::named_buffered("tcp://127.0.0.1:0/cut", 100).unwrap();
    let port = common::port_of(ch.name());
    let reader = ch.reader();
    let mut good = Raw::open_u64(port, "cut", true);
    for v in 0..10 {
        assert_eq!(good.write_u64(v).0, DONE);
    }
    let mut cut = Raw::open_u64(port, "cut", true);
    // A Write announcing 100 bytes, 10 sent, then the connection closes: as if the client's
    // process died in the middle of sending.
    let mut f = 100u32.to_le_bytes().to_vec();
    f.push(WRITE);
    f.extend_from_slice(&[0; 9]);
    cut.0.write_all(&f).unwrap();
    drop(cut);
    match pycsp::net::next_connection_error(&format!("tcp://127.0.0.1:{port}"), PROMPT) {
        Some(ChannelError::Connection { reason, .. }) => {
            assert!(reason.contains("middle of a frame"), "{reason}");
            assert!(reason.contains("pid 4242"), "{reason}");
        }
        other => panic!("expected the host to record a lost connection, got {other:?}"),
    }
    for v in 0..10 {
        assert_eq!(reader.read().unwrap(), v);
    }
    // A client (it opened the address itself) that is lost only retires its end: once the
    // other writer retires too, the reader sees Retired, not PeerDied.
    good.send(RETIRE, &[]);
    assert_eq!(good.recv().unwrap().0, DONE);
    assert_eq!(reader.read_timeout(PROMPT), Err(ChannelError::Retired));
}

#[test]
fn a_peer_that_sends_a_shared_memory_offset_is_refused_and_nothing_is_touched() {
    // A SharedBlock travels in shared memory as (offset, len): a peer that sends such a pair
    // over a socket must not make the host use it as an address (free or read a block there).
    let blocks = Channel::<SharedBlock>::named_buffered("tcp://127.0.0.1:0/blocks", 4).unwrap();
    let port = common::port_of(blocks.name());
    let r = blocks.reader();
    let w = blocks.writer();
    // A live block in this network, in a shared-memory channel, not yet read.
    let held = Channel::<SharedBlock>::named_buffered("wire-live-block", 1).unwrap();
    let mut live = SharedBlock::new(4096).unwrap();
    live.fill(0x5a);
    held.writer().write(live).unwrap();
    let mut peer = Raw::connect(port);
    assert_eq!(peer.handshake(&key()).0, PROOF);
    let open = Open {
        channel: "blocks",
        type_name: "pycsp_core::block::SharedBlock",
        fingerprint: 0, // skip the type check: every message is still checked
        writer: true,
        token: None,
        process: "a forger",
        pid: 4243,
    };
    peer.send(OPEN, &rmp_serde::to_vec_named(&open).unwrap());
    assert_eq!(peer.recv().expect("Opened").0, OPENED);
    for offset in [0u64, 4096, 1 << 20, 1 << 30] {
        let mut p = Raw::connect(port);
        assert_eq!(p.handshake(&key()).0, PROOF);
        p.send(OPEN, &rmp_serde::to_vec_named(&open).unwrap());
        assert_eq!(p.recv().expect("Opened").0, OPENED);
        p.send(WRITE, &rmp_serde::to_vec(&(offset, 4096u64)).unwrap());
        let (kind, body) = p.recv().expect("an answer to a forged block");
        assert_eq!(kind, ERROR, "a forged block at {offset} was accepted");
        let (code, message) = error_fields(&body);
        assert_eq!(code, "protocol", "{message}");
        assert!(message.contains("SharedBlock"), "{message}");
    }
    // The live block is intact, and nothing reached the socket channel.
    let got = held.reader().read().unwrap();
    assert!(got.len() == 4096 && got.iter().all(|&b| b == 0x5a));
    drop(w);
    peer.send(RETIRE, &[]);
    assert!(
        matches!(r.read_timeout(PROMPT), Err(ChannelError::Retired)),
        "nothing was delivered"
    );
}

// ---- Long messages: a host reads their bodies straight into shared memory ----

/// Sends `frame` in pieces of every size (1 byte to 1 MiB, the last one the rest), each
/// after a pause that lets it reach the host on its own.
fn trickle(w: &mut Raw, frame: &[u8]) {
    let mut at = 0;
    for piece in [1, 4, 1, 70_000, 3, 65_536, 1 << 20, usize::MAX] {
        let end = at + piece.min(frame.len() - at);
        w.0.write_all(&frame[at..end]).unwrap();
        at = end;
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(at, frame.len());
}

/// A `Write` frame of `bytes` (a `Vec<u8>`, MessagePack), as the wire format lays it out.
fn write_frame_of(bytes: &[u8]) -> Vec<u8> {
    let body = rmp_serde::to_vec(bytes).unwrap();
    let mut f = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    f.push(WRITE);
    f.extend_from_slice(&body);
    f
}

/// Message `i` of the long-message tests: `len` bytes that differ from message to message
/// and along the message (each below 128: one MessagePack byte each).
fn long_message(i: u8, len: usize) -> Vec<u8> {
    (0..len).map(|k| ((k / 4093) as u8 ^ i) & 0x7f).collect()
}

#[test]
fn long_messages_that_trickle_in_or_share_a_write_with_short_ones_arrive_whole_in_order() {
    let ch = Channel::<Vec<u8>>::named_buffered("tcp://127.0.0.1:0/long", 8).unwrap();
    let port = common::port_of(ch.name());
    let reader = ch.reader();
    let mut w = Raw::open_bytes(port, "long", true);
    let sent = [
        long_message(1, 3 << 20),
        vec![9, 8, 7],
        long_message(2, 200_000),
        long_message(3, 65_536 + 1),
        vec![],
        long_message(4, 1 << 20),
        // Longer than a host reads straight into shared memory: read as it arrives.
        long_message(8, 5 << 20),
    ];
    // The first in pieces of every size, the pauses letting each reach the host on its own.
    trickle(&mut w, &write_frame_of(&sent[0]));
    // The others back to back in one write: short frames right behind long ones.
    let rest: Vec<u8> = sent[1..].iter().flat_map(|m| write_frame_of(m)).collect();
    w.0.write_all(&rest).unwrap();
    for i in 0..sent.len() {
        let (kind, body) = w.recv().expect("an answer to each Write");
        assert_eq!(kind, DONE, "message {i}: {}", error_text(&body));
    }
    for (i, want) in sent.iter().enumerate() {
        assert_eq!(&reader.read().unwrap(), want, "message {i}");
    }
}

/// A long `Offer` (read straight into shared memory at the host) on a rendezvous channel:
/// withdrawn (nothing delivered) when nobody reads, and one that trickles in taken whole by
/// a reader that comes later.
#[test]
fn long_offers_reach_a_reader_whole_or_are_withdrawn_whole() {
    let ch = Channel::<Vec<u8>>::named("tcp://127.0.0.1:0/long-offers").unwrap();
    let port: u16 = ch.name()["tcp://127.0.0.1:".len()..]
        .split_once('/')
        .unwrap()
        .0
        .parse()
        .unwrap();
    let reader = ch.reader();
    let mut w = Raw::open_bytes(port, "long-offers", true);
    let offer_frame = |bytes: &[u8]| {
        let mut f = write_frame_of(bytes);
        f[4] = OFFER;
        f
    };
    // Nobody reads: withdrawn, not delivered.
    w.0.write_all(&offer_frame(&long_message(1, 1 << 20)))
        .unwrap();
    unanswered_then_withdrawn(&mut w);
    assert_eq!(
        reader.read_timeout(Duration::from_millis(100)),
        Err(ChannelError::Timeout)
    );
    // Trickled in, then taken whole by a reader that comes later.
    let second = long_message(2, 3 << 20);
    trickle(&mut w, &offer_frame(&second));
    assert_eq!(reader.read_timeout(PROMPT).as_ref(), Ok(&second));
    assert_eq!(w.recv().unwrap().0, DONE);
    // A short offer after the long ones (each waits for its answer: nothing but a
    // `Withdraw` may follow an `Offer` before it).
    let third = vec![1, 2, 3];
    w.0.write_all(&offer_frame(&third)).unwrap();
    assert_eq!(reader.read_timeout(PROMPT).as_ref(), Ok(&third));
    assert_eq!(w.recv().unwrap().0, DONE);
}

#[test]
fn a_long_message_that_is_not_the_channels_type_is_refused_and_never_reaches_a_reader() {
    let ch = Channel::<Vec<u8>>::named_buffered("tcp://127.0.0.1:0/long-bad", 8).unwrap();
    let port = common::port_of(ch.name());
    let at = format!("tcp://127.0.0.1:{port}");
    let reader = ch.reader();
    // A good writer first: the channel keeps a writer when the bad one's end retires.
    let mut good = Raw::open_bytes(port, "long-bad", true);
    let mut bad = Raw::open_bytes(port, "long-bad", true);
    // 300 000 numbers, the last of which is not a u8.
    let mut numbers = vec![7u16; 300_000];
    numbers[299_999] = 300;
    bad.send(WRITE, &rmp_serde::to_vec(&numbers).unwrap());
    let (kind, body) = bad.recv().expect("an Error frame before the close");
    assert_eq!(kind, ERROR);
    let (code, message) = error_fields(&body);
    assert_eq!(code, "protocol", "{message}");
    assert!(message.contains("not a"), "{message}");
    assert!(bad.closed_by_host());
    assert!(matches!(
        pycsp::net::next_connection_error(&at, PROMPT),
        Some(ChannelError::Protocol { .. })
    ));
    // The next message the reader gets is the one the good writer sends after.
    let after = long_message(5, 100_000);
    good.0.write_all(&write_frame_of(&after)).unwrap();
    assert_eq!(good.recv().unwrap().0, DONE);
    assert_eq!(reader.read_timeout(PROMPT), Ok(after));
}

#[test]
fn a_client_cut_off_inside_a_long_message_is_retired_after_every_acknowledged_message() {
    let ch = Channel::<Vec<u8>>::named_buffered("tcp://127.0.0.1:0/long-cut", 8).unwrap();
    let port = common::port_of(ch.name());
    let at = format!("tcp://127.0.0.1:{port}");
    let reader = ch.reader();
    let mut good = Raw::open_bytes(port, "long-cut", true);
    let kept = long_message(6, 500_000);
    good.0.write_all(&write_frame_of(&kept)).unwrap();
    assert_eq!(good.recv().unwrap().0, DONE);
    // A Write announcing 1 MiB, 300 000 bytes of it sent, then the connection closes.
    let mut cut = Raw::open_bytes(port, "long-cut", true);
    let frame = write_frame_of(&long_message(7, 1 << 20));
    cut.0.write_all(&frame[..300_000]).unwrap();
    drop(cut);
    match pycsp::net::next_connection_error(&at, PROMPT) {
        Some(ChannelError::Connection { reason, .. }) => {
            assert!(reason.contains("middle of a frame"), "{reason}");
            assert!(reason.contains("pid 4343"), "{reason}");
        }
        other => panic!("expected the host to record a lost connection, got {other:?}"),
    }
    assert_eq!(reader.read_timeout(PROMPT), Ok(kept));
    good.send(RETIRE, &[]);
    assert_eq!(good.recv().unwrap().0, DONE);
    assert_eq!(reader.read_timeout(PROMPT), Err(ChannelError::Retired));
}
