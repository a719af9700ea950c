//! Shared atomic numbers: Python's `multiprocessing.Value`, without its lock.
//!
//! [`SharedAtomicU64`], [`SharedAtomicI64`] and [`SharedAtomicF64`] are one number in the
//! process network's shared memory that every process holding a handle reads and changes at
//! the same time, lock-free. Where Python writes
//!
//! ```python
//! with counter.get_lock():
//!     counter.value += 1
//! ```
//!
//! the update is one atomic operation, [`fetch_add`](SharedAtomicU64::fetch_add): no lock,
//! and no update is lost whatever the number of processes. Updates that are not a single
//! operation go through [`fetch_update`](SharedAtomicU64::fetch_update) (a compare-and-swap
//! loop) or [`compare_exchange`](SharedAtomicU64::compare_exchange). Every operation is
//! sequentially consistent (`Ordering::SeqCst`).
//!
//! A handle is shared by cloning it; a clone passed to a `#[process]` function or written to a
//! channel moves there (its count with it). The number is freed when the last handle is
//! dropped, in whichever process; a handle held by a process that is killed is never
//! released, and the number stays allocated until the network ends.
//!
//! ```
//! use pycsp_core::value::SharedAtomicU64;
//!
//! let hits = SharedAtomicU64::new(0)?;
//! let other = hits.clone(); // e.g. for a process
//! other.fetch_add(2);
//! hits.fetch_add(1);
//! assert_eq!(hits.load(), 3);
//! # Ok::<(), pycsp_core::ChannelError>(())
//! ```
//!
//! These are the only state that processes share; everything else moves (see the book's
//! chapter on Python's multiprocessing).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::block::{spent_by_serialize, Counted};
use crate::error::ChannelError;
use crate::message;

/// Why a shared atomic cannot travel through a socket channel.
const NOT_OVER_SOCKETS: &str = "a shared atomic is shared memory of this process network and \
     cannot travel through a socket channel";

/// One counted handle on a 64-bit atomic word in shared memory.
struct Cell64 {
    block: Counted,
    owned: Cell<bool>,
}

impl Cell64 {
    fn new(bits: u64) -> Result<Cell64, ChannelError> {
        let c = Cell64 {
            block: Counted::new(8)?,
            owned: Cell::new(true),
        };
        c.word().store(bits, SeqCst);
        Ok(c)
    }

    fn word(&self) -> &AtomicU64 {
        assert!(
            self.owned.get(),
            "this shared atomic was sent to another process; this handle is no longer yours"
        );
        let p = self.block.data_ptr().cast::<AtomicU64>();
        // SAFETY: the block's data is 64-aligned and at least 8 bytes (checked when it was
        // made or attached), initialised, and lives while this owned handle holds a count;
        // every process touches it only through this atomic.
        unsafe { &*p }
    }

    fn clone_handle(&self) -> Cell64 {
        let _ = self.word(); // a spent handle cannot be cloned
        self.block.acquire(1);
        Cell64 {
            block: self.block,
            owned: Cell::new(true),
        }
    }

    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        if !self.owned.get() {
            return Err(S::Error::custom("this shared atomic was already sent"));
        }
        if !message::is_local() {
            return Err(S::Error::custom(NOT_OVER_SOCKETS));
        }
        let r = self.block.offset().serialize(s)?;
        spent_by_serialize(&self.owned);
        Ok(r)
    }

    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cell64, D::Error> {
        use serde::de::Error as _;
        // An offset that may have come over a socket is never used.
        if !message::is_local() {
            return Err(D::Error::custom(NOT_OVER_SOCKETS));
        }
        let block = Counted::attach(u64::deserialize(d)?).map_err(D::Error::custom)?;
        if block.len() < 8 {
            return Err(D::Error::custom("a shared atomic's block is too short"));
        }
        Ok(Cell64 {
            block,
            owned: Cell::new(true),
        })
    }
}

impl Drop for Cell64 {
    fn drop(&mut self) {
        if self.owned.get() {
            self.block.release(1);
        }
    }
}

