//! Examples print what the book says they print.
//!
//! The Python-multiprocessing examples print exactly what their Python counterparts in
//! `examples/python/` print (the book shows both side by side). Each of those tests checks the
//! Rust example's output and, when `python3` is installed, runs the Python program and checks
//! that it prints the same.

use std::path::Path;
use std::process::Command;

fn stdout_of(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run_example(name: &str) -> String {
    run_example_with(name, &[])
}

fn run_example_with(name: &str, args: &[&str]) -> String {
    // Integration tests live in target/<profile>/deps; `cargo test` builds the examples into
    // target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name);
    let mut cmd = Command::new(&path);
    cmd.args(args);
    stdout_of(cmd, &path.display().to_string())
}

/// The output of `examples/python/NAME.py`, or `None` when there is no `python3`.
fn run_python(name: &str) -> Option<String> {
    let python_works = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !python_works {
        eprintln!("python3 not found: {name}.py not run, only its expected output checked");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/python")
        .join(format!("{name}.py"));
    let mut cmd = Command::new("python3");
    // -u: unbuffered, so that lines printed by parent and child keep their order in a pipe.
    cmd.arg("-u").arg(&script);
    Some(stdout_of(cmd, &script.display().to_string()))
}

/// The Rust example prints `expected`, and so does its Python counterpart.
fn check(name: &str, expected: &str) {
    assert_eq!(run_example(name), expected, "the Rust example {name}");
    if let Some(python) = run_python(name) {
        assert_eq!(python, expected, "the Python program {name}.py");
    }
}

#[test]
fn process_start_join_prints_what_python_prints() {
    check(
        "mp_process",
        "hello bob\nin another process: True\njoined, exit code 0\n",
    );
}

#[test]
fn pool_map_prints_what_python_prints() {
    check("mp_pool_map", "[1, 4, 9]\n");
}

#[test]
fn pool_map_async_prints_what_python_prints() {
    check(
        "mp_pool_map_async",
        "submitted 10 jobs\n[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\nsuccessful: True\n",
    );
}

#[test]
fn queue_prints_what_python_prints() {
    check("mp_queue", "[42, None, 'hello']\n");
}

#[test]
fn pipe_prints_what_python_prints() {
    check("mp_pipe", "[42, None, 'hello']\nping\n");
}

#[test]
fn value_and_array_print_what_python_prints() {
    check(
        "mp_value_array",
        "3.1415927\n[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]\n",
    );
}

#[test]
fn shared_memory_array_prints_what_python_prints() {
    check(
        "mp_shared_memory",
        "[1, 1, 2, 3, 5, 8]\n[10, 10, 20, 30, 50, 8880]\nsum 9000\n",
    );
}

#[test]
fn array_farm_fills_every_element_in_place() {
    assert_eq!(
        run_example_with("array_farm", &["1000003", "3"]),
        "1000003 elements filled in place by 3 worker processes, every one right: true\n"
    );
}

#[test]
fn channel_api_example_prints_what_the_book_shows() {
    assert_eq!(
        run_example("channel_api"),
        "buffered 2 of 2, full: true\n\
         try_write handed back \"ccc\"\n\
         worker read 6 bytes\n\
         no reader waiting: Err(Full(..))\n\
         deadline passed, 2 handed back\n\
         nothing was delivered: Err(Empty)\n\
         try_iter took [0, 1, 2, 3, 4] without waiting\n\
         alive: true\n\
         killed: killed by signal 9 (SIGKILL)\n"
    );
}

#[test]
fn mmap_prints_what_python_prints() {
    check("mp_mmap", "b'HELLO world\\n'\n");
}

#[test]
fn manager_dict_and_list_print_what_python_prints() {
    check(
        "mp_manager",
        "{1: '1', '2': 2, 0.25: None}\n[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]\n",
    );
}

#[test]
fn manager_namespace_prints_what_python_prints() {
    check("mp_namespace", "Namespace(x=2, y='changed')\n2 changed\n");
}

#[test]
fn lock_replaced_by_an_owner_prints_what_python_prints() {
    check("mp_lock", "4000\n");
}

// The book's other listings of output.

#[test]
fn processes_prints_what_the_book_shows() {
    assert_eq!(
        run_example("processes"),
        "Parallel of a tuple: 9 16\n\
         Parallel of replicate(4, ..): [0, 1, 4, 9]\n\
         Sequence: 25 36\n\
         Spawn: started\n\
         joined: 49\n\
         rendezvous: [0, 1, 2]\n\
         buffered: [0, 1, 2]\n\
         any-to-any: 200 messages, each read once: true, each writer's in order: true\n"
    );
}

#[test]
fn retire_poison_prints_what_the_book_shows() {
    assert_eq!(
        run_example("retire_poison"),
        "retire: read 1, read 2, read 3, then Retired\npoison: then Poisoned\n"
    );
}

#[test]
fn sieve_prints_what_the_book_shows() {
    assert_eq!(
        run_example_with("sieve", &["10"]),
        "the first 10 primes: [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]\n\
         shut down by poison: generator Err(Poisoned), first filter Err(Channel(Poisoned))\n"
    );
}

#[test]
fn pipeline_prints_what_the_book_shows() {
    assert_eq!(
        run_example("pipeline"),
        "running sums of the squares of 1..=10: [1, 5, 14, 30, 55, 91, 140, 204, 285, 385]\n"
    );
}

#[test]
fn fan_out_in_prints_what_the_book_shows() {
    assert_eq!(run_example("fan_out_in"), "max 9\nmin -5\nsum 19\n");
}

#[test]
fn crash_prints_what_the_book_shows() {
    assert_eq!(
        run_example("crash"),
        "Panic:\n\
         \x20 consumer read [1, 2, 3], then PeerDied: fragile died\n\
         \x20 Parallel: process fragile panicked: out of cheese\n\
         Abort:\n\
         \x20 consumer read [1, 2, 3], then PeerDied: fragile died\n\
         \x20 Parallel: process fragile killed by signal 6 (SIGABRT)\n"
    );
}

#[test]
fn pool_tour_prints_what_the_book_shows() {
    assert_eq!(
        run_example("pool"),
        "map: [1, 4, 9, 16, 25]\n\
         starmap: [1024, 27]\n\
         sum of 10000 squares: 333283335000\n\
         still callable here: 144\n\
         imap of 1..: [1, 4, 9, 16]\n\
         imap_unordered, sorted: [0, 1, 4, 9, 16, 25]\n\
         item 2 failed: worker panicked: cannot invert 0\n\
         after: [0.25, 0.5]\n"
    );
}
