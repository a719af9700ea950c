//! Typed channels and their ends.
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

mod end;
mod fingerprint;
mod ops;

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{shared_memory, ChannelError};
use crate::message::{self, Context};
use crate::net::{self, Address};
use crate::runtime::{self, Role};
pub use crate::shm::arena::Usage;
use crate::shm::arena::{Arena, ArenaError, MAX_NAME};
use crate::shm::census;
use crate::shm::ring::{Chan, WriteError};
use crate::shm::wait::deadline_after;
use end::End;
pub(crate) use end::{begin_returning, encoding_kept, finish_returning, Carried};
use fingerprint::{check_type, type_fingerprint};
pub use ops::TryIter;

/// A typed channel in the shared memory of this process network.
///
/// A channel is anonymous ([`new`](Self::new), [`buffered`](Self::buffered)) or has a name
/// ([`named`](Self::named)) by which processes of the network [`open`](Self::open) it; a name
/// is unique within one network (the root process and every process started under it) while
/// its channel lives, and two runs of the same program never share channels. `Channel`
/// itself is a handle for making ends: it is not counted as a reader or writer.
///
/// ```
/// use pycsp_core::Channel;
/// let ch = Channel::<String>::buffered(4)?;
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
        if let Place::Local(c) = &self.place {
            runtime::hold(c, Role::Handle);
        }
        Channel {
            place: self.place.clone(),
            _t: PhantomData,
        }
    }
}

