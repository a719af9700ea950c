//! Typed arrays in shared memory: Python's `multiprocessing.Array` and a numpy array on
//! `shared_memory`, the CSP way.
//!
//! A [`SharedArray<T>`] is a slice of plain-old-data `T` (any [`bytemuck::Pod`] type: `f64`,
//! `i32`, `[u8; 4]`, a `#[repr(C)]` struct of such) in the process network's shared memory. It
//! dereferences to `[T]`, so it reads and writes as a slice, with no `unsafe`.
//!
//! An array has **one owner at a time**, as a [`SharedBlock`](crate::SharedBlock): writing
//! it to a channel, or passing it to a `#[process]` function or returning it from one, moves
//! only its place in shared memory (a few bytes), and the sender's handle is spent. To let
//! several processes work on one array at once, [`split_into`](SharedArray::split_into) or
//! [`into_chunks`](SharedArray::into_chunks) cuts it into disjoint pieces, each a
//! `SharedArray` of its own that goes to its worker without copying; the pieces come back and
//! [`SharedArray::join`] makes them the whole array again, after checking that they are all
//! the pieces of that one array (in any order).
//!
//! ```
//! use pycsp_core::{array::SharedArray, Channel};
//!
//! let mut a = SharedArray::<f64>::zeroed(1000)?;
//! a[0] = 1.5;
//! let pieces = a.split_into(4); // 4 disjoint pieces of 250 elements
//! assert_eq!(pieces[1].range(), 250..500);
//! let ch = Channel::<SharedArray<f64>>::buffered(4)?;
//! let (tx, rx) = (ch.writer(), ch.reader());
//! for p in pieces {
//!     tx.write(p)?; // moves a few bytes, not 250 f64s
//! }
//! let back: Vec<_> = (0..4).map(|_| rx.read()).collect::<Result<_, _>>()?;
//! let whole = SharedArray::join(back).expect("all four pieces of one array");
//! assert_eq!((whole.len(), whole[0]), (1000, 1.5));
//! # Ok::<(), pycsp_core::ChannelError>(())
//! ```
//!
//! The memory is freed when the last piece is dropped, in whichever process. A piece that is
//! dropped in a process that panics is released as any other; one held by a process that is
//! killed is never released, and its block stays allocated until the network ends: the
//! other pieces are unaffected either way (but cannot be joined into the whole again).

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::block::{spent_by_serialize, Counted, COUNTED_ALIGN};
use crate::error::{ChannelError, JoinError};
use crate::message;

/// Why a shared array cannot travel through a socket channel.
const NOT_OVER_SOCKETS: &str = "a SharedArray is shared memory of this process network and \
     cannot travel through a socket channel: send its elements (a Vec) instead";

/// An array of `T` in shared memory, or a piece of one; see the [module docs](self).
pub struct SharedArray<T: Pod> {
    block: Counted,
    /// Elements of the whole array.
    whole: usize,
    /// The elements this piece holds.
    start: usize,
    end: usize,
    owned: Cell<bool>,
    _t: PhantomData<T>,
}

impl<T: Pod> SharedArray<T> {
    /// Refused at compile time: zero-sized elements, and alignments above the block's.
    const FITS: () = assert!(
        std::mem::size_of::<T>() > 0 && std::mem::align_of::<T>() as u64 <= COUNTED_ALIGN,
        "a SharedArray element must have a size, and an alignment of at most 64"
    );

    /// An array of `n` zero elements (`numpy.zeros(n)`, `multiprocessing.Array(type, n)`).
    ///
    /// Fails with [`ChannelError::TooLarge`] if no block of the network's shared memory can
    /// ever hold `n` elements, and with [`ChannelError::Capacity`] if there is no room for
    /// them now. Either way nothing was allocated.
    pub fn zeroed(n: usize) -> Result<SharedArray<T>, ChannelError> {
        let () = Self::FITS;
        let bytes = (n as u64)
            .checked_mul(std::mem::size_of::<T>() as u64)
            .ok_or_else(|| too_large(u64::MAX))?;
        let block = Counted::new(bytes)?;
        Ok(SharedArray {
            block,
            whole: n,
            start: 0,
            end: n,
            owned: Cell::new(true),
            _t: PhantomData,
        })
    }