/// The parts every shared atomic has: construction, load/store/swap, compare-and-swap,
/// `fetch_update`, cloning, moving and `Debug`.
macro_rules! shared_atomic {
    ($(#[$doc:meta])* $name:ident, $t:ty, $to:expr, $from:expr) => {
        $(#[$doc])*
        pub struct $name(Cell64);

        impl $name {
            /// A new number in shared memory, set to `v`.
            ///
            /// Fails only when the network's shared memory is full
            /// ([`ChannelError::Capacity`]); nothing is allocated then.
            pub fn new(v: $t) -> Result<$name, ChannelError> {
                Cell64::new($to(v)).map($name)
            }

            /// The current value.
            pub fn load(&self) -> $t {
                $from(self.0.word().load(SeqCst))
            }

            /// Sets the value.
            pub fn store(&self, v: $t) {
                self.0.word().store($to(v), SeqCst)
            }

            /// Sets the value; returns the previous one.
            pub fn swap(&self, v: $t) -> $t {
                $from(self.0.word().swap($to(v), SeqCst))
            }

            /// Sets the value to `new` if it is `current` (compared bit for bit); returns the
            /// previous value, `Ok` if it was `current`, `Err` with the value found if not.
            pub fn compare_exchange(&self, current: $t, new: $t) -> Result<$t, $t> {
                self.0
                    .word()
                    .compare_exchange($to(current), $to(new), SeqCst, SeqCst)
                    .map($from)
                    .map_err($from)
            }

            /// Replaces the value by `f(value)` in one atomic step, retrying if another
            /// process changed it meanwhile (so `f` may run several times); stops with
            /// `Err(value)` if `f` returns `None`. Returns the previous value. The lock-free
            /// form of Python's `with v.get_lock(): v.value = f(v.value)`.
            pub fn fetch_update(&self, mut f: impl FnMut($t) -> Option<$t>) -> Result<$t, $t> {
                self.0
                    .word()
                    .fetch_update(SeqCst, SeqCst, |bits| f($from(bits)).map($to))
                    .map($from)
                    .map_err($from)
            }
        }

        /// Another handle on the same number (as `Arc::clone`).
        impl Clone for $name {
            fn clone(&self) -> $name {
                $name(self.0.clone_handle())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if self.0.owned.get() {
                    write!(f, "{}({:?})", stringify!($name), self.load())
                } else {
                    write!(f, "{}(sent)", stringify!($name))
                }
            }
        }

        /// Serializing a handle moves it (with its count) to whoever deserializes it; the
        /// handle left behind is spent.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Cell64::deserialize(d).map($name)
            }
        }
    };
}

/// Integer operations that map to one atomic instruction.
macro_rules! integer_ops {
    ($name:ident, $t:ty, $atomic:ty) => {
        impl $name {
            fn atomic(&self) -> &$atomic {
                let w: &AtomicU64 = self.0.word();
                // SAFETY: both atomic types have the size, alignment and bit validity of a
                // 64-bit integer, and every access to the word is atomic.
                unsafe { &*(w as *const AtomicU64).cast::<$atomic>() }
            }

            /// Adds `v` (wrapping around on overflow); returns the previous value.
            pub fn fetch_add(&self, v: $t) -> $t {
                self.atomic().fetch_add(v, SeqCst)
            }

            /// Subtracts `v` (wrapping around on overflow); returns the previous value.
            pub fn fetch_sub(&self, v: $t) -> $t {
                self.atomic().fetch_sub(v, SeqCst)
            }

            /// Sets the value to the larger of it and `v`; returns the previous value.
            pub fn fetch_max(&self, v: $t) -> $t {
                self.atomic().fetch_max(v, SeqCst)
            }

            /// Sets the value to the smaller of it and `v`; returns the previous value.
            pub fn fetch_min(&self, v: $t) -> $t {
                self.atomic().fetch_min(v, SeqCst)
            }

            /// Bitwise and with `v`; returns the previous value.
            pub fn fetch_and(&self, v: $t) -> $t {
                self.atomic().fetch_and(v, SeqCst)
            }

            /// Bitwise or with `v`; returns the previous value.
            pub fn fetch_or(&self, v: $t) -> $t {
                self.atomic().fetch_or(v, SeqCst)
            }

            /// Bitwise exclusive or with `v`; returns the previous value.
            pub fn fetch_xor(&self, v: $t) -> $t {
                self.atomic().fetch_xor(v, SeqCst)
            }
        }
    };
}

shared_atomic!(
    /// A `u64` in shared memory that every process with a handle updates atomically
    /// (`multiprocessing.Value('Q')`); see the [module docs](self).
    SharedAtomicU64,
    u64,
    |v: u64| v,
    |b: u64| b
);
integer_ops!(SharedAtomicU64, u64, AtomicU64);

shared_atomic!(
    /// An `i64` in shared memory that every process with a handle updates atomically
    /// (`multiprocessing.Value('q')` or `Value('i')`); see the [module docs](self).
    SharedAtomicI64,
    i64,
    |v: i64| v as u64,
    |b: u64| b as i64
);
integer_ops!(SharedAtomicI64, i64, std::sync::atomic::AtomicI64);

shared_atomic!(
    /// An `f64` in shared memory that every process with a handle updates atomically
    /// (`multiprocessing.Value('d')`); see the [module docs](self). Arithmetic is a
    /// compare-and-swap loop: lock-free, and no update is lost.
    SharedAtomicF64,
    f64,
    f64::to_bits,
    f64::from_bits
);

impl SharedAtomicF64 {
    /// Adds `v`; returns the previous value.
    pub fn fetch_add(&self, v: f64) -> f64 {
        self.update(|x| x + v)
    }

    /// Subtracts `v`; returns the previous value.
    pub fn fetch_sub(&self, v: f64) -> f64 {
        self.update(|x| x - v)
    }

    /// Sets the value to the larger of it and `v` (as `f64::max`); returns the previous value.
    pub fn fetch_max(&self, v: f64) -> f64 {
        self.update(|x| x.max(v))
    }

    /// Sets the value to the smaller of it and `v` (as `f64::min`); returns the previous value.
    pub fn fetch_min(&self, v: f64) -> f64 {
        self.update(|x| x.min(v))
    }

    fn update(&self, f: impl Fn(f64) -> f64) -> f64 {
        match self.fetch_update(|x| Some(f(x))) {
            Ok(x) | Err(x) => x,
        }
    }
}
