//! `#[process]` functions run as real OS processes; `Parallel`, `Sequence`, `Spawn`.

use std::sync::atomic::{AtomicU64, Ordering};

use pycsp::prelude::*;
use pycsp::{Error, Failure};

static GLOBAL: AtomicU64 = AtomicU64::new(0);

#[process]
fn whoami() -> u32 {
    std::process::id()
}

#[process]
fn set_global(v: u64) -> u64 {
    GLOBAL.store(v, Ordering::SeqCst);
    GLOBAL.load(Ordering::SeqCst)
}

#[test]
fn each_process_of_a_parallel_has_its_own_pid() {
    let pids = Parallel(replicate(4, |_| whoami())).unwrap();
    let mut unique = pids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{pids:?}");
    assert!(!pids.contains(&std::process::id()));
}

#[test]
fn a_global_changed_in_a_child_is_unchanged_in_the_parent() {
    assert_eq!(Parallel(set_global(42)).unwrap(), 42);
    assert_eq!(GLOBAL.load(Ordering::SeqCst), 0);
}

#[process]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[process]
fn greet(name: String, times: usize) -> Vec<String> {
    (0..times).map(|i| format!("{i}: hello {name}")).collect()
}

#[test]
fn parallel_returns_every_return_value_in_order_and_shape() {
    let (sum, greetings, arr) = Parallel((
        add(2, 3),
        greet("csp".into(), 2),
        [add(1, 1), add(2, 2), add(3, 3)],
    ))
    .unwrap();
    assert_eq!(sum, 5);
    assert_eq!(greetings, vec!["0: hello csp", "1: hello csp"]);
    assert_eq!(arr, [2, 4, 6]);
}

#[process]
fn log_step(out: ChannelOut<u32>, step: u32) -> Result<u32, ChannelError> {
    out.write(step)?;
    Ok(step * 10)
}

#[test]
fn sequence_runs_processes_one_after_the_other() {
    let ch = Channel::<u32>::named_buffered("sequence-log", 8).unwrap();
    let r = ch.reader();
    let results = Sequence(replicate(5, |i| log_step(ch.writer(), i as u32))).unwrap();
    assert_eq!(results, vec![Ok(0), Ok(10), Ok(20), Ok(30), Ok(40)]);
    let order: Vec<u32> = r.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
}

#[test]
fn spawn_returns_at_once_and_join_collects_the_results() {
    let gate = Channel::<u8>::named("spawn-gate").unwrap();
    let handle = Spawn(wait_for_gate(gate.reader())).unwrap();
    assert_eq!(handle.pids().len(), 1);
    // The process is still blocked on the gate: Spawn did not wait for it.
    gate.writer().write(9).unwrap();
    assert_eq!(handle.join().unwrap(), Ok(9));
}

#[process]
fn wait_for_gate(gate: ChannelIn<u8>) -> Result<u8, ChannelError> {
    gate.read()
}

#[process]
fn nested_sum(n: i64) -> Result<i64, Error> {
    // A process that runs its own Parallel: grandchildren of the test.
    let parts = Parallel(replicate(3, |i| add(i as i64, n)))?;
    Ok(parts.iter().sum())
}

#[test]
fn a_process_can_run_a_nested_parallel() {
    assert_eq!(Parallel(nested_sum(10)).unwrap(), Ok(33));
}

#[process]
fn panics(msg: String) {
    panic!("{msg}");
}

#[process]
fn exits(code: i32) {
    std::process::exit(code);
}

#[process]
fn killed_by_signal() {
    // SAFETY: sending SIGKILL to ourselves is the point of this process.
    unsafe { libc::raise(libc::SIGKILL) };
}

#[process]
fn aborts() {
    std::process::abort();
}

fn failure_of(r: Result<(), Error>) -> (String, Failure) {
    match r {
        Err(Error::ProcessFailed { name, failure, .. }) => (name, failure),
        other => panic!("expected a process failure, got {other:?}"),
    }
}

#[test]
fn a_panic_is_reported_with_the_process_name_and_message() {
    let (name, failure) = failure_of(Parallel(panics("boom 17".into())));
    assert!(name.ends_with("panics"), "{name}");
    assert_eq!(failure, Failure::Panicked("boom 17".into()));
}

#[test]
fn an_exit_code_and_a_signal_are_reported() {
    assert_eq!(failure_of(Parallel(exits(3))).1, Failure::Exited(3));
    assert_eq!(
        failure_of(Parallel(killed_by_signal())).1,
        Failure::Signaled(libc::SIGKILL)
    );
    assert_eq!(
        failure_of(Parallel(aborts())).1,
        Failure::Signaled(libc::SIGABRT)
    );
}

#[test]
fn the_first_failure_in_order_is_reported_and_the_others_still_ran() {
    let err = Parallel((add(1, 2), exits(4), panics("later".into()))).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("exits") && text.contains("code 4"), "{text}");
}

#[test]
fn processes_start_safely_from_many_threads_at_once() {
    let handles: Vec<_> = (0..4)
        .map(|t| std::thread::spawn(move || Parallel(replicate(3, |i| add(t, i as i64))).unwrap()))
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let t = t as i64;
        assert_eq!(h.join().unwrap(), vec![t, t + 1, t + 2]);
    }
}