    /// An array holding a copy of `data` (`multiprocessing.Array(type, data)`).
    pub fn from_slice(data: &[T]) -> Result<SharedArray<T>, ChannelError> {
        let mut a = SharedArray::zeroed(data.len())?;
        a.copy_from_slice(data);
        Ok(a)
    }

    /// Where this piece lies in the whole array it was cut from (`0..len` for a whole array).
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// How many elements the whole array that this piece was cut from has.
    pub fn whole_len(&self) -> usize {
        self.whole
    }

    /// Whether this is a whole array, not a piece of one.
    pub fn is_whole(&self) -> bool {
        self.start == 0 && self.end == self.whole
    }

    /// Cuts this array (or piece) into `k` disjoint pieces of consecutive elements, in order,
    /// whose lengths differ by at most one (the first ones are longer), as numpy's
    /// `array_split`: `k` pieces also when there are fewer than `k` elements (some are then
    /// empty). Nothing is copied.
    ///
    /// # Panics
    ///
    /// If `k` is 0, or if this array was sent away (as any use of a spent handle).
    pub fn split_into(self, k: usize) -> Vec<SharedArray<T>> {
        assert!(k > 0, "SharedArray::split_into(0): at least one piece");
        let n = self.len();
        let (base, extra) = (n / k, n % k);
        let mut at = self.start;
        let bounds = (0..k).map(|i| {
            let len = base + usize::from(i < extra);
            at += len;
            at - len..at
        });
        self.cut(bounds.collect())
    }

    /// Cuts this array (or piece) into pieces of `size` elements, in order; the last one is
    /// shorter if `size` does not divide the length (as `slice::chunks`). Nothing is copied.
    ///
    /// # Panics
    ///
    /// If `size` is 0, or if this array was sent away.
    pub fn into_chunks(self, size: usize) -> Vec<SharedArray<T>> {
        assert!(size > 0, "SharedArray::into_chunks(0): pieces need a size");
        let bounds = (self.start..self.end)
            .step_by(size)
            .map(|s| s..(s + size).min(self.end))
            .collect();
        self.cut(bounds)
    }

    /// The pieces `bounds` (consecutive, covering this piece) of this piece.
    fn cut(self, bounds: Vec<Range<usize>>) -> Vec<SharedArray<T>> {
        self.check_owned();
        let mut bounds = bounds;
        if bounds.is_empty() {
            bounds.push(self.start..self.start); // an empty piece stays one (empty) piece
        }
        // This handle's count goes to the first piece; each other piece takes one more.
        self.block.acquire(bounds.len() as u64 - 1);
        self.owned.set(false);
        bounds
            .into_iter()
            .map(|r| SharedArray {
                block: self.block,
                whole: self.whole,
                start: r.start,
                end: r.end,
                owned: Cell::new(true),
                _t: PhantomData,
            })
            .collect()
    }

    /// Makes pieces cut from one array the whole array again. The pieces may come in any
    /// order, from any processes; they must be every piece of one array, each once.
    ///
    /// Refuses, giving the pieces back in the [`JoinError`], pieces of different arrays, a
    /// missing piece (such as one that a killed process held), pieces that overlap, a piece
    /// that was sent away, and no pieces at all.
    pub fn join(pieces: Vec<SharedArray<T>>) -> Result<SharedArray<T>, JoinError<SharedArray<T>>> {
        let refuse = |reason: String, pieces| Err(JoinError::new(reason, pieces));
        let Some(first) = pieces.first() else {
            return refuse("no pieces were given".into(), pieces);
        };
        let (block, whole) = (first.block, first.whole);
        if let Some(i) = pieces.iter().position(|p| !p.owned.get()) {
            return refuse(format!("piece {i} was sent away"), pieces);
        }
        if let Some(i) = pieces.iter().position(|p| p.block != block) {
            return refuse(
                format!("piece {i} belongs to another array than piece 0"),
                pieces,
            );
        }
        let mut order: Vec<usize> = (0..pieces.len()).collect();
        order.sort_by_key(|&i| (pieces[i].start, pieces[i].end));
        let mut at = 0;
        for &i in &order {
            let r = pieces[i].range();
            if r.start > at {
                return refuse(
                    format!("elements {at}..{} of {whole} are missing", r.start),
                    pieces,
                );
            }
            if r.start < at {
                return refuse(format!("piece {i} ({r:?}) overlaps another piece"), pieces);
            }
            at = r.end;
        }
        if at != whole {
            return refuse(
                format!("elements {at}..{whole} of {whole} are missing"),
                pieces,
            );
        }
        // Every piece's count but one goes; the whole array takes that one.
        let n = pieces.len() as u64;
        for p in &pieces {
            p.owned.set(false);
        }
        if n > 1 {
            block.release(n - 1);
        }
        Ok(SharedArray {
            block,
            whole,
            start: 0,
            end: whole,
            owned: Cell::new(true),
            _t: PhantomData,
        })
    }

