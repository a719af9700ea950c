//! The `#[process]` and `#[pool_fn]` attributes of [pycsp](https://docs.rs/pycsp).
//!
//! A thin crate: `parse` checks the function and builds a small model of it, `expand`
//! generates the code. Errors point at the offending token; a refused function is replaced
//! by a stub of the same name and shape, so that its uses add no errors of their own.
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
    match parse::parse(attr.into(), item.clone(), "#[process]") {
        Ok(model) => expand::expand(&model).into(),
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(expand::process_stub(item));
            out.into()
        }
    }
}

/// Marks a function that a `pycsp::Pool` can run in its worker processes: Python's
/// `pool.map(f, items)` for a plain `fn f(x: X) -> Y`.
///
/// The function keeps its name and can still be called (`square(3)`); the name is also the
/// value given to the pool (`pool.map(square, 0..100)`). Parameters and the return type must
/// be owned, serializable values: each item crosses into a worker process, and its result
/// back. A function of several parameters is given tuples (`pool.starmap(add, pairs)`).
///
/// ```ignore
/// #[pool_fn]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
/// ```
#[proc_macro_attribute]
pub fn pool_fn(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match parse::parse(attr.into(), item.clone(), "#[pool_fn]") {
        Ok(model) => expand::expand_pool_fn(&model).into(),
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(item);
            out.into()
        }
    }
}
