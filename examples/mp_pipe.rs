//! Python's `multiprocessing.Pipe` (duplex), the CSP way: a pair of channels, one each way.
//!
//! The Python counterpart is `examples/python/mp_pipe.py`; both print the same lines (checked by
//! `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_pipe`

use pycsp::prelude::*;

// ANCHOR: pipe
/// One end of a duplex pipe: a reading and a writing channel end.
type Conn<T> = (ChannelIn<T>, ChannelOut<T>);

/// `Pipe()`: two connected ends.
fn pipe<T: serde::Serialize + serde::de::DeserializeOwned>(
) -> Result<(Conn<T>, Conn<T>), ChannelError> {
    let there = Channel::<T>::new()?;
    let back = Channel::<T>::new()?;
    Ok((
        (back.reader(), there.writer()),
        (there.reader(), back.writer()),
    ))
}

#[process]
fn f(conn: Conn<String>) -> Result<(), ChannelError> {
    let (recv, send) = conn;
    send.write("[42, None, 'hello']".into())?;
    println!("{}", recv.read()?);
    Ok(()) // dropping the ends closes the pipe
}

fn main() -> Result<(), pycsp::Error> {
    let (parent_conn, child_conn) = pipe::<String>()?;
    let p = Spawn(f(child_conn))?;
    let (recv, send) = parent_conn;
    println!("{}", recv.read()?);
    send.write("ping".into())?;
    p.join()??;
    Ok(())
}
// ANCHOR_END: pipe
