//! The table of `#[process]` functions linked into this binary, filled at link time.

/// One entry of the process table that `#[process]` fills at link time.
#[doc(hidden)]
pub struct ProcessEntry {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Result<Vec<u8>, String>,
}

/// Every `#[process]` function linked into this binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static PROCESSES: [ProcessEntry];

/// The name of a registered process function for messages: its path, without the suffix
/// that makes registered names unique.
pub(crate) fn display_name(registered: &'static str) -> &'static str {
    registered.split('@').next().unwrap_or(registered)
}
