//! Python's `mmap` shared between processes: two processes map the same file (with the
//! memmap2 crate, as Python's `mmap` does with `mmap(2)`), and what one writes the other
//! reads. The file's bytes are shared by the kernel's page cache, not by pycsp; pycsp starts
//! the process and, the CSP way, the child says on a channel when its write is done (instead
//! of the parent inferring it from the child's exit). For data that only processes of one
//! network share, a `SharedBlock` needs no file (see `mp_shared_memory`). The Python
//! counterpart is `examples/python/mp_mmap.py`; both print the same line (checked by
//! `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_mmap`

use std::fs::OpenOptions;
use std::path::PathBuf;

use memmap2::{Mmap, MmapMut};
use pycsp::prelude::*;

/// Python's `repr` of a bytes value, for the bytes this example holds.
fn bytes_repr(bytes: &[u8]) -> String {
    let mut s = String::from("b'");
    for &b in bytes {
        match b {
            b'\n' => s.push_str("\\n"),
            b'\'' => s.push_str("\\'"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('\'');
    s
}

// ANCHOR: mmap
/// `def f(path)`: maps the file read-write and changes its first five bytes.
#[process]
fn f(path: PathBuf, done: ChannelOut<()>) -> Result<(), String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    // SAFETY: the file was made by this run of the program for this example; nothing
    // truncates it while it is mapped, and only this process writes it meanwhile.
    let mut m = unsafe { MmapMut::map_mut(&file) }.map_err(|e| e.to_string())?;
    m[0..5].copy_from_slice(b"HELLO"); // m[0:5] = b'HELLO'
    drop(m); // unmap; the other process sees the bytes as soon as they are written
    done.write(()).map_err(|e| e.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("pycsp-mmap-{}", std::process::id()));
    std::fs::write(&path, b"hello world\n")?;
    let done = Channel::<()>::new()?;
    let wait = done.reader();
    let p = Spawn(f(path.clone(), done.writer()))?;
    wait.read()?; // the child's write is complete
    let file = std::fs::File::open(&path)?;
    // SAFETY: as in `f`; the child has finished writing and nobody truncates the file.
    let m = unsafe { Mmap::map(&file) }?;
    let line_end = m
        .iter()
        .position(|&b| b == b'\n')
        .map_or(m.len(), |i| i + 1);
    println!("{}", bytes_repr(&m[..line_end])); // m.readline()
    p.join()??;
    std::fs::remove_file(&path)?;
    Ok(())
}
// ANCHOR_END: mmap
