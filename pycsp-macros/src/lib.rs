//! The `#[process]` attribute of [pycsp](https://docs.rs/pycsp).
//!
//! A thin crate: `parse` checks the function and builds a small model of it, `expand`
//! generates the code. Errors point at the offending token.
#![warn(missing_docs)]

use proc_macro::TokenStream;

mod expand;
mod parse;

/// Turns a function into a constructor of a `pycsp::Process` that runs the function in its own
/// OS process.
///
/// Parameters must be owned, serializable values (channel ends included); the return type
/// must be serializable. Calling the function runs nothing: give the `Process` it returns to
/// `Parallel`, `Sequence` or `Spawn`.
///
/// ```ignore
/// #[process]
/// fn worker(jobs: ChannelIn<u64>, results: ChannelOut<u64>) -> Result<(), ChannelError> {
///     loop { results.write(jobs.read()? * 2)?; }
/// }
/// ```
#[proc_macro_attribute]
pub fn process(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match parse::parse(attr.into(), item.clone()) {
        Ok(model) => expand::expand(&model).into(),
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(item);
            out.into()
        }
    }
}