/// A handle holds its channel: the channel is freed once every handle and every end of it,
/// in every process, is gone.
impl<T> Drop for Channel<T> {
    fn drop(&mut self) {
        if let Place::Local(c) = &self.place {
            runtime::release(*c, Role::Handle);
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

impl<T: Serialize + DeserializeOwned> Channel<T> {
    /// Creates an anonymous rendezvous channel: a write returns only after a reader has taken
    /// the message. As PyCSP's `Channel()`: it needs no name; messages name it `#N`, a number
    /// unique in the network. Its ends reach other processes as arguments or in messages.
    ///
    /// Fails only when the network's shared memory is full ([`ChannelError::Capacity`]).
    pub fn new() -> Result<Self, ChannelError> {
        Self::create(None, 0)
    }

    /// Creates an anonymous buffered channel that holds up to `capacity` messages (as
    /// crossbeam's `bounded(capacity)`); writes block only when it is full. A capacity of 0
    /// is a rendezvous channel.
    pub fn buffered(capacity: usize) -> Result<Self, ChannelError> {
        Self::create(None, capacity)
    }

    /// Creates a rendezvous channel under `name`, by which any process of the network can
    /// [`open`](Self::open) it; a socket address (`tcp://HOST:PORT/NAME`,
    /// `local://SOCKET/NAME`) also hosts it there for other programs and hosts
    /// (see [`crate::net`]). With port 0 (`tcp://127.0.0.1:0/jobs`) it listens on a port the
    /// system picks, and [`name`](Self::name) says which (`tcp://127.0.0.1:41234/jobs`).
    ///
    /// Fails with [`ChannelError::NameInUse`] while the network has a live channel of this
    /// name.
    pub fn named(name: &str) -> Result<Self, ChannelError> {
        Self::create(Some(name), 0)
    }

    /// Creates a buffered channel under `name` (see [`named`](Self::named) and
    /// [`buffered`](Self::buffered)).
    pub fn named_buffered(name: &str, capacity: usize) -> Result<Self, ChannelError> {
        Self::create(Some(name), capacity)
    }

    fn create(name: Option<&str>, capacity: usize) -> Result<Self, ChannelError> {
        let arena = Arena::get().map_err(shared_memory)?;
        let Some(name) = name else {
            let (tn, fp) = type_fingerprint::<T>();
            let name = format!("#{}", arena.next_anonymous());
            let chan = Chan::create(arena, &name, tn, fp, capacity, false)
                .map_err(|e| arena_error(e, &name))?;
            runtime::took(&chan);
            return Ok(Channel {
                place: Place::Local(chan),
                _t: PhantomData,
            });
        };
        let too_long = |name: &str| ChannelError::NameTooLong {
            name: name.to_string(),
            len: name.len(),
            max: MAX_NAME,
        };
        if name.len() > MAX_NAME {
            return Err(too_long(name));
        }
        // A TCP address with port 0 listens on a port the system picks: the channel's name
        // is the address with that port.
        let addr = match net::parse_address(name).transpose()? {
            Some(a) => Some(net::server::pick_port(a)?),
            None => None,
        };
        let name = addr.as_ref().map_or(name, |a| a.full.as_str());
        if name.len() > MAX_NAME {
            return Err(ChannelError::NameTooLong {
                name: name.to_string(),
                len: name.len(),
                max: MAX_NAME,
            });
        }
        if arena
            .lookup(name)
            .is_some_and(|key| Chan::is_alive(arena, key))
        {
            return Err(ChannelError::NameInUse(name.to_string()));
        }
        let (tn, fp) = type_fingerprint::<T>();
        let chan =
            Chan::create(arena, name, tn, fp, capacity, true).map_err(|e| arena_error(e, name))?;
        runtime::took(&chan);
        // From here on, dropping the handle frees the channel.
        let channel = Channel {
            place: Place::Local(chan),
            _t: PhantomData,
        };
        arena
            .register(name, chan.key(), |key| Chan::is_alive(arena, key))
            .map_err(|e| arena_error(e, name))?;
        if let Some(addr) = &addr {
            net::server::host(addr, chan, validate::<T>)?;
        }
        Ok(channel)
    }

    /// Attaches to the channel that some process of this network created under `name`, or,
    /// for an address (`tcp://HOST:PORT/NAME`, `local://SOCKET/NAME`), to the channel hosted
    /// there, by any process on any machine (see [`crate::net`]).
    ///
    /// Fails with [`ChannelError::NotFound`] if there is none, with
    /// [`ChannelError::TypeMismatch`] if it carries another type than `T`, and for an address
    /// that cannot be reached with [`ChannelError::Connection`] or [`ChannelError::Auth`].
    pub fn open(name: &str) -> Result<Self, ChannelError> {
        let arena = Arena::get().map_err(shared_memory)?;
        let found = arena.lookup(name).and_then(|key| Chan::acquire(arena, key));
        let Some(chan) = found else {
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
        runtime::took(&chan);
        let channel = Channel {
            place: Place::Local(chan),
            _t: PhantomData,
        };
        check_type::<T>(&chan)?;
        Ok(channel)
    }

    /// An end's channel: the shared one, or a new connection's proxy.
    fn end_chan(&self, writer: bool) -> Chan {
        match &self.place {
            Place::Local(c) => {
                runtime::hold(c, Role::end(writer));
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
        ChannelIn {
            end: End::new(chan),
            _t: PhantomData,
        }
    }

    /// A new writing end (counted as one more writer); see [`reader`](Self::reader).
    pub fn writer(&self) -> ChannelOut<T> {
        let chan = self.end_chan(true);
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
/// a remote writer sends to `chan`), without any effect: ends in it are not opened.
fn validate<T: DeserializeOwned>(chan: Chan, bytes: &[u8]) -> Result<(), String> {
    message::in_context(Context::SocketCheck(chan), || {
        rmp_serde::from_slice::<T>(bytes)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
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

/// What this process network's shared memory holds now: its size, the bytes handed out and
/// resident, the freed blocks kept for reuse, and the live channels and names. A channel's
/// memory goes back when its last handle and end are gone in every process (see the book's
/// layout chapter).
///
/// ```
/// use pycsp_core::{shared_memory_usage, Channel};
/// let before = shared_memory_usage()?.channels;
/// let ch = Channel::<u64>::new()?;
/// assert_eq!(shared_memory_usage()?.channels, before + 1);
/// drop(ch);
/// assert_eq!(shared_memory_usage()?.channels, before);
/// # Ok::<(), pycsp_core::ChannelError>(())
/// ```
pub fn shared_memory_usage() -> Result<Usage, ChannelError> {
    Ok(Arena::get().map_err(shared_memory)?.usage())
}

fn arena_error(e: ArenaError, name: &str) -> ChannelError {
    e.into_channel_error(name)
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

    /// Waits until every message written so far through this end (and its clones) is
    /// confirmed by the host of its socket channel, or until `timeout` has passed
    /// ([`ChannelError::Timeout`]; the messages stay on their way).
    ///
    /// A `write` to a buffered channel returns once the message is in the channel's buffer.
    /// For a channel reached over a socket, part of that buffer (up to the channel's capacity)
    /// is in the writing process: messages the host has not confirmed yet. `flush` returns
    /// `Ok` once the host's channel holds them all; if the connection is lost first it fails
    /// with [`ChannelError::ConnectionLost`], which says how many the host confirmed and how
    /// many it did not. On a channel in shared memory, and on a rendezvous channel (whose
    /// writes return once a reader took the message), there is nothing to wait for: `Ok` at
    /// once. The book's sockets chapter has the whole delivery contract.
    pub fn flush(&self, timeout: Duration) -> Result<(), ChannelError> {
        if !self.end.socket {
            return Ok(());
        }
        net::client::flush(&self.end.chan, Instant::now() + timeout)
    }

    fn send(&self, value: &T, deadline: Option<Instant>) -> Result<(), ChannelError> {
        let chan = &self.end.chan;
        let write = || {
            if self.end.socket {
                message::in_context(Context::Socket, || match self.end.remote() {
                    // A remote end whose pump leaves the connection to its user: the user's
                    // thread sends the message itself (see `net/direct.rs`).
                    Some(remote) if remote.direct_open() => {
                        let bytes = message::encode(chan, value).map_err(|error| WriteError {
                            error,
                            placed: false,
                        })?;
                        net::client::write_direct(chan, remote, &bytes, deadline)
                    }
                    _ => message::write_value(chan, value, deadline),
                })
            } else {
                message::write_value(chan, value, deadline)
            }
        };
        if !std::mem::needs_drop::<T>() {
            // A type without drop glue holds no channel end: nothing to mark as sent.
            let r = write();
            if r.is_ok() {
                census::count_message(true);
            }
            return r.map_err(|e| net::client::remote_error(chan, e.error));
        }
        // Shared memory it carries (blocks, arrays) is spent once placed, as ends are: the
        // encoding may take two passes, and a message not placed must not leak it.
        let (r, carried) = encoding_kept(write);
        if r.as_ref().err().is_none_or(|e| e.placed) {
            // SAFETY: `value` is borrowed for this whole call.
            unsafe { carried.sent() };
        }
        if r.is_ok() {
            census::count_message(true);
        }
        r.map_err(|e| net::client::remote_error(chan, e.error))
    }

    pub(crate) fn chan(&self) -> Chan {
        self.end.chan
    }

    /// The context this end's messages are encoded and decoded in.
    pub(crate) fn context(&self) -> Context {
        self.end.context()
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
        self.end.name()
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
        self.recv(deadline_after(timeout))
    }

    /// The messages, read one by one until the channel retires: each is `Ok(message)`; the
    /// iteration ends after the last message once every writer has retired. Any other end is
    /// an `Err` first (`Poisoned`, `PeerDied`, a lost connection): an abnormal end is never
    /// a clean one. A pipeline stage passes it on with `?`:
    ///
    /// ```
    /// # use pycsp_core::{ChannelError, ChannelIn, ChannelOut};
    /// fn double(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    ///     for x in inp.iter() {
    ///         out.write(x? * 2)?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    ///
    /// A `#[process]` that returns that error spreads it as the book's retire-and-poison
    /// chapter says: `Poisoned` poisons its ends, `PeerDied` marks them with the process
    /// that died, so every stage after it fails the same way.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            inp: self,
            done: false,
        }
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<T, ChannelError> {
        let chan = &self.end.chan;
        let r = if self.end.socket {
            message::in_context(Context::Socket, || {
                // A remote rendezvous end whose pump leaves the connection to its user: the
                // user's thread takes the message itself (see `net/direct.rs`).
                if let Some(remote) = self.end.remote().filter(|_| chan.is_rendezvous()) {
                    if let Some(bytes) = net::client::read_direct(chan, remote, deadline) {
                        return message::decode_bytes(chan, &bytes);
                    }
                }
                message::read_value(chan, deadline)
            })
        } else {
            message::read_value(chan, deadline)
        };
        if r.is_ok() {
            census::count_message(false);
        }
        r.map_err(|e| net::client::remote_error(chan, e))
    }

    pub(crate) fn chan(&self) -> Chan {
        self.end.chan
    }

    /// The context this end's messages are encoded and decoded in.
    pub(crate) fn context(&self) -> Context {
        self.end.context()
    }
}

/// The messages of a [`ChannelIn`], until its channel retires; see [`ChannelIn::iter`].
pub struct Iter<'a, T> {
    inp: &'a ChannelIn<T>,
    done: bool,
}

impl<T: DeserializeOwned> Iterator for Iter<'_, T> {
    type Item = Result<T, ChannelError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.inp.read() {
            Ok(v) => Some(Ok(v)),
            Err(e) => {
                self.done = true;
                (e != ChannelError::Retired).then_some(Err(e))
            }
        }
    }
}

impl<'a, T: DeserializeOwned> IntoIterator for &'a ChannelIn<T> {
    type Item = Result<T, ChannelError>;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
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
        self.end.name()
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
        runtime::hold(&self.end.chan, Role::Writer);
        ChannelOut {
            end: End::new(self.end.chan),
            _t: PhantomData,
        }
    }
}

impl<T> Clone for ChannelIn<T> {
    fn clone(&self) -> Self {
        runtime::hold(&self.end.chan, Role::Reader);
        ChannelIn {
            end: End::new(self.end.chan),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for ChannelOut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelOut({:?})", self.end.name())
    }
}

impl<T> fmt::Debug for ChannelIn<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelIn({:?})", self.end.name())
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
