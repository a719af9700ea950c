//! The Python-multiprocessing examples print exactly what their Python counterparts print
//! (the book shows both side by side).

use std::process::Command;

fn run_example(name: &str) -> String {
    // Integration tests live in target/<profile>/deps; `cargo test` builds the examples into
    // target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name);
    let out = Command::new(&dir)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", dir.display()));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pool_map_prints_what_python_prints() {
    assert_eq!(run_example("mp_pool_map"), "[1, 4, 9]\n");
}

#[test]
fn queue_prints_what_python_prints() {
    assert_eq!(run_example("mp_queue"), "[42, None, 'hello']\n");
}

#[test]
fn pipe_prints_what_python_prints() {
    assert_eq!(run_example("mp_pipe"), "[42, None, 'hello']\nping\n");
}

#[test]
fn value_and_array_print_what_python_prints() {
    assert_eq!(
        run_example("mp_value_array"),
        "3.1415927\n[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]\n"
    );
}

#[test]
fn manager_dict_and_list_print_what_python_prints() {
    assert_eq!(
        run_example("mp_manager"),
        "{1: '1', '2': 2, 0.25: None}\n[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]\n"
    );
}
