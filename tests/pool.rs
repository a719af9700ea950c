//! `Pool`: worker processes reused across calls, Python's `multiprocessing.Pool`.

use std::cell::Cell;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pycsp::{pool_fn, Error, Failure, Pool};

#[pool_fn]
fn square(x: u64) -> u64 {
    x * x
}

/// Takes a different time for different items, so that answers come back out of order.
#[pool_fn]
fn uneven(x: u64) -> u64 {
    if x % 5 == 0 {
        std::thread::sleep(Duration::from_millis(3));
    }
    x + 1
}

#[pool_fn]
fn add(a: u64, b: String) -> String {
    format!("{b}{a}")
}

#[pool_fn]
fn fragile(x: u64) -> u64 {
    if x == 13 {
        panic!("unlucky {x}");
    }
    x
}

/// Writes its pid to the FIFO at `path`, then waits to be killed.
#[pool_fn]
fn hang(path: String) -> u64 {
    let pid = std::process::id().to_string();
    std::fs::write(&path, pid).expect("write the pid into the fifo");
    loop {
        std::thread::park();
    }
}

/// A FIFO for a worker to say which process runs an item.
struct Fifo {
    path: String,
}

impl Fifo {
    fn new(tag: &str) -> Fifo {
        let path = std::env::temp_dir()
            .join(format!("pycsp-pool-{tag}-{}", std::process::id()))
            .display()
            .to_string();
        let _ = std::fs::remove_file(&path);
        let c = CString::new(path.clone()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        Fifo { path }
    }

    /// The pid a worker writes, waiting at most a minute for it.
    fn read_pid(&self) -> u32 {
        let c = CString::new(self.path.clone()).unwrap();
        // SAFETY: open reads a NUL-terminated path; a non-blocking open for reading succeeds
        // without a writer.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
        assert!(fd >= 0, "open the fifo");
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 60_000) };
        assert_eq!(n, 1, "the worker wrote its pid within a minute");
        // The pid is there; read on until the worker closes its end (it does right after
        // writing), blocking: a non-blocking read between its write and its close would fail
        // with EAGAIN.
        // SAFETY: fcntl on the descriptor just opened, changing only its flags.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_RDONLY) }, 0);
        // SAFETY: fd was just opened and is owned by nothing else.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s.trim().parse().expect("a pid")
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn map_returns_results_in_the_order_of_the_items_with_any_chunksize() {
    let pool = Pool::new(3).unwrap();
    let want: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..1000).unwrap(), want);
    for c in [1, 7, 1000, 5000] {
        assert_eq!(
            pool.chunksize(c).map(square, 0..1000).unwrap(),
            want,
            "chunksize {c}"
        );
    }
    assert_eq!(pool.map(square, Vec::new()).unwrap(), Vec::<u64>::new());
    let want: Vec<u64> = (0..200u64).map(|x| x + 1).collect();
    assert_eq!(pool.chunksize(3).map(uneven, 0..200).unwrap(), want);
}

#[test]
fn starmap_takes_tuples_of_parameters_and_the_function_can_still_be_called() {
    let pool = Pool::new(2).unwrap();
    let got = pool
        .starmap(add, (0..5).map(|i| (i, "n".to_string())))
        .unwrap();
    assert_eq!(got, ["n0", "n1", "n2", "n3", "n4"]);
    assert_eq!(square(7), 49);
    assert_eq!(add(1, "x".into()), "x1");
}

#[test]
fn imap_reads_its_input_only_as_workers_need_it() {
    let pool = Pool::new(2).unwrap();
    let pulled = Rc::new(Cell::new(0u64));
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| counter.set(counter.get() + 1));
    // Ordered over an endless input: it returns, so it read only part of it (how much
    // depends on timing: results that come before an earlier one is done wait in order,
    // as in Python).
    let mut it = pool.imap(square, endless).unwrap();
    let first: Vec<u64> = it.by_ref().take(5).map(Result::unwrap).collect();
    assert_eq!(first, [0, 1, 4, 9, 16]);
    drop(it);
    // Unordered, every answer is handed out as it comes: five results, and at most two
    // chunks of one item held by each of the two workers beyond them (plus the one item a
    // fill may take ahead).
    pulled.set(0);
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| counter.set(counter.get() + 1));
    let mut it = pool.imap_unordered(square, endless).unwrap();
    assert_eq!(it.by_ref().take(5).count(), 5);
    assert!(pulled.get() <= 5 + 2 * 2 + 1, "pulled {}", pulled.get());
    drop(it);
    // The pool goes on after an abandoned imap (its answers still owed are dropped).
    assert_eq!(pool.map(square, 0..4).unwrap(), [0, 1, 4, 9]);
}

