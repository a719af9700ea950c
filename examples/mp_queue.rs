//! Python's `multiprocessing.Queue`, the CSP way: a buffered channel.
//!
//! ```python
//! from multiprocessing import Process, Queue
//! def f(q):
//!     q.put([42, None, 'hello'])
//! q = Queue()
//! p = Process(target=f, args=(q,)); p.start()
//! print(q.get())                      # [42, None, 'hello']
//! p.join()
//! ```

use pycsp::prelude::*;

// ANCHOR: queue
#[process]
fn f(q: ChannelOut<(i32, Option<i32>, String)>) -> Result<(), ChannelError> {
    q.write((42, None, "hello".into()))
}

fn main() -> Result<(), pycsp::Error> {
    let q = Channel::buffered("q", 16)?; // a Queue holds messages until they are taken
    let get = q.reader();
    let p = Spawn(f(q.writer()))?; // p.start()
    let (n, none, s) = get.read()?; // q.get()
    println!(
        "[{n}, {}, '{s}']",
        none.map_or("None".to_string(), |v| v.to_string())
    );
    p.join()??; // p.join()
    Ok(())
}
// ANCHOR_END: queue
