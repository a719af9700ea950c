//! A watchdog for tests of process networks that must never hang.

use std::sync::mpsc;
use std::time::Duration;

use pycsp::prelude::*;

/// Runs `f` (which starts a network) on another thread; if it has not returned within
/// `limit`, poisons the channels named in `chans` so the network ends, and fails.
pub fn within<T: Send + 'static>(
    limit: Duration,
    chans: &[impl AsRef<str>],
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            t.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match t.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it returns"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            for name in chans {
                if let Ok(c) = Channel::<u64>::open(name.as_ref()) {
                    c.poison();
                }
            }
            let _ = rx.recv_timeout(Duration::from_secs(20));
            panic!("hung: no result within {limit:?} (channels poisoned to end the network)");
        }
    }
}
