//! How a process starts: through the fork server the root forks before `main`, or by
//! executing the binary again (`PYCSP_START=exec`, or when the server is gone). Either way the
//! child is a child of the root, sees the parent's environment, working directory and
//! standard streams as they are when it starts, and a failure names it.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use pycsp::prelude::*;
use pycsp::{Error, Failure};

#[process]
fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

#[process]
fn its_name() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_string()
}

#[process]
fn what_it_sees(var: String) -> (Option<String>, String, u64) {
    let cwd = std::env::current_dir().unwrap();
    let ino = std::fs::metadata(".").unwrap().ino();
    (std::env::var(var).ok(), cwd.display().to_string(), ino)
}

#[process]
fn read_stdin() -> usize {
    use std::io::Read;
    let mut s = Vec::new();
    std::io::stdin().read_to_end(&mut s).unwrap();
    s.len()
}

#[process]
fn own_pid() -> u32 {
    std::process::id()
}

/// The length and a checksum of the bytes it was given.
#[process]
fn sums(bytes: Vec<u8>) -> (usize, u64) {
    let sum = bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| (i as u64 + 1) * u64::from(b));
    (bytes.len(), sum.fold(0u64, u64::wrapping_add))
}

/// Prints with C's stdio, which buffers it (standard output is a pipe), and returns.
#[process]
fn prints_with_c_stdio() {
    // SAFETY: a NUL-terminated format without conversions.
    unsafe { libc::printf(c"printed by C stdio in a forked child".as_ptr()) };
}

#[process]
fn dies_by_signal() {
    // SAFETY: raising a signal against this very process.
    unsafe { libc::raise(libc::SIGKILL) };
}