#[test]
fn imap_unordered_yields_every_result_once() {
    let pool = Pool::new(3).unwrap();
    let mut got: Vec<u64> = pool
        .imap_unordered(uneven, 0..300)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=300).collect::<Vec<u64>>());
    let mut got: Vec<u64> = pool
        .chunksize(8)
        .imap_unordered(square, 0..100)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn map_async_returns_at_once_and_get_waits() {
    let pool = Pool::new(2).unwrap();
    let r = pool.chunksize(4).map_async(uneven, 0..100).unwrap();
    assert!(r.wait(Duration::from_secs(60)), "done within a minute");
    assert!(r.ready());
    assert_eq!(r.get().unwrap(), (1..=100).collect::<Vec<u64>>());
    let r = pool.starmap_async(add, [(1, "a".to_string())]).unwrap();
    assert_eq!(r.get_timeout(Duration::from_secs(60)).unwrap(), ["a1"]);
    // A timeout too large for the clock means no deadline (it panicked on the overflow).
    let r = pool.starmap_async(add, [(2, "b".to_string())]).unwrap();
    assert_eq!(r.get_timeout(Duration::MAX).unwrap(), ["b2"]);
}

#[test]
fn the_pool_is_reused_across_calls() {
    let pool = Pool::new(2).unwrap();
    let before = pool.pids();
    assert_eq!(before.len(), 2);
    for n in 0..20u64 {
        assert_eq!(pool.map(square, [n]).unwrap(), [n * n]);
    }
    assert_eq!(pool.pids(), before, "the same two workers ran every call");
}

#[test]
fn a_panicking_worker_fails_the_call_naming_it_and_the_item_and_is_replaced() {
    let pool = Pool::new(2).unwrap();
    let before = pool.pids();
    let err = pool.chunksize(1).map(fragile, 0..40).unwrap_err();
    let Error::PoolWorker {
        worker,
        pid,
        function,
        item,
        items,
        failure,
    } = &err
    else {
        panic!("expected a PoolWorker error, got {err:?}");
    };
    assert_eq!(*item, 13);
    assert_eq!(*items, (13, 14));
    assert!(function.ends_with("fragile"), "{function}");
    assert_eq!(*pid, before[*worker]);
    assert!(
        matches!(failure, Failure::Panicked(m) if m.contains("unlucky 13")),
        "{failure:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("fragile") && text.contains("item 13"),
        "{text}"
    );
    // With chunks the item is still the one that panicked, within its chunk.
    let err = pool.chunksize(10).map(fragile, 0..40).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PoolWorker {
                item: 13,
                items: (10, 20),
                ..
            }
        ),
        "{err:?}"
    );
    // The pool goes on, with a new worker in place of each that panicked.
    assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
    let after = pool.pids();
    assert_eq!(after.len(), 2);
    assert!(!after.contains(pid), "{pid} was replaced: {after:?}");
}

#[test]
fn a_killed_worker_fails_the_call_naming_it_and_is_replaced() {
    let pool = Pool::new(1).unwrap();
    let fifo = Fifo::new("kill");
    let r = pool.map_async(hang, [fifo.path.clone()]).unwrap();
    let pid = fifo.read_pid();
    assert_eq!(pool_pid_of(&pool), None, "the pool is busy with the call");
    // SAFETY: kill sends a signal to our worker, which is running the item.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    match r.get_timeout(Duration::from_secs(60)) {
        Err(Error::PoolWorker {
            worker: 0,
            pid: p,
            function,
            item: 0,
            items: (0, 1),
            failure: Failure::Signaled(libc::SIGKILL),
        }) => {
            assert_eq!(p, pid);
            assert!(function.ends_with("hang"), "{function}");
        }
        other => panic!("expected the killed worker named, got {other:?}"),
    }
    assert_eq!(pool.map(square, [3, 4]).unwrap(), [9, 16]);
    let now = pool.pids();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pid, "a new worker took the killed one's place");
}

/// The pids of the pool, or `None` while a call holds it.
fn pool_pid_of(pool: &Pool) -> Option<Vec<u32>> {
    Some(pool.pids()).filter(|p| !p.is_empty())
}

#[test]
fn dropping_a_pool_stops_workers_that_never_finish() {
    let pool = Pool::new(2).unwrap();
    let fifo = Fifo::new("drop");
    let r = pool.map_async(hang, [fifo.path.clone()]).unwrap();
    let pid = fifo.read_pid();
    let t = Instant::now();
    drop(pool);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(30), "the drop took {took:?}");
    assert!(r.get().is_err(), "the call ended with the pool");
    // The worker is gone: signal 0 finds no such process (it was reaped by the drop).
    // SAFETY: kill with signal 0 only checks whether the process exists.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, 0) }, -1);
}

#[test]
fn a_call_from_inside_an_imap_of_the_same_pool_fails_instead_of_waiting_for_itself() {
    let pool = Pool::new(1).unwrap();
    let mut it = pool.imap(square, 0..3).unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 0);
    match pool.map(square, [1]) {
        Err(Error::Pool(m)) => assert!(m.contains("imap"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(it.map(Result::unwrap).collect::<Vec<_>>(), [1, 4]);
}

#[test]
fn close_lets_the_workers_finish_and_a_pool_needs_one_process() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(square, [2]).unwrap(), [4]);
    pool.close().unwrap();
    assert!(matches!(Pool::new(0), Err(Error::Pool(_))));
}
