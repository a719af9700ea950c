//! What `select!`, `pri_select!` and `fair_select!` (crossbeam-channel's `select!` over an
//! [`Alternation`]) expand to call. The macros themselves are defined in the crate root,
//! where `#[macro_export]` puts them.
//!
//! Each arm adds one guard whose closure only stores what happened in a variable of its own;
//! once the select returns, the arm whose variable is set runs its body. So an arm's body runs
//! outside any closure: it may `break`, `continue`, `return` or use `?`, as in crossbeam.

use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Alternation, Chosen, Timer};
use crate::channel::{ChannelIn, ChannelOut};
use crate::error::ChannelError;

/// What `recv(r)` in [`select!`](crate::select!) accepts: a channel's reading end (the arm
/// gets `Result<T, ChannelError>`, as [`Alternation::input_result`]) or a [`Timer`] (the arm
/// gets `Ok` with the instant the timer was due at). References to either work too.
pub trait RecvGuard<'a, R> {
    /// What the arm's pattern binds.
    type Msg;
    /// Adds the guard to `alt`; `then` receives what happened.
    fn add_recv(
        &'a self,
        alt: Alternation<'a, R>,
        then: impl FnOnce(Self::Msg) -> R + 'a,
    ) -> Alternation<'a, R>;
}

impl<'a, R, T: DeserializeOwned> RecvGuard<'a, R> for ChannelIn<T> {
    type Msg = Result<T, ChannelError>;
    fn add_recv(
        &'a self,
        alt: Alternation<'a, R>,
        then: impl FnOnce(Self::Msg) -> R + 'a,
    ) -> Alternation<'a, R> {
        alt.input_result(self, then)
    }
}

impl<'a, R> RecvGuard<'a, R> for Timer {
    type Msg = Result<Instant, ChannelError>;
    fn add_recv(
        &'a self,
        alt: Alternation<'a, R>,
        then: impl FnOnce(Self::Msg) -> R + 'a,
    ) -> Alternation<'a, R> {
        alt.timer(self, move |at| then(Ok(at)))
    }
}

impl<'a, 'b: 'a, R, X: RecvGuard<'a, R> + ?Sized> RecvGuard<'a, R> for &'b X {
    type Msg = X::Msg;
    fn add_recv(
        &'a self,
        alt: Alternation<'a, R>,
        then: impl FnOnce(Self::Msg) -> R + 'a,
    ) -> Alternation<'a, R> {
        (**self).add_recv(alt, then)
    }
}

/// What `send(s, v)` in [`select!`](crate::select!) accepts: a channel's writing end (the arm
/// gets `Result<(), ChannelError>`, as [`Alternation::output_result`]), or a reference to one.
pub trait SendGuard<'a, R, V> {
    /// Adds the guard, offering `value`, to `alt`; `then` receives how it went.
    fn add_send(
        &'a self,
        alt: Alternation<'a, R>,
        value: V,
        then: impl FnOnce(Result<(), ChannelError>) -> R + 'a,
    ) -> Alternation<'a, R>;
}

impl<'a, R, T: Serialize + 'a> SendGuard<'a, R, T> for ChannelOut<T> {
    fn add_send(
        &'a self,
        alt: Alternation<'a, R>,
        value: T,
        then: impl FnOnce(Result<(), ChannelError>) -> R + 'a,
    ) -> Alternation<'a, R> {
        alt.output_result(self, value, then)
    }
}

impl<'a, 'b: 'a, R, V, X: SendGuard<'a, R, V> + ?Sized> SendGuard<'a, R, V> for &'b X {
    fn add_send(
        &'a self,
        alt: Alternation<'a, R>,
        value: V,
        then: impl FnOnce(Result<(), ChannelError>) -> R + 'a,
    ) -> Alternation<'a, R> {
        (**self).add_send(alt, value, then)
    }
}

/// The end of a `select!`: its arms report every channel's end, so a failure of the select
/// itself means it cannot work at all.
#[doc(hidden)]
#[track_caller]
pub fn __selected(chosen: Result<Chosen<()>, ChannelError>) {
    if let Err(e) = chosen {
        panic!("select! failed: {e}");
    }
}
