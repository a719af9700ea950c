//! Typed, named channels and their ends.
//!
//! A [`Channel<T>`] lives in the shared memory of the process network. Its ends,
//! [`ChannelIn<T>`] (read) and [`ChannelOut<T>`] (write), are what processes hold; they are
//! passed to `#[process]` functions as ordinary arguments. Messages are encoded with
//! MessagePack (rmp-serde): small ones travel inline in a ring slot, large ones in a block of
//! shared memory whose offset travels in the slot.
//!
//! Ends are counted: every [`ChannelOut`] is one writer, every [`ChannelIn`] one reader.
//! Dropping an end retires it. When every writer has retired, readers get
//! [`ChannelError::Retired`] once the buffer is drained; when every reader has retired,
//! writers get `Retired` at once. [`poison`](ChannelOut::poison) makes every blocked and later
//! operation on the channel, in any process, fail with [`ChannelError::Poisoned`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ChannelError;
use crate::net::{self, Address};
use crate::shm::arena::{fnv1a, Arena, ArenaError, MAX_NAME};
use crate::shm::ring::{Chan, Claim, Incoming, Outgoing, Took, WriteError, INLINE};
use crate::shm::waiter;

/// A typed, named channel in the shared memory of this process network.
///
/// The name identifies the channel within one network (the root process and every process
/// started under it); two runs of the same program never share channels. `Channel` itself is
/// only a handle for making ends: it is not counted as a reader or writer.
///
/// ```
/// use pycsp_core::Channel;
/// let ch = Channel::<String>::buffered("greetings", 4)?;
/// let (tx, rx) = (ch.writer(), ch.reader());
/// tx.write("hello".to_string())?;
/// assert_eq!(rx.read()?, "hello");
/// # Ok::<(), pycsp_core::ChannelError>(())
/// ```
pub struct Channel<T> {
    place: Place,
    _t: PhantomData<fn(T) -> T>,
}

/// Where a channel is, seen from this process.
#[derive(Clone)]
enum Place {
    /// In this network's shared memory (also a socket channel hosted by this network).
    Local(Chan),
    /// Hosted by a process outside this network, reached over a socket.
    Remote { addr: Address, capacity: usize },
}

impl<T> Clone for Channel<T> {
    fn clone(&self) -> Self {
        Channel {
            place: self.place.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name())
            .field("type", &std::any::type_name::<T>())
            .field("capacity", &self.capacity())
            .finish()
    }
}

fn type_fingerprint<T>() -> (&'static str, u64) {
    let name = std::any::type_name::<T>();
    (
        name,
        fnv1a(name.as_bytes()) ^ (std::mem::size_of::<T>() as u64).rotate_left(56),
    )
}

fn shm_error(e: std::io::Error) -> ChannelError {
    ChannelError::SharedMemory(e.to_string())
}

impl<T: Serialize + DeserializeOwned> Channel<T> {
    /// Creates a rendezvous channel: a write returns only after a reader has taken the message.
    ///
    /// Fails with [`ChannelError::NameInUse`] if the network already has a channel of this name.
    pub fn new(name: &str) -> Result<Self, ChannelError> {
        Self::create(name, 0)
    }

    /// Creates a buffered channel that holds up to `capacity` messages; writes block only
    /// when it is full. A capacity of 0 is a rendezvous channel.
    pub fn buffered(name: &str, capacity: usize) -> Result<Self, ChannelError> {
        Self::create(name, capacity)
    }

