//! The Python-multiprocessing examples print exactly what their Python counterparts in
//! `examples/python/` print (the book shows both side by side). Each test checks the Rust
//! example's output and, when `python3` is installed, runs the Python program and checks that
//! it prints the same.

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
    // Integration tests live in target/<profile>/deps; `cargo test` builds the examples into
    // target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name);
    stdout_of(Command::new(&path), &path.display().to_string())
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
