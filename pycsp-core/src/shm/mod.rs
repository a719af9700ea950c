#![doc = include_str!("LAYOUT.md")]

pub(crate) mod arena;
pub(crate) mod census;
pub(crate) mod ring;
pub(crate) mod wait;
pub(crate) mod waiter;
