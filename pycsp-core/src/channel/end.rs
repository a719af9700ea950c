//! What a reading and a writing end share: the count it holds on its channel's side, how it
//! retires, and how it moves to another process (serialized as an argument of a `#[process]`
//! or as a message).

use std::cell::{Cell, OnceCell, RefCell};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::fingerprint::{check_type, type_fingerprint};
use crate::block::{keeping, Kept};
use crate::message::{self, Context};
use crate::net;
use crate::runtime::{self, Role};
use crate::shm::arena::Arena;
use crate::shm::ring::Chan;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EndState {
    /// This end holds one count of its side.
    Live,
    /// The count went to another process (the end was serialized); dropping does nothing.
    Transferred,
}

/// What both kinds of end share: the channel and whether this value still owns its count
/// (and its hold on the channel: `chan` may be used only while it does).
pub(crate) struct End {
    pub(crate) chan: Chan,
    state: Cell<EndState>,
    /// A socket channel's end (a host's ring or a proxy): its messages are encoded and
    /// decoded in [`Context::Socket`].
    pub(crate) socket: bool,
    /// The channel's name, copied when it is first asked for or when the end leaves (the
    /// channel may be gone by the time a spent end is printed).
    name: OnceCell<Box<str>>,
    /// The remote end behind a proxy (looked up once), whose user may read or write on the
    /// connection itself (see `net/direct.rs`).
    remote: OnceCell<Option<std::sync::Arc<net::client::Proxy>>>,
}

impl End {
    /// An end of `chan` whose hold and count (as a writer or reader) the caller took for it.
    pub(crate) fn new(chan: Chan) -> End {
        End {
            chan,
            state: Cell::new(EndState::Live),
            socket: chan.name().contains("://"),
            name: OnceCell::new(),
            remote: OnceCell::new(),
        }
    }

    /// The remote end behind a socket channel's proxy (see `net/direct.rs`); `None` for
    /// every other end.
    pub(crate) fn remote(&self) -> Option<&net::client::Proxy> {
        if !self.socket {
            return None;
        }
        self.remote
            .get_or_init(|| {
                (self.state.get() == EndState::Live)
                    .then(|| net::client::proxy_of(&self.chan))
                    .flatten()
            })
            .as_deref()
    }

    /// The channel's name.
    pub(crate) fn name(&self) -> &str {
        self.name.get_or_init(|| {
            if self.state.get() == EndState::Live {
                self.chan.name().into()
            } else {
                "(an end that was sent away)".into()
            }
        })
    }

    /// The context this end's messages are encoded and decoded in.
    pub(crate) fn context(&self) -> Context {
        if self.socket {
            Context::Socket
        } else {
            Context::Local
        }
    }
}

/// Why an end of a shared-memory channel cannot travel through a socket channel.
const LOCAL_END_OVER_SOCKET: &str = "an end of a shared-memory channel cannot travel through \
     a socket channel (its receiver may be on another host): make it a socket channel \
     (tcp://HOST:PORT/NAME)";

thread_local! {
    /// Set while a message for a channel is encoded ([`encoding`]): the ends serialized
    /// meanwhile stay live and are listed in `CARRYING`, to be marked sent only once the
    /// message is placed ([`Carried::sent`]). Encoding has no side effect until then.
    static ENCODING: Cell<bool> = const { Cell::new(false) };
    static CARRYING: RefCell<Vec<CarriedEnd>> = const { RefCell::new(Vec::new()) };
    /// `CARRYING`'s length, readable without a borrow: every write looks at it, and most
    /// messages carry no end.
    static CARRIED: Cell<usize> = const { Cell::new(0) };

    /// Set while a process function returns (from the moment its body's first local drops to
    /// the moment the runtime has looked at the return value): the ends dropped meanwhile,
    /// its parameters, retire only after that, so that a process returning `Poisoned`
    /// poisons them first and its peers see `Poisoned`, never `Retired`.
    static RETURNING: RefCell<Option<Vec<(Chan, bool)>>> = const { RefCell::new(None) };
}

/// An end in a message being encoded: its state, its channel and role (written off this
/// process's ledger while the message is encoded, written back if it is not sent).
type CarriedEnd = (*const Cell<EndState>, Chan, Role);

/// The ends a message carries (see `CARRYING`) and the handles of shared memory it carries
/// ([`keeping`]). Dropped without [`sent`](Self::sent), they stay this process's: the value
/// still owns them.
pub(crate) struct Carried(Vec<CarriedEnd>, Option<Kept>);

impl Carried {
    /// The message was placed: its ends now belong to whoever reads it.
    ///
    /// # Safety
    ///
    /// The value encoded by the [`encoding`] that returned this must still be alive, and not
    /// moved since.
    pub(crate) unsafe fn sent(mut self) {
        for (state, _, _) in std::mem::take(&mut self.0) {
            // SAFETY: the caller guarantees the value, and so the end's state, is alive and
            // where it was when it was encoded.
            unsafe { (*state).set(EndState::Transferred) };
        }
        if let Some(kept) = self.1.take() {
            // SAFETY: as above, the value its handles are in is alive and has not moved.
            unsafe { kept.spend() };
        }
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        for (_, chan, role) in self.0.drain(..) {
            runtime::moved_in(&chan, role);
        }
    }
}

