//! The runtime under the memory limits of cluster nodes: with `ulimit -v` (RLIMIT_AS) the
//! network's shared memory is sized to fit, processes and channels work, and what does not fit
//! is a typed error, never a failed start or a killed process.
//!
//! Each test runs one test of this binary again, in a shell that sets the limit first (the
//! limit then holds for that test and every process it starts).

use std::process::Command;

use pycsp::prelude::*;

/// Set to the name of the test that the child process is to run.
const CHILD: &str = "PYCSP_SIZES_CHILD";

/// Runs test `name` of this binary again under `ulimit -v kib` and checks that it passed.
fn rerun_under_ulimit_v(name: &str, kib: u64) {
    rerun(name, &format!("ulimit -v {kib}"), &[]);
}

/// Runs test `name` of this binary again after shell command `setup`, with `env`, and checks
/// that it passed.
fn rerun(name: &str, setup: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{setup} && exec \"$0\" \"$@\""))
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains(&format!("{name}: checked")),
        "{name} after `{setup}` with {env:?}: {}\n{text}",
        out.status
    );
}

/// Whether this process is the child that is to run test `name` (the test is a no-op in a
/// plain run of the test binary).
fn child_runs(name: &str) -> bool {
    std::env::var(CHILD).as_deref() == Ok(name)
}

#[process]
fn produce(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    Ok(())
}

#[process]
fn add_up(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    let mut sum = 0;
    loop {
        match inp.read() {
            Ok(v) => sum += v,
            Err(ChannelError::Retired) => return Ok(sum),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn processes_and_channels_work_under_ulimit_v_8000000() {
    rerun_under_ulimit_v("under_ulimit_v_8000000", 8_000_000);
}

#[test]
fn under_ulimit_v_8000000() {
    let name = "under_ulimit_v_8000000";
    if !child_runs(name) {
        return;
    }
    let ch = Channel::<u64>::named("numbers").unwrap();
    let (sent, sum) = Parallel((produce(ch.writer(), 1000), add_up(ch.reader()))).unwrap();
    assert_eq!((sent, sum), (Ok(()), Ok(499_500)));

    // The shared memory fits in the address space left, with room to spare.
    let max = SharedBlock::max_len().unwrap();
    assert!(max < 4_000_000_000, "a block of {max} bytes can exist");
    match SharedBlock::new(max + 1) {
        Err(ChannelError::TooLarge { .. }) => {}
        other => panic!("SharedBlock::new(max + 1): {other:?}"),
    }
    // 10^8 slots of 128 bytes are more than the shared memory holds.
    match Channel::<u64>::named_buffered("huge", 100_000_000) {
        Err(ChannelError::Capacity { .. }) => {}
        other => panic!("buffered(10^8): {other:?}"),
    }
    // The largest block is there (it costs address space, not memory, until written).
    let mut b = SharedBlock::new(max).unwrap();
    b[max - 1] = 1;
    drop(b);
    // After all of that, more processes and channels.
    let ch = Channel::<u64>::named_buffered("numbers-2", 10).unwrap();
    let (sent, sum) = Parallel((produce(ch.writer(), 100), add_up(ch.reader()))).unwrap();
    assert_eq!((sent, sum), (Ok(()), Ok(4950)));
    println!("{name}: checked");
}

#[test]
fn filling_shared_memory_is_a_capacity_error_not_a_crash_under_ulimit_v() {
    rerun_under_ulimit_v("fill_under_ulimit_v_2000000", 2_000_000);
}

#[test]
fn fill_under_ulimit_v_2000000() {
    let name = "fill_under_ulimit_v_2000000";
    if !child_runs(name) {
        return;
    }
    // A buffered channel of 1 MiB messages and no reader: writes fill the shared memory.
    let ch = Channel::<String>::named_buffered("fill", 1000).unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    let msg = |i: usize| {
        char::from(b'a' + (i % 26) as u8)
            .to_string()
            .repeat(1 << 20)
    };
    let mut n = 0;
    let err = loop {
        assert!(n < 1000, "1000 messages of 1 MiB fit in the shared memory");
        match w.write(msg(n)) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, ChannelError::Capacity { .. }),
        "after {n} messages: {err:?}"
    );
    assert!(n >= 100, "only {n} messages of 1 MiB fit");
    // Every message written is there, and reading frees room for more.
    for i in 0..n {
        assert!(r.read().unwrap() == msg(i), "message {i} differs");
    }
    w.write(msg(n)).unwrap();
    assert!(r.read().unwrap() == msg(n));
    println!("{name}: checked ({n} messages of 1 MiB fit; then {err})");
}

#[test]
fn pycsp_arena_size_sets_the_size_of_shared_memory() {
    rerun("with_a_64m_arena", "true", &[("PYCSP_ARENA_SIZE", "64M")]);
}

#[test]
fn with_a_64m_arena() {
    let name = "with_a_64m_arena";
    if !child_runs(name) {
        return;
    }
    // 64 MiB less the header and directory: the largest block is of 32 MiB.
    assert_eq!(SharedBlock::max_len().unwrap(), (32 << 20) - 16);
    match Channel::<u64>::named_buffered("six-hundred-thousand", 600_000) {
        Err(ChannelError::Capacity { size, .. }) => assert_eq!(size, 64 << 20),
        other => panic!("buffered(600_000) in 64 MiB: {other:?}"),
    }
    let ch = Channel::<u64>::named_buffered("numbers", 100_000).unwrap();
    let (sent, sum) = Parallel((produce(ch.writer(), 100), add_up(ch.reader()))).unwrap();
    assert_eq!((sent, sum), (Ok(()), Ok(4950)));
    println!("{name}: checked");
}