/// The names of the threads this process runs.
#[process]
fn its_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| {
            let comm = t.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_forked_child_runs_no_thread_but_its_own() {
    // It ends with the root by the parent-death signal and is stopped by a signal: no thread
    // watches its control connection (starting one costs the start about a tenth of a ms).
    let threads = Parallel(vec![its_threads()]).unwrap().remove(0);
    assert_eq!(threads.len(), 1, "threads of a forked child: {threads:?}");
}

#[test]
fn a_root_has_a_fork_server_and_its_children_are_children_of_the_root() {
    let server = pycsp::__private::fork_server_pid();
    assert!(server.is_some(), "the root made no fork server");
    let parents = Parallel(replicate(3, |_| parent_pid())).unwrap();
    assert_eq!(parents, vec![std::process::id(); 3]);
}

#[test]
fn a_child_sees_the_environment_and_working_directory_the_parent_has_when_it_starts() {
    let var = format!("PYCSP_TEST_START_{}", std::process::id());
    // Set after main started, long after the fork server was made.
    std::env::set_var(&var, "set-after-main");
    let dir = std::env::temp_dir().join(format!("pycsp-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(&dir).unwrap();
    let seen = Parallel(what_it_sees(var.clone()));
    std::env::set_current_dir(before).unwrap();
    let (value, cwd, ino) = seen.unwrap();
    assert_eq!(value.as_deref(), Some("set-after-main"));
    assert_eq!(ino, std::fs::metadata(&dir).unwrap().ino(), "{cwd}");
    std::env::remove_var(&var);
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn a_child_has_the_name_of_the_program() {
    // The main thread's name (the harness names the test's thread after the test).
    let program = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(Parallel(its_name()).unwrap(), program.trim());
}

#[test]
fn a_child_reads_end_of_file_on_standard_input() {
    assert_eq!(Parallel(read_stdin()).unwrap(), 0);
}

#[test]
fn a_forked_child_killed_by_a_signal_is_reported_with_its_name_and_signal() {
    match Parallel(dies_by_signal()) {
        Err(Error::ProcessFailed { name, failure, .. }) => {
            assert!(name.ends_with("dies_by_signal"), "{name}");
            assert_eq!(failure, Failure::Signaled(libc::SIGKILL));
        }
        other => panic!("expected ProcessFailed, got {other:?}"),
    }
}

/// Run by the test below in a copy of this binary started with `PYCSP_TEST_REMOVED` set:
/// the fork server has it (it was made before `main`), the parent removes it.
#[test]
#[ignore = "run by a_variable_the_parent_removed_after_main_is_not_in_the_child"]
fn with_a_variable_removed() {
    assert_eq!(
        std::env::var("PYCSP_TEST_REMOVED").as_deref(),
        Ok("before-main")
    );
    std::env::remove_var("PYCSP_TEST_REMOVED");
    let (value, _, _) = Parallel(what_it_sees("PYCSP_TEST_REMOVED".into())).unwrap();
    assert_eq!(value, None);
}

#[test]
fn a_variable_the_parent_removed_after_main_is_not_in_the_child() {
    run_ignored(
        "with_a_variable_removed",
        &[("PYCSP_TEST_REMOVED", "before-main")],
    );
}

/// Run by the test below in a copy of this binary started with `PYCSP_START=exec`.
#[test]
#[ignore = "run by start_exec_turns_the_fork_server_off with PYCSP_START=exec"]
fn in_exec_mode() {
    assert_eq!(std::env::var("PYCSP_START").as_deref(), Ok("exec"));
    assert_eq!(pycsp::__private::fork_server_pid(), None);
    let parents = Parallel(replicate(2, |_| parent_pid())).unwrap();
    assert_eq!(parents, vec![std::process::id(); 2]);
}

/// Run by the test below in a copy of this binary (the server it kills is that copy's).
#[test]
#[ignore = "run by after_the_fork_server_is_killed_processes_still_start_by_exec"]
fn with_the_fork_server_killed() {
    watchdog::within(Duration::from_secs(60), &[] as &[&str], || {
        let Some(server) = pycsp::__private::fork_server_pid() else {
            panic!("the root made no fork server");
        };
        // Dead, not reaped: the next start that finds it gone reaps it.
        kill_unreaped(server);
        for _ in 0..3 {
            assert_eq!(Parallel(parent_pid()).unwrap(), std::process::id());
        }
        assert_eq!(pycsp::__private::fork_server_pid(), None);
    });
}

#[test]
fn after_the_fork_server_is_killed_processes_still_start_by_exec() {
    run_ignored("with_the_fork_server_killed", &[]);
}

#[test]
fn start_exec_turns_the_fork_server_off() {
    run_ignored("in_exec_mode", &[("PYCSP_START", "exec")]);
}

/// Whether `pid` is a child of this process that has not been reaped (a zombie or alive).
fn unreaped_child(pid: u32) -> bool {
    // SAFETY: waitid fills the siginfo it is given; WNOHANG | WNOWAIT neither waits nor reaps.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ) == 0
    }
}

/// Kills our child `pid` and waits until it is dead, without reaping it.
fn kill_unreaped(pid: u32) {
    // SAFETY: a signal to our own unreaped child; waitid with WNOWAIT leaves it waitable.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        );
        assert_eq!(r, 0);
    }
}

/// Run by the test below in a copy of this binary (no other test there takes the spare).
#[test]
#[ignore = "run by a_start_takes_the_process_the_fork_server_forked_ahead"]
fn with_a_spare() {
    watchdog::within(Duration::from_secs(60), &[] as &[&str], || {
        use pycsp::__private::fork_server_spare_pid as spare_pid;
        assert_eq!(spare_pid(), None, "a spare before any start");
        Parallel(own_pid()).unwrap();
        let spare = spare_pid().expect("no spare after a start");
        // It names itself once it runs (the notice comes as soon as it is forked).
        let named = |pid: u32| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
            comm.trim() == "pycsp-spare"
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !named(spare) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(
            named(spare),
            "the spare {spare} did not name itself pycsp-spare"
        );
        assert!(
            unreaped_child(spare),
            "the spare is not a child of the root"
        );
        // The next start is that process, and the server forks another.
        assert_eq!(Parallel(own_pid()).unwrap(), spare);
        let next = spare_pid().expect("no spare after the second start");
        assert_ne!(next, spare);
        // A spare that was killed: the next start reaps it and takes another.
        kill_unreaped(next);
        let started = Parallel(own_pid()).unwrap();
        assert_ne!(started, next);
        assert!(
            !unreaped_child(next),
            "the killed spare {next} was not reaped"
        );
        assert!(spare_pid().is_some());
    });
}

#[test]
fn a_start_takes_the_process_the_fork_server_forked_ahead() {
    run_ignored("with_a_spare", &[]);
}

/// Run by the test below in a copy of this binary (the spares it kills are that copy's).
#[test]
#[ignore = "run by when_every_spare_was_killed_a_start_still_forks"]
fn with_every_spare_killed() {
    watchdog::within(Duration::from_secs(60), &[] as &[&str], || {
        use pycsp::__private::{fork_server_pid, fork_server_spare_pids};
        Parallel(own_pid()).unwrap();
        let spares = fork_server_spare_pids();
        assert_eq!(spares.len(), 2, "two spares after a start: {spares:?}");
        let server = fork_server_pid().expect("no fork server");
        for &pid in &spares {
            kill_unreaped(pid);
        }
        // The start reaps the dead spares and takes one the server forks for it: the server
        // stays in use.
        let started = Parallel(own_pid()).unwrap();
        assert!(!spares.contains(&started), "{started} was killed");
        assert_eq!(fork_server_pid(), Some(server), "the server was given up");
        for pid in spares {
            assert!(
                !unreaped_child(pid),
                "the killed spare {pid} was not reaped"
            );
        }
        assert_eq!(
            fork_server_spare_pids().len(),
            2,
            "the spares were not made up again"
        );
    });
}

#[test]
fn when_every_spare_was_killed_a_start_still_forks() {
    run_ignored("with_every_spare_killed", &[]);
}

/// Run by the test below in a copy of this binary (the server it kills is that copy's).
#[test]
#[ignore = "run by the_spare_of_a_killed_fork_server_still_starts_and_later_starts_execute"]
fn with_a_spare_and_the_server_killed() {
    watchdog::within(Duration::from_secs(60), &[] as &[&str], || {
        Parallel(own_pid()).unwrap();
        let spare = pycsp::__private::fork_server_spare_pid().expect("no spare");
        let server = pycsp::__private::fork_server_pid().expect("no fork server");
        kill_unreaped(server);
        // The spare this process holds takes the next start. The server is given up once a
        // start finds it dead: at once, or, when a spare asked for before the kill was still
        // owed (two are kept), at the start that needs that one.
        assert_eq!(Parallel(own_pid()).unwrap(), spare);
        for _ in 0..2 {
            if pycsp::__private::fork_server_pid().is_none() {
                break;
            }
            Parallel(own_pid()).unwrap();
        }
        assert_eq!(pycsp::__private::fork_server_pid(), None);
        assert!(
            !unreaped_child(server),
            "the server {server} was not reaped"
        );
        assert!(!unreaped_child(spare), "the spare {spare} was not reaped");
        // Later starts execute the binary.
        assert_eq!(Parallel(parent_pid()).unwrap(), std::process::id());
        assert_eq!(pycsp::__private::fork_server_spare_pid(), None);
    });
}

#[test]
fn the_spare_of_a_killed_fork_server_still_starts_and_later_starts_execute() {
    run_ignored("with_a_spare_and_the_server_killed", &[]);
}

/// Run by the test below in a copy of this binary, whose standard output it reads.
#[test]
#[ignore = "run by what_a_forked_child_prints_with_c_stdio_is_flushed_when_it_ends"]
fn with_c_stdio() {
    Parallel(prints_with_c_stdio()).unwrap();
}

#[test]
fn what_a_forked_child_prints_with_c_stdio_is_flushed_when_it_ends() {
    let out = run_ignored("with_c_stdio", &[]);
    assert!(
        out.contains("printed by C stdio in a forked child"),
        "{out}"
    );
}

/// Runs the ignored test `name` alone in a copy of this binary, with `env`; it must pass.
/// Its standard output.
fn run_ignored(name: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", name, "--nocapture"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
    text.into_owned()
}

#[test]
fn a_process_gets_its_arguments_whole_whether_they_go_with_the_start_or_after_it() {
    // Up to 64 KiB of arguments go in the same message as a forked start's request; larger
    // ones are sent after it. Sizes around that bound, and far beyond it.
    watchdog::within(Duration::from_secs(60), &[] as &[&str], || {
        for len in [0, 1, (64 << 10) - 16, 64 << 10, (64 << 10) + 16, 3 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let sum = bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| (i as u64 + 1) * u64::from(b));
            let want = (len, sum.fold(0u64, u64::wrapping_add));
            assert_eq!(
                Parallel(sums(bytes)).unwrap(),
                want,
                "{len} bytes of arguments"
            );
        }
    });
}

/// Run by the test below in a copy of this binary (the spares it stops are that copy's).
#[test]
#[ignore = "run by a_start_whose_process_does_not_take_its_arguments_fails_naming_it"]
fn with_every_spare_stopped() {
    watchdog::within(Duration::from_secs(60), &[] as &[&str], || {
        use pycsp::__private::fork_server_spare_pids;
        Parallel(own_pid()).unwrap();
        let spares = fork_server_spare_pids();
        assert!(!spares.is_empty(), "no spare after a start");
        for &pid in &spares {
            // SAFETY: stopping a spare of this process's fork server (killed below).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        }
        // More than a socket holds: the start sends them after its request, to a process
        // that does not read them.
        let t = std::time::Instant::now();
        let started = Spawn(sums(vec![7; 1 << 20]));
        let took = t.elapsed();
        for &pid in &spares {
            // SAFETY: as above; the start reaped the one it killed, the runtime reaps others.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        eprintln!(
            "a start whose process is stopped: {:?} after {took:?}",
            started.as_ref().err()
        );
        let e = started.expect_err("the start went on with a process that took nothing");
        let text = e.to_string();
        assert!(
            text.contains("sums") && text.contains("arguments"),
            "{text}"
        );
        assert!(took < Duration::from_secs(5 + 3), "{took:?}");
    });
}

#[test]
fn a_start_whose_process_does_not_take_its_arguments_fails_naming_it() {
    run_ignored("with_every_spare_stopped", &[]);
}
