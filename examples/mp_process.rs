//! Python's `Process(target=f, args=...)`, `start()` and `join()`: a `#[process]` function,
//! `Spawn` and `join`. The Python counterpart is `examples/python/mp_process.py`; both print
//! the same lines (checked by `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_process`

use pycsp::prelude::*;

// ANCHOR: process
/// `def f(name, parent_pid)`: runs in its own OS process.
#[process]
fn f(name: String, parent_pid: u32) {
    println!("hello {name}");
    let other = std::process::id() != parent_pid;
    println!(
        "in another process: {}",
        if other { "True" } else { "False" }
    );
}

fn main() -> Result<(), pycsp::Error> {
    let p = Spawn(f("bob".into(), std::process::id()))?; // Process(...); p.start()
                                                         // p.join(); p.exitcode: a process that returned exited with 0, one that called
                                                         // exit(code) first is reported with its code, a crash with its panic message or signal.
    let exitcode = match p.join() {
        Ok(()) => 0,
        Err(pycsp::Error::ProcessFailed {
            failure: pycsp::Failure::Exited(code),
            ..
        }) => code,
        Err(e) => return Err(e),
    };
    println!("joined, exit code {exitcode}");
    Ok(())
}
// ANCHOR_END: process
