//! The picture of a running network: what `network_picture` shows of processes and channels,
//! and the book's network diagrams, which the examples draw themselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pycsp::prelude::*;

#[process]
fn reader_of(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    let mut sum = 0;
    for v in inp.iter() {
        sum += v?;
    }
    Ok(sum)
}

#[test]
fn the_picture_shows_a_blocked_reader_its_channel_and_who_holds_the_writer() {
    let ch = Channel::<u64>::named_buffered("picture-numbers", 4).unwrap();
    let w = ch.writer();
    w.write(5).unwrap();
    let running = Spawn(reader_of(ch.reader())).unwrap();
    // The reader takes the 5, then sleeps reading: wait until the picture says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dot = loop {
        let dot = pycsp::network_picture().dot().to_string();
        if dot.contains("waits to read") {
            break dot;
        }
        assert!(
            Instant::now() < deadline,
            "the reader never showed as blocked:\n{dot}"
        );
        std::thread::yield_now();
    };
    assert!(dot.starts_with("digraph network {"), "{dot}");
    assert!(
        dot.contains("reader_of\\npid"),
        "the process and its pid: {dot}"
    );
    assert!(dot.contains("\\nblocked"), "its state: {dot}");
    assert!(
        dot.contains("picture-numbers\\nbuffered (4)\\n1 passed"),
        "the channel, its kind, capacity and messages passed: {dot}"
    );
    assert!(
        dot.contains("[color=red, label=\"waits to read\"]"),
        "the arrow it is blocked on: {dot}"
    );
    // This process holds the writer: an arrow from it to the channel.
    assert!(dot.contains("main\\npid"), "{dot}");
    let svg = pycsp::network_picture().svg();
    assert!(svg.contains("<svg") && svg.contains("reader_of"), "{svg}");
    w.write(6).unwrap();
    drop((w, ch));
    let sum = running.join().unwrap();
    assert_eq!(sum, Ok(11));
}

/// The example binaries `cargo test` built.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name)
}

/// Each book diagram, the example that draws it and its arguments.
const BOOK_PICTURES: &[(&str, &str, &[&str])] = &[
    ("pipeline.svg", "pipeline", &[]),
    ("farm.svg", "primes", &["--workers", "3"]),
    ("server.svg", "server", &["3", "100"]),
    ("fan-out-in.svg", "fan_out_in", &[]),
];

/// The book's network diagrams are drawn by the examples they show, with
///
/// ```sh
/// PYCSP_PICTURE_DETAIL=structure PYCSP_PICTURE=book/src/pipeline.svg cargo run --example pipeline
/// PYCSP_PICTURE_DETAIL=structure PYCSP_PICTURE=book/src/farm.svg cargo run --example primes -- --workers 3
/// PYCSP_PICTURE_DETAIL=structure PYCSP_PICTURE=book/src/server.svg cargo run --example server -- 3 100
/// PYCSP_PICTURE_DETAIL=structure PYCSP_PICTURE=book/src/fan-out-in.svg cargo run --example fan_out_in
/// ```
///
/// (the book's "Seeing your network" chapter): drawing them again gives the same files.
#[test]
fn the_book_diagrams_are_what_the_examples_draw() {
    let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src");
    let dir = std::env::temp_dir().join(format!("pycsp-pictures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, name, args) in BOOK_PICTURES {
        let out = dir.join(file);
        let status = Command::new(example(name))
            .args(*args)
            .env("PYCSP_PICTURE", &out)
            .env("PYCSP_PICTURE_DETAIL", "structure")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "example {name} failed: {status}");
        let drawn = std::fs::read_to_string(&out).unwrap();
        let kept = std::fs::read_to_string(book.join(file)).unwrap();
        assert!(
            drawn == kept,
            "book/src/{file} is not what `PYCSP_PICTURE_DETAIL=structure \
             PYCSP_PICTURE=book/src/{file} cargo run --example {name} -- {}` draws: run it",
            args.join(" ")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