    fn create(name: &str, capacity: usize) -> Result<Self, ChannelError> {
        if name.len() > MAX_NAME {
            return Err(ChannelError::NameTooLong {
                name: name.to_string(),
                len: name.len(),
                max: MAX_NAME,
            });
        }
        let addr = net::parse_address(name).transpose()?;
        let arena = Arena::get().map_err(shm_error)?;
        if arena.lookup(name).is_some() {
            return Err(ChannelError::NameInUse(name.to_string()));
        }
        let (tn, fp) = type_fingerprint::<T>();
        let chan = Chan::create(arena, name, tn, fp, capacity).map_err(|e| arena_error(e, name))?;
        if let Some(addr) = &addr {
            net::server::host(addr, chan, validate::<T>)?;
        }
        arena
            .register(name, chan.offset())
            .map_err(|e| arena_error(e, name))?;
        Ok(Channel {
            place: Place::Local(chan),
            _t: PhantomData,
        })
    }

    /// Attaches to the channel that some process of this network created under `name`, or,
    /// for an address (`tcp://HOST:PORT/NAME`, `local://SOCKET/NAME`), to the channel hosted
    /// there, by any process on any machine (see [`crate::net`]).
    ///
    /// Fails with [`ChannelError::NotFound`] if there is none, with
    /// [`ChannelError::TypeMismatch`] if it carries another type than `T`, and for an address
    /// that cannot be reached with [`ChannelError::Connection`] or [`ChannelError::Auth`].
    pub fn open(name: &str) -> Result<Self, ChannelError> {
        let arena = Arena::get().map_err(shm_error)?;
        let Some(off) = arena.lookup(name) else {
            if let Some(addr) = net::parse_address(name).transpose()? {
                let (tn, fp) = type_fingerprint::<T>();
                let capacity = net::client::probe(&addr, tn, fp)? as usize;
                return Ok(Channel {
                    place: Place::Remote { addr, capacity },
                    _t: PhantomData,
                });
            }
            return Err(ChannelError::NotFound(name.to_string()));
        };
        let chan =
            Chan::attach(arena, off).ok_or_else(|| ChannelError::NotFound(name.to_string()))?;
        check_type::<T>(&chan)?;
        Ok(Channel {
            place: Place::Local(chan),
            _t: PhantomData,
        })
    }

    /// An end's channel: the shared one, or a new connection's proxy.
    fn end_chan(&self, writer: bool) -> Chan {
        match &self.place {
            Place::Local(c) => {
                c.join(writer);
                *c
            }
            Place::Remote { addr, .. } => {
                let (tn, fp) = type_fingerprint::<T>();
                net::client::open_end(addr, tn, fp, writer, None)
                    .or_else(|e| net::client::failed_end(addr, tn, fp, writer, e))
                    .expect("shared memory for a socket end's proxy channel")
            }
        }
    }

    /// A new reading end (counted as one more reader). For a channel hosted outside this
    /// network, this opens a connection; if that fails, the end's first operation reports why.
    pub fn reader(&self) -> ChannelIn<T> {
        let chan = self.end_chan(false);
        track(&chan);
        ChannelIn {
            end: End::new(chan),
            _t: PhantomData,
        }
    }

    /// A new writing end (counted as one more writer); see [`reader`](Self::reader).
    pub fn writer(&self) -> ChannelOut<T> {
        let chan = self.end_chan(true);
        track(&chan);
        ChannelOut {
            end: End::new(chan),
            _t: PhantomData,
        }
    }

    /// Poisons the channel (see [`ChannelOut::poison`]).
    pub fn poison(&self) {
        match &self.place {
            Place::Local(c) => c.poison(),
            Place::Remote { .. } => self.writer().poison(),
        }
    }
}