/// Runs `f`, which encodes a message (possibly in several passes over the same value),
/// without marking the ends it carries as sent; returns them with `f`'s result.
#[inline]
pub(crate) fn encoding<R>(f: impl FnOnce() -> R) -> (R, Carried) {
    let from = CARRIED.with(Cell::get);
    let outer = ENCODING.with(|e| e.replace(true));
    let r = f();
    ENCODING.with(|e| e.set(outer));
    if CARRIED.with(Cell::get) == from {
        return (r, Carried(Vec::new(), None));
    }
    (r, Carried(carried_since(from), None))
}

/// As [`encoding`], and the handles of shared memory the value carries ([`SharedBlock`]s,
/// pieces of shared arrays, shared atomics) are kept too ([`keeping`]): until
/// [`Carried::sent`], the value still owns everything it carries, so a message that is not
/// placed (a write handed back, an output guard not chosen) leaks nothing when the value is
/// dropped or returned.
///
/// [`SharedBlock`]: crate::block::SharedBlock
pub(crate) fn encoding_kept<R>(f: impl FnOnce() -> R) -> (R, Carried) {
    let ((r, mut carried), kept) = keeping(|| encoding(f));
    carried.1 = Some(kept);
    (r, carried)
}

/// The ends listed since `CARRYING` had `from` of them (encodings nest, so they are the
/// innermost encoding's).
#[cold]
fn carried_since(from: usize) -> Vec<CarriedEnd> {
    CARRIED.with(|c| c.set(from));
    CARRYING.with(|c| c.borrow_mut().split_off(from))
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
        retire_end(chan, writer);
    }
}

/// Retires an end of `chan` and lets go of its hold. A socket end returns once the host
/// knows, so that a program may exit right after.
fn retire_end(chan: Chan, writer: bool) {
    runtime::release_with(chan, Role::end(writer), |c| {
        net::client::await_retired(c, writer)
    });
}

#[derive(Serialize, Deserialize)]
struct WireEnd {
    /// The channel's key in the sender's arena (see `shm::ring`): its header's offset and
    /// generation.
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
    pub(crate) fn serialize<S: Serializer>(&self, s: S, writer: bool) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        if self.state.get() != EndState::Live {
            return Err(S::Error::custom(format!(
                "an end of channel {:?} was already sent to another process",
                self.name()
            )));
        }
        // Keep the name: once sent, the channel may be gone.
        let _ = self.name();
        let role = Role::end(writer);
        let arena = Arena::get().map_err(S::Error::custom)?;
        let mut remote = None;
        let mut network = arena.network();
        let over_socket = !message::is_local();
        if over_socket && !self.socket {
            return Err(S::Error::custom(format!(
                "{LOCAL_END_OVER_SOCKET} (channel {:?})",
                self.chan.name()
            )));
        }
        // In a message being encoded for a channel: stay live until the message is placed.
        // (Not a socket end: handing one over to its host cannot be undone.)
        let carried = !self.socket && ENCODING.with(Cell::get);
        if carried {
            let state: *const Cell<EndState> = &self.state;
            CARRYING.with(|c| {
                let mut v = c.borrow_mut();
                if !v.iter().any(|(s, _, _)| *s == state) {
                    runtime::moved_out(&self.chan, role);
                    v.push((state, self.chan, role));
                    CARRIED.with(|n| n.set(v.len()));
                }
            });
        }
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
            channel: self.chan.key(),
            fingerprint: self.chan.type_fp(),
            writer,
            network,
            remote,
        };
        let r = w.serialize(s)?;
        if !carried {
            if network != HANDED_TO_HOST {
                runtime::moved_out(&self.chan, role);
                runtime::record_transfer(&self.chan, role);
            }
            self.state.set(EndState::Transferred);
        }
        Ok(r)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T>(
        d: D,
        writer: bool,
    ) -> Result<End, D::Error> {
        use serde::de::Error as _;
        let w = WireEnd::deserialize(d)?;
        if w.writer != writer {
            return Err(D::Error::custom(
                "a reading end was sent where a writing end was expected, or the reverse",
            ));
        }
        let context = message::context();
        if let Context::SocketCheck(chan) = context {
            // A host checking a peer's message: the end must be one that can be opened by
            // its token, of the right type; nothing is opened or redeemed.
            if w.remote.is_none() {
                return Err(D::Error::custom(LOCAL_END_OVER_SOCKET));
            }
            if w.fingerprint != 0 && w.fingerprint != type_fingerprint::<T>().1 {
                return Err(D::Error::custom(format!(
                    "an end of a channel of another type than {}",
                    type_fingerprint::<T>().0
                )));
            }
            return Ok(End {
                chan,
                state: Cell::new(EndState::Transferred),
                socket: true,
                name: OnceCell::new(),
                remote: OnceCell::new(),
            });
        }
        let arena = Arena::get().map_err(D::Error::custom)?;
        // Over a socket, an end is opened only by its token: an offset is never used.
        if w.network != arena.network() || matches!(context, Context::Socket) {
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
            return Ok(End::new(chan));
        }
        // The message holds the channel for this end: it is alive.
        let chan = Chan::attach(arena, w.channel).ok_or_else(|| {
            D::Error::custom(format!("no live channel has the key {:#x}", w.channel))
        })?;
        runtime::moved_in(&chan, Role::end(writer));
        if let Err(e) = check_type::<T>(&chan) {
            // The end came, of the wrong type: it retires here.
            runtime::release(chan, Role::end(writer));
            return Err(D::Error::custom(e));
        }
        Ok(End::new(chan))
    }

    pub(crate) fn retire(&self, writer: bool) {
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
            retire_end(self.chan, writer);
        }
    }
}