    fn check_owned(&self) {
        assert!(
            self.owned.get(),
            "this SharedArray was sent to another process; it is no longer yours"
        );
    }

    /// The first element of this piece.
    fn ptr(&self) -> *mut T {
        self.check_owned();
        let base = self.block.data_ptr();
        // The block holds `whole` elements (checked when it was made or attached), and
        // `start <= whole`.
        base.wrapping_add(self.start * std::mem::size_of::<T>())
            .cast::<T>()
    }
}

fn too_large(len: u64) -> ChannelError {
    ChannelError::TooLarge {
        channel: String::new(),
        len,
        max: crate::block::SharedBlock::max_len().map_or(0, |m| m as u64),
    }
}

impl<T: Pod> Deref for SharedArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the piece's elements lie inside its block (`start..end` within `whole`,
        // whose bytes the block holds), aligned (the block's data is 64-aligned, `T`'s
        // alignment at most 64 and its size a multiple of it); every bit pattern is a valid
        // `T` (`Pod`), and the bytes are initialised (zeroed when the block was made). Only
        // this handle reaches these elements while it is owned: pieces are disjoint, and
        // another process gets them only through a send, which spends this handle.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.end - self.start) }
    }
}

impl<T: Pod> DerefMut for SharedArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference in this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.end - self.start) }
    }
}

impl<T: Pod> Drop for SharedArray<T> {
    fn drop(&mut self) {
        if self.owned.get() {
            self.block.release(1);
        }
    }
}

impl<T: Pod> std::fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedArray<{}>({}..{} of {}{})",
            std::any::type_name::<T>(),
            self.start,
            self.end,
            self.whole,
            if self.owned.get() { "" } else { ", sent" }
        )
    }
}

/// What a message carries for a piece: its block, the whole array's length, its range.
#[derive(Serialize, Deserialize)]
struct WirePiece {
    block: u64,
    whole: u64,
    start: u64,
    end: u64,
}

/// Serializing a piece moves it: only its place travels, and the handle left behind is spent
/// (once its message is placed, for the writes that hand a value back when they fail).
impl<T: Pod> Serialize for SharedArray<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        if !self.owned.get() {
            return Err(S::Error::custom("this SharedArray was already sent"));
        }
        if !message::is_local() {
            return Err(S::Error::custom(NOT_OVER_SOCKETS));
        }
        let r = WirePiece {
            block: self.block.offset(),
            whole: self.whole as u64,
            start: self.start as u64,
            end: self.end as u64,
        }
        .serialize(s)?;
        spent_by_serialize(&self.owned);
        Ok(r)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let () = Self::FITS;
        // An offset that may have come over a socket is never used.
        if !message::is_local() {
            return Err(D::Error::custom(NOT_OVER_SOCKETS));
        }
        let w = WirePiece::deserialize(d)?;
        let block = Counted::attach(w.block).map_err(D::Error::custom)?;
        let size = std::mem::size_of::<T>() as u64;
        if w.start > w.end
            || w.end > w.whole
            || w.whole.checked_mul(size).is_none_or(|b| b > block.len())
        {
            return Err(D::Error::custom(format!(
                "a SharedArray piece {}..{} of {} does not fit its block of {} bytes",
                w.start,
                w.end,
                w.whole,
                block.len()
            )));
        }
        Ok(SharedArray {
            block,
            whole: w.whole as usize,
            start: w.start as usize,
            end: w.end as usize,
            owned: Cell::new(true),
            _t: PhantomData,
        })
    }
}