/// Checks that a message from a socket decodes as `T` (the host does this for every message
/// a remote writer sends).
fn validate<T: DeserializeOwned>(bytes: &[u8]) -> Result<(), String> {
    rmp_serde::from_slice::<T>(bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl<T> Channel<T> {
    /// The channel's name (for a socket channel, its address).
    pub fn name(&self) -> &str {
        match &self.place {
            Place::Local(c) => c.name(),
            Place::Remote { addr, .. } => &addr.full,
        }
    }

    /// Bytes of shared memory the channel occupies in this network (its header and ring of
    /// slots); 0 for a channel hosted outside it.
    pub fn shared_memory_bytes(&self) -> usize {
        match &self.place {
            Place::Local(c) => c.shared_memory_bytes(),
            Place::Remote { .. } => 0,
        }
    }

    /// How many messages the channel buffers; 0 for a rendezvous channel.
    pub fn capacity(&self) -> usize {
        match &self.place {
            Place::Local(c) => c.capacity(),
            Place::Remote { capacity, .. } => *capacity,
        }
    }
}

fn arena_error(e: ArenaError, name: &str) -> ChannelError {
    match e {
        ArenaError::Full => {
            ChannelError::SharedMemory("the network's shared memory is full".into())
        }
        ArenaError::NameInUse => ChannelError::NameInUse(name.to_string()),
        ArenaError::DirectoryFull => {
            ChannelError::SharedMemory("the network's channel directory is full".into())
        }
    }
}

fn check_type<T>(chan: &Chan) -> Result<(), ChannelError> {
    let (tn, fp) = type_fingerprint::<T>();
    if chan.type_fp() != fp {
        return Err(ChannelError::TypeMismatch {
            channel: chan.name().to_string(),
            expected: tn.to_string(),
            found: chan.type_name().to_string(),
        });
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EndState {
    /// This end holds one count of its side.
    Live,
    /// The count went to another process (the end was serialized); dropping does nothing.
    Transferred,
}

/// What both kinds of end share: the channel and whether this value still owns its count.
struct End {
    chan: Chan,
    state: Cell<EndState>,
}

impl End {
    fn new(chan: Chan) -> End {
        End {
            chan,
            state: Cell::new(EndState::Live),
        }
    }
}

/// The channels of this process's ends: those it received (as arguments or through channels)
/// and those it made. A process that returns `Poisoned` poisons all of them; one that crashes
/// marks them as held by a dead process.
static OWN_ENDS: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

/// Set in a process started by a combinator: only there are ends tracked in `OWN_ENDS`.
pub(crate) static IN_CHILD: AtomicBool = AtomicBool::new(false);

/// Counts `chan` among this process's ends (in a child process).
fn track(chan: &Chan) {
    if IN_CHILD.load(Ordering::Relaxed) {
        if let Ok(mut v) = OWN_ENDS.lock() {
            v.insert(chan.offset());
        }
    }
}

thread_local! {
    /// Set while arguments for a new process are being encoded: ends serialized meanwhile
    /// record themselves here, so the parent knows which channels the child holds.
    static TRANSFERS: RefCell<Option<Vec<u64>>> = const { RefCell::new(None) };

    /// Set while a message for a channel is encoded ([`encoding`]): the ends serialized
    /// meanwhile stay live and are listed here, to be marked sent only once the message is
    /// placed ([`Carried::sent`]). Encoding has no side effect until then.
    static CARRYING: RefCell<Option<Vec<*const Cell<EndState>>>> = const { RefCell::new(None) };

    /// Set while a process function returns (from the moment its body's first local drops to
    /// the moment the runtime has looked at the return value): the ends dropped meanwhile,
    /// its parameters, retire only after that, so that a process returning `Poisoned`
    /// poisons them first and its peers see `Poisoned`, never `Retired`.
    static RETURNING: RefCell<Option<Vec<(Chan, bool)>>> = const { RefCell::new(None) };
}

/// A process function is returning: defer the retirement of the ends dropped from now on
/// (see `RETURNING`). Called by the guard `#[process]` puts first in every process body.
pub(crate) fn begin_returning() {
    RETURNING.with(|r| {
        r.borrow_mut().get_or_insert_with(Vec::new);
    });
}

/// The runtime has spread poison, if the process returned it: retire the deferred ends.
pub(crate) fn finish_returning() {
    let deferred = RETURNING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    for (chan, writer) in deferred {
        chan.retire(writer);
        net::client::await_retired(&chan, writer);
    }
}

/// The ends a message carries (see `CARRYING`).
pub(crate) struct Carried(Vec<*const Cell<EndState>>);

impl Carried {
    /// The message was placed: its ends now belong to whoever reads it.
    ///
    /// # Safety
    ///
    /// The value encoded by the [`encoding`] that returned this must still be alive, and not
    /// moved since.
    pub(crate) unsafe fn sent(self) {
        for state in self.0 {
            // SAFETY: the caller guarantees the value, and so the end's state, is alive and
            // where it was when it was encoded.
            unsafe { (*state).set(EndState::Transferred) };
        }
    }
}

/// Runs `f`, which encodes a message (possibly in several passes over the same value),
/// without marking the ends it carries as sent; returns them with `f`'s result.
pub(crate) fn encoding<R>(f: impl FnOnce() -> R) -> (R, Carried) {
    let prev = CARRYING.with(|c| c.borrow_mut().replace(Vec::new()));
    let r = f();
    let carried = CARRYING
        .with(|c| std::mem::replace(&mut *c.borrow_mut(), prev))
        .unwrap_or_default();
    (r, Carried(carried))
}

/// Runs `f` and returns, with its result, the channels of the ends it serialized.
pub(crate) fn collect_transfers<R>(f: impl FnOnce() -> R) -> (R, Vec<u64>) {
    let prev = TRANSFERS.with(|t| t.borrow_mut().replace(Vec::new()));
    let r = f();
    let got = TRANSFERS
        .with(|t| std::mem::replace(&mut *t.borrow_mut(), prev))
        .unwrap_or_default();
    (r, got)
}

/// Poisons every channel in `offsets` (the ends of a process that failed).
pub(crate) fn poison_offsets(offsets: &[u64]) {
    let Ok(arena) = Arena::get() else { return };
    for &off in offsets {
        if let Some(c) = Chan::attach(arena, off) {
            c.poison();
        }
    }
}

/// Marks every channel in `offsets` as held by a process that died.
pub(crate) fn mark_peer_died(offsets: &[u64], pid: u32, name: &str) {
    let Ok(arena) = Arena::get() else { return };
    for &off in offsets {
        if let Some(c) = Chan::attach(arena, off) {
            c.mark_peer_died(pid, name);
        }
    }
}

/// Marks every end this process received as held by a dead process (this one).
pub(crate) fn mark_own_ends_dead(name: &str) {
    let ends: Vec<u64> = OWN_ENDS
        .lock()
        .map(|v| v.iter().copied().collect())
        .unwrap_or_default();
    mark_peer_died(&ends, std::process::id(), name);
}

/// Poisons every end this process received.
pub(crate) fn poison_own_ends() {
    let ends: Vec<u64> = OWN_ENDS
        .lock()
        .map(|v| v.iter().copied().collect())
        .unwrap_or_default();
    poison_offsets(&ends);
}

#[derive(Serialize, Deserialize)]
struct WireEnd {
    /// The channel's offset in the sender's arena.
    channel: u64,
    fingerprint: u64,
    writer: bool,
    /// The sender's network: only a process of the same network can use `channel`.
    /// [`HANDED_TO_HOST`] when the sender handed the end's count to the host: then every
    /// receiver, in the sender's network or not, opens it by `remote`'s token.
    network: u64,
    /// For a socket channel: its address, and the token under which the host holds the end's
    /// count for the receiver.
    remote: Option<(String, u64)>,
}

/// The `network` of a [`WireEnd`] whose count the sender handed over to the channel's host
/// (network ids are never 0).
const HANDED_TO_HOST: u64 = 0;

impl End {
    fn serialize<S: Serializer>(&self, s: S, writer: bool) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        if self.state.get() != EndState::Live {
            return Err(S::Error::custom(format!(
                "an end of channel {:?} was already sent to another process",
                self.chan.name()
            )));
        }
        let arena = Arena::get().map_err(S::Error::custom)?;
        let mut remote = None;
        let mut network = arena.network();
        // In a message being encoded for a channel: stay live until the message is placed.
        // (Not a socket end: handing one over to its host cannot be undone.)
        let carried = net::parse_address(self.chan.name()).is_none()
            && CARRYING.with(|c| match c.borrow_mut().as_mut() {
                Some(v) => {
                    let state: *const Cell<EndState> = &self.state;
                    if !v.contains(&state) {
                        v.push(state);
                    }
                    true
                }
                None => false,
            });
        if let Some(Ok(addr)) = net::parse_address(self.chan.name()) {
            if let Some(proxy) = net::client::proxy_of(&self.chan) {
                // A remote end: its connection hands the count over to the receiver.
                self.state.set(EndState::Transferred);
                remote = Some(net::client::hand_over(&self.chan, &proxy).map_err(|e| {
                    S::Error::custom(format!("cannot move an end of {}: {e}", addr.full))
                })?);
                // The proxy's pump has left: even a process of this network must connect.
                network = HANDED_TO_HOST;
            } else if let Some(token) = net::server::hand_over(&addr, writer) {
                remote = Some((addr.full.clone(), token));
            }
        }
        let w = WireEnd {
            channel: self.chan.offset(),
            fingerprint: self.chan.type_fp(),
            writer,
            network,
            remote,
        };
        let r = w.serialize(s)?;
        if !carried {
            self.state.set(EndState::Transferred);
        }
        TRANSFERS.with(|t| {
            if let Some(v) = t.borrow_mut().as_mut() {
                v.push(self.chan.offset());
            }
        });
        Ok(r)
    }

    fn deserialize<'de, D: Deserializer<'de>, T>(d: D, writer: bool) -> Result<End, D::Error> {
        use serde::de::Error as _;
        let w = WireEnd::deserialize(d)?;
        if w.writer != writer {
            return Err(D::Error::custom(
                "a reading end was sent where a writing end was expected, or the reverse",
            ));
        }
        let arena = Arena::get().map_err(D::Error::custom)?;
        if w.network != arena.network() {
            let Some((address, token)) = w.remote else {
                return Err(D::Error::custom(
                    "an end of a shared-memory channel reached a process outside its network \
                     (on another host, or started independently): make it a socket channel \
                     (tcp://HOST:PORT/NAME)",
                ));
            };
            let addr = net::parse_address(&address)
                .and_then(Result::ok)
                .ok_or_else(|| D::Error::custom(format!("bad address {address:?}")))?;
            let (tn, fp) = type_fingerprint::<T>();
            let chan = net::client::open_end(&addr, tn, fp, writer, Some(token))
                .map_err(D::Error::custom)?;
            track(&chan);
            return Ok(End::new(chan));
        }
        let chan = Chan::attach(arena, w.channel)
            .ok_or_else(|| D::Error::custom(format!("no channel at offset {}", w.channel)))?;
        check_type::<T>(&chan).map_err(D::Error::custom)?;
        track(&chan);
        Ok(End::new(chan))
    }

    fn retire(&self, writer: bool) {
        if self.state.replace(EndState::Transferred) == EndState::Live {
            let deferred = RETURNING.with(|r| match r.borrow_mut().as_mut() {
                Some(v) => {
                    v.push((self.chan, writer));
                    true
                }
                None => false,
            });
            if deferred {
                return;
            }
            self.chan.retire(writer);
            // A socket end: return once the host knows, so that a program may exit right after.
            net::client::await_retired(&self.chan, writer);
        }
    }
}

/// Encodes `value` as MessagePack.
pub(crate) fn encode<T: Serialize>(chan: &Chan, value: &T) -> Result<Vec<u8>, ChannelError> {
    rmp_serde::to_vec(value).map_err(|e| ChannelError::Encode {
        channel: chan.name().to_string(),
        reason: e.to_string(),
    })
}

/// Writes an encoded message: inline in the slot if it fits, else through a block.
pub(crate) fn write_encoded(
    chan: &Chan,
    bytes: &[u8],
    deadline: Option<Instant>,
) -> Result<(), ChannelError> {
    if bytes.len() <= INLINE {
        let mut buf = [0u8; INLINE];
        buf[..bytes.len()].copy_from_slice(bytes);
        let len = bytes.len();
        return chan
            .write(&Outgoing::Inline { buf: &buf, len }, deadline)
            .map_err(|e| e.error);
    }
    let arena = Arena::get().map_err(shm_error)?;
    let len = bytes.len() as u64;
    let offset = arena.alloc_block(len).map_err(|_| ChannelError::TooLarge {
        channel: chan.name().to_string(),
        len,
        max: Arena::max_block_data(),
    })?;
    // SAFETY: the block was just allocated for us and is `len` bytes long (checked by `ptr`);
    // nobody else reads it until its offset is published through the ring.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), arena.ptr(offset, len), bytes.len()) };
    chan.write(&Outgoing::Block { offset, len }, deadline)
        .map_err(|e| {
            if !e.placed {
                // Never placed in the ring: the block is still ours.
                arena.free_block(offset);
            }
            e.error
        })
}

/// Counts the bytes of an encoding without storing them.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0 += data.len();
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bounded in-place writer for the inline part of a slot.
struct Inline {
    buf: [u8; INLINE],
    len: usize,
}

impl Write for Inline {
    #[inline]
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.write_all(data).map(|()| data.len())
    }
    #[inline]
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let end = self.len + data.len();
        if end > INLINE {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if data.len() <= 8 {
            // MessagePack writes markers and numbers a few bytes at a time: copy them without
            // a call to memcpy.
            for (d, s) in self.buf[self.len..end].iter_mut().zip(data) {
                *d = *s;
            }
        } else {
            self.buf[self.len..end].copy_from_slice(data);
        }
        self.len = end;
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writing end of a channel. Dropping it retires it.
///
/// An end belongs to one process at a time: passing it to a `#[process]` function moves it
/// there. Clone it to get another writer on the same channel.
pub struct ChannelOut<T> {
    end: End,
    _t: PhantomData<fn(T)>,
}

/// The reading end of a channel. Dropping it retires it.
pub struct ChannelIn<T> {
    end: End,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize> ChannelOut<T> {
    /// Writes `value`, blocking while the buffer is full and, on a rendezvous channel, until a
    /// reader has taken it.
    pub fn write(&self, value: T) -> Result<(), ChannelError> {
        self.send(&value, None)
    }

    /// Writes `value` without taking ownership of it.
    pub fn write_ref(&self, value: &T) -> Result<(), ChannelError> {
        self.send(value, None)
    }

    /// Like [`write`](Self::write), but gives up with [`ChannelError::Timeout`] after `timeout`
    /// if the message could not be placed or, on a rendezvous channel, no reader took it by
    /// then: the message is withdrawn, and no reader ever gets it. Exactly one of the two
    /// happens: `Ok` (taken) or `Timeout` (withdrawn).
    pub fn write_timeout(&self, value: T, timeout: Duration) -> Result<(), ChannelError> {
        self.send(&value, Some(Instant::now() + timeout))
    }

    fn send(&self, value: &T, deadline: Option<Instant>) -> Result<(), ChannelError> {
        let (r, carried) = encoding(|| self.send_encoding(value, deadline));
        let chan = &self.end.chan;
        match r {
            Ok(()) => {
                // SAFETY: `value` is borrowed for this whole call.
                unsafe { carried.sent() };
                Ok(())
            }
            Err(e) => {
                if e.placed {
                    // SAFETY: as above.
                    unsafe { carried.sent() };
                }
                Err(net::client::remote_error(chan, e.error))
            }
        }
    }

    /// Encodes and writes `value`.
    fn send_encoding(&self, value: &T, deadline: Option<Instant>) -> Result<(), WriteError> {
        let chan = &self.end.chan;
        let not_placed = |error| WriteError {
            error,
            placed: false,
        };
        let mut inline = Inline {
            buf: [0; INLINE],
            len: 0,
        };
        if rmp_serde::encode::write(&mut inline, value).is_ok() {
            return chan.write(
                &Outgoing::Inline {
                    buf: &inline.buf,
                    len: inline.len,
                },
                deadline,
            );
        }
        // Too large for a slot: measure, then encode straight into a shared block (one copy).
        let encode_err = |e: rmp_serde::encode::Error| {
            not_placed(ChannelError::Encode {
                channel: chan.name().to_string(),
                reason: e.to_string(),
            })
        };
        let mut counter = Counter(0);
        rmp_serde::encode::write(&mut counter, value).map_err(encode_err)?;
        let arena = Arena::get().map_err(|e| not_placed(shm_error(e)))?;
        let len = counter.0 as u64;
        let offset = arena.alloc_block(len).map_err(|_| {
            not_placed(ChannelError::TooLarge {
                channel: chan.name().to_string(),
                len,
                max: Arena::max_block_data(),
            })
        })?;
        // SAFETY: the block was just allocated for us and is `len` bytes long (checked by
        // `ptr`); nobody else touches it until its offset is published through the ring.
        let block = unsafe { std::slice::from_raw_parts_mut(arena.ptr(offset, len), len as usize) };
        let mut cursor = std::io::Cursor::new(block);
        if let Err(e) = rmp_serde::encode::write(&mut cursor, value) {
            arena.free_block(offset);
            return Err(encode_err(e));
        }
        chan.write(&Outgoing::Block { offset, len }, deadline)
            .inspect_err(|e| {
                if !e.placed {
                    // Never placed in the ring: the block is still ours.
                    arena.free_block(offset);
                }
            })
    }

    pub(crate) fn chan(&self) -> Chan {
        self.end.chan
    }
}

impl<T> ChannelOut<T> {
    /// Retires this end. Once every writer has retired, readers get `Retired` after the buffer
    /// is drained. Dropping the end does the same.
    pub fn retire(self) {
        self.end.retire(true);
    }

    /// Poisons the channel: every blocked and later operation on it, in any process, fails
    /// with [`ChannelError::Poisoned`].
    pub fn poison(&self) {
        self.end.chan.poison();
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        self.end.chan.name()
    }
}

impl<T: DeserializeOwned> ChannelIn<T> {
    /// Reads a message, blocking until one arrives.
    ///
    /// Fails with `Retired` once every writer has retired and the buffer is empty, and with
    /// `Poisoned` as soon as the channel is poisoned.
    pub fn read(&self) -> Result<T, ChannelError> {
        self.recv(None)
    }

    /// Like [`read`](Self::read), but fails with [`ChannelError::Timeout`] after `timeout`.
    pub fn read_timeout(&self, timeout: Duration) -> Result<T, ChannelError> {
        self.recv(Some(Instant::now() + timeout))
    }

    /// An iterator over the messages until the channel retires or fails.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.read().ok())
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<T, ChannelError> {
        let chan = &self.end.chan;
        let mut buf = [0u8; INLINE];
        // The arena is only needed to claim a selecting writer's offer (the slow path); a
        // process with a channel always has one.
        let claim = |w| Arena::get().map_or(Claim::Busy, |arena| waiter::claim(arena, w));
        let took = chan
            .read_into(&mut buf, deadline, claim)
            .map_err(|e| net::client::remote_error(chan, e))?;
        match took {
            Took::Inline(len) => {
                rmp_serde::from_slice(&buf[..len]).map_err(|e| decode_error::<T>(chan, e))
            }
            Took::Block { offset, len } => decode_incoming(chan, Incoming::Block { offset, len }),
        }
    }

    pub(crate) fn chan(&self) -> Chan {
        self.end.chan
    }
}

/// The encoded bytes of a message taken out of a ring (and frees its block, if it had one).
pub(crate) fn incoming_bytes(msg: Incoming) -> Result<Vec<u8>, ChannelError> {
    match msg {
        Incoming::Inline { buf, len } => Ok(buf[..len].to_vec()),
        Incoming::Block { offset, len } => {
            let arena = Arena::get().map_err(shm_error)?;
            // SAFETY: as in `decode_incoming`: the block is ours until we free it.
            let bytes = unsafe { std::slice::from_raw_parts(arena.ptr(offset, len), len as usize) }
                .to_vec();
            arena.free_block(offset);
            Ok(bytes)
        }
    }
}

/// The error for a message of `chan` that does not decode as a `T`.
#[cold]
fn decode_error<T>(chan: &Chan, e: rmp_serde::decode::Error) -> ChannelError {
    ChannelError::Decode {
        channel: chan.name().to_string(),
        ty: std::any::type_name::<T>().to_string(),
        reason: e.to_string(),
    }
}

/// Decodes a message taken out of `chan` (and frees its block, if it had one).
pub(crate) fn decode_incoming<T: DeserializeOwned>(
    chan: &Chan,
    msg: Incoming,
) -> Result<T, ChannelError> {
    let decode_err = |e| decode_error::<T>(chan, e);
    match msg {
        Incoming::Inline { buf, len } => rmp_serde::from_slice(&buf[..len]).map_err(decode_err),
        Incoming::Block { offset, len } => {
            let arena = Arena::get().map_err(shm_error)?;
            // SAFETY: the writer filled `len` bytes at `offset` before publishing it, and
            // taking the slot made this reader the block's only user until it frees it.
            let bytes = unsafe { std::slice::from_raw_parts(arena.ptr(offset, len), len as usize) };
            let r = rmp_serde::from_slice(bytes).map_err(decode_err);
            arena.free_block(offset);
            r
        }
    }
}

impl<T> ChannelIn<T> {
    /// Retires this end. Once every reader has retired, writers get `Retired`. Dropping the
    /// end does the same.
    pub fn retire(self) {
        self.end.retire(false);
    }

    /// Poisons the channel (see [`ChannelOut::poison`]).
    pub fn poison(&self) {
        self.end.chan.poison();
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        self.end.chan.name()
    }
}

impl<T> Drop for ChannelOut<T> {
    fn drop(&mut self) {
        self.end.retire(true);
    }
}

impl<T> Drop for ChannelIn<T> {
    fn drop(&mut self) {
        self.end.retire(false);
    }
}

impl<T> Clone for ChannelOut<T> {
    fn clone(&self) -> Self {
        self.end.chan.join(true);
        ChannelOut {
            end: End::new(self.end.chan),
            _t: PhantomData,
        }
    }
}

impl<T> Clone for ChannelIn<T> {
    fn clone(&self) -> Self {
        self.end.chan.join(false);
        ChannelIn {
            end: End::new(self.end.chan),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for ChannelOut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelOut({:?})", self.end.chan.name())
    }
}

impl<T> fmt::Debug for ChannelIn<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelIn({:?})", self.end.chan.name())
    }
}

/// Serializing an end moves it: the value left behind no longer counts as an end, and the
/// process that deserializes it owns it. This is how ends reach `#[process]` functions, and
/// how an end can be sent through a channel (a mobile channel end).
impl<T> Serialize for ChannelOut<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.end.serialize(s, true)
    }
}

/// See the `Serialize` impl of [`ChannelOut`].
impl<T> Serialize for ChannelIn<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.end.serialize(s, false)
    }
}

impl<'de, T> Deserialize<'de> for ChannelOut<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ChannelOut {
            end: End::deserialize::<D, T>(d, true)?,
            _t: PhantomData,
        })
    }
}

impl<'de, T> Deserialize<'de> for ChannelIn<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ChannelIn {
            end: End::deserialize::<D, T>(d, false)?,
            _t: PhantomData,
        })
    }
}
