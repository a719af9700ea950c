//! Alternation between threads of one process (same shared-memory code as across processes).

use std::thread;
use std::time::{Duration, Instant};

use pycsp_core::{Alternation, Channel, ChannelError, ChannelIn, ChannelOut, WriteTimeoutError};

#[test]
fn pri_select_takes_the_first_ready_guard_in_order() {
    let a = Channel::<u8>::named_buffered("pri-a", 2).unwrap();
    let b = Channel::<u8>::named_buffered("pri-b", 2).unwrap();
    let (ar, br) = (a.reader(), b.reader());
    a.writer().write(1).unwrap();
    b.writer().write(2).unwrap();
    let c = Alternation::new()
        .input(&br, |v| v)
        .input(&ar, |v| v)
        .pri_select()
        .unwrap();
    assert_eq!((c.index, c.value), (0, 2));
}

#[test]
fn skip_fires_when_nothing_else_is_ready_and_timeout_fires_after_its_duration() {
    let a = Channel::<u8>::named("skip-a").unwrap();
    let (_w, r) = (a.writer(), a.reader());
    let c = Alternation::new()
        .input(&r, |_| "input")
        .skip(|| "skip")
        .pri_select()
        .unwrap();
    assert_eq!(c.value, "skip");
    let start = Instant::now();
    let c = Alternation::new()
        .input(&r, |_| "input")
        .timeout(Duration::from_millis(30), || "timeout")
        .pri_select()
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(c.value, "timeout");
    assert!(
        waited >= Duration::from_millis(30) && waited < Duration::from_millis(200),
        "{waited:?}"
    );
}

#[test]
fn an_output_guard_on_rendezvous_writes_only_when_a_reader_takes_it() {
    let ch = Channel::<u32>::named("out-guard").unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    // No reader: the output guard is not ready, skip fires, nothing was written.
    let c = Alternation::new()
        .output(&w, 5, || "sent")
        .skip(|| "skip")
        .pri_select()
        .unwrap();
    assert_eq!(c.value, "skip");
    assert_eq!(
        r.read_timeout(Duration::from_millis(20)),
        Err(ChannelError::Timeout)
    );
    // A reader blocked in read: the output guard fires and the reader gets the value.
    let t = thread::spawn(move || r.read());
    let c = Alternation::new()
        .output(&w, 7, || "sent")
        .pri_select()
        .unwrap();
    assert_eq!(c.value, "sent");
    assert_eq!(t.join().unwrap(), Ok(7));
}

#[test]
fn selecting_readers_and_selecting_writers_meet_on_rendezvous_channels() {
    let ch = Channel::<u64>::named("both-select").unwrap();
    let other = Channel::<u64>::named("both-select-other").unwrap();
    let (w, r, ow, or) = (ch.writer(), ch.reader(), other.writer(), other.reader());
    let n = 2000u64;
    let writer = thread::spawn(move || {
        for i in 0..n {
            let c = Alternation::new()
                .output(&w, i, || ())
                .pri_select()
                .unwrap();
            assert_eq!(c.index, 0);
        }
        drop(ow);
    });
    let mut got = Vec::new();
    while got.len() < n as usize {
        let c = Alternation::new()
            .input(&or, |v| v)
            .input(&r, |v| v)
            .alt_select()
            .unwrap();
        assert_eq!(c.index, 1);
        got.push(c.value);
    }
    writer.join().unwrap();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

#[test]
fn a_poisoned_guard_fails_the_select_and_retired_guards_are_skipped() {
    let p = Channel::<u8>::named("alt-poison").unwrap();
    let q = Channel::<u8>::named_buffered("alt-retired", 1).unwrap();
    let (pr, qr) = (p.reader(), q.reader());
    let qw = q.writer();
    qw.write(3).unwrap();
    qw.retire();
    let _pw = p.writer();
    // q is retired but still holds a message: it is read first.
    let c = Alternation::new()
        .input(&pr, |v| v)
        .input(&qr, |v| v)
        .pri_select()
        .unwrap();
    assert_eq!(c.value, 3);
    // Drained and retired: skipped while p remains; p poisoned: the select fails.
    let t = {
        let p = p.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            p.poison();
        })
    };
    let r = Alternation::new()
        .input(&pr, |v| v)
        .input(&qr, |v| v)
        .pri_select();
    t.join().unwrap();
    assert_eq!(r.unwrap_err(), ChannelError::Poisoned);
    // All guards retired: Retired.
    let s = Channel::<u8>::named("alt-all-retired").unwrap();
    let sr = s.reader();
    s.writer().retire();
    assert_eq!(
        Alternation::new()
            .input(&sr, |v| v)
            .input(&qr, |v| v)
            .pri_select()
            .unwrap_err(),
        ChannelError::Retired
    );
}

#[test]
fn fair_select_chooses_every_ready_guard_over_many_rounds() {
    let chans: Vec<_> = (0..3)
        .map(|i| Channel::<u8>::named_buffered(&format!("fair-{i}"), 64).unwrap())
        .collect();
    let readers: Vec<_> = chans.iter().map(|c| c.reader()).collect();
    let writers: Vec<_> = chans.iter().map(|c| c.writer()).collect();
    let mut counts = [0usize; 3];
    for _ in 0..30 {
        for w in &writers {
            while w.write_timeout(0, Duration::ZERO).is_ok() {}
        }
        let c = Alternation::new()
            .input(&readers[0], |_| ())
            .input(&readers[1], |_| ())
            .input(&readers[2], |_| ())
            .fair_select()
            .unwrap();
        counts[c.index] += 1;
    }
    assert_eq!(counts, [10, 10, 10]);
}

/// Runs `f` on another thread and fails if it has not returned within `limit` (the thread is
/// left behind: a hang becomes a failure, not a stuck suite).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("hung: no result within {limit:?}"))
}

#[test]
fn a_select_never_matches_its_own_input_and_output_guards_and_its_timeout_fires() {
    let (index, waited) = within(Duration::from_secs(10), || {
        let ch = Channel::<u32>::named("self-match").unwrap();
        let (w, r) = (ch.writer(), ch.reader());
        let start = Instant::now();
        let c = Alternation::new()
            .input(&r, |_| ())
            .output(&w, 1, || ())
            .timeout(Duration::from_millis(50), || ())
            .pri_select()
            .unwrap();
        (c.index, start.elapsed())
    });
    assert_eq!(
        index, 2,
        "only the timeout can fire: nobody else is on the channel"
    );
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
}

#[test]
fn a_skip_or_timeout_guard_never_hides_that_every_channel_guard_retired() {
    let ch = Channel::<u8>::named_buffered("retired-with-skip", 2).unwrap();
    let r = ch.reader();
    ch.writer().retire();
    assert_eq!(r.read(), Err(ChannelError::Retired));
    let skip = Alternation::new()
        .input(&r, |_| "input")
        .skip(|| "skip")
        .pri_select();
    assert_eq!(skip.unwrap_err(), ChannelError::Retired);
    let start = Instant::now();
    let timeout = Alternation::new()
        .input(&r, |_| "input")
        .timeout(Duration::from_secs(5), || "timeout")
        .pri_select();
    assert_eq!(timeout.unwrap_err(), ChannelError::Retired);
    assert!(start.elapsed() < Duration::from_secs(1));
    // An output guard whose readers all retired, likewise.
    let out = Channel::<u8>::named("retired-readers-with-skip").unwrap();
    let w = out.writer();
    out.reader().retire();
    let skip = Alternation::new()
        .output(&w, 1, || "output")
        .skip(|| "skip")
        .pri_select();
    assert_eq!(skip.unwrap_err(), ChannelError::Retired);
}

#[test]
fn a_reporting_guard_on_an_ended_channel_is_ready_and_reports_it_before_skip() {
    let live = Channel::<u8>::named("report-live").unwrap();
    let gone = Channel::<u8>::named_buffered("report-gone", 2).unwrap();
    let (_lw, lr) = (live.writer(), live.reader());
    let gr = gone.reader();
    let gw = gone.writer();
    gw.write(9).unwrap();
    gw.retire();
    let select = || {
        Alternation::new()
            .input_result(&lr, |r| r)
            .input_result(&gr, |r| r)
            .skip(|| Ok(0))
            .pri_select()
            .unwrap()
    };
    // Retired but not drained: the message first.
    let c = select();
    assert_eq!((c.index, c.value), (1, Ok(9)));
    // Drained: the guard fires with Retired, though another channel is live and skip is there.
    for _ in 0..10 {
        let c = select();
        assert_eq!((c.index, c.value), (1, Err(ChannelError::Retired)));
    }
    // Poisoned: the guard fires with Poisoned.
    live.poison();
    let c = Alternation::new()
        .input_result(&lr, |r| r)
        .skip(|| Ok(0))
        .pri_select()
        .unwrap();
    assert_eq!((c.index, c.value), (0, Err(ChannelError::Poisoned)));
    // An output guard whose readers retired.
    let out = Channel::<u8>::named("report-out").unwrap();
    let (ow, _keep) = (out.writer(), out.writer());
    out.reader().retire();
    let c = Alternation::new()
        .output_result(&ow, 1, |r| r)
        .timeout(Duration::from_secs(5), || Ok(()))
        .pri_select()
        .unwrap();
    assert_eq!((c.index, c.value), (0, Err(ChannelError::Retired)));
}

#[test]
fn input_and_output_guards_pass_over_a_retired_channel_while_another_is_live() {
    // The server pattern: a client that retired is passed over, the others are served.
    let a = Channel::<u8>::named("pass-over-a").unwrap();
    let b = Channel::<u8>::named("pass-over-b").unwrap();
    let (ar, br) = (a.reader(), b.reader());
    a.writer().retire();
    let bw = b.writer();
    let t = thread::spawn(move || bw.write(5));
    let c = within(Duration::from_secs(10), move || {
        Alternation::new()
            .input(&ar, |v| v)
            .input(&br, |v| v)
            .pri_select()
            .map(|c| (c.index, c.value))
    });
    assert_eq!(c, Ok((1, 5)));
    assert_eq!(t.join().unwrap(), Ok(()));
}

#[test]
fn alt_select_chooses_uniformly_among_ready_guards() {
    // Two empty channels before two always-ready ones: a random start index would favour the
    // first ready guard (about 3 to 1).
    let chans: Vec<_> = (0..4)
        .map(|i| Channel::<u8>::named_buffered(&format!("uniform-{i}"), 4).unwrap())
        .collect();
    let readers: Vec<_> = chans.iter().map(|c| c.reader()).collect();
    let writers: Vec<_> = chans.iter().map(|c| c.writer()).collect();
    let mut counts = [0u32; 4];
    for _ in 0..10_000 {
        for w in &writers[2..] {
            while w.write_timeout(1, Duration::ZERO).is_ok() {}
        }
        let mut alt = Alternation::new();
        for r in &readers {
            alt = alt.input(r, |_| ());
        }
        counts[alt.alt_select().unwrap().index] += 1;
    }
    assert_eq!(counts[0] + counts[1], 0);
    // 5000 expected, standard deviation 50: 4500..5500 fails by chance about once in 10^23.
    assert!((4500..=5500).contains(&counts[2]), "{counts:?}");
}

#[test]
fn alt_select_chooses_uniformly_between_two_output_guards_on_one_rendezvous_channel() {
    let ch = Channel::<u8>::named("uniform-out").unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    let n = 200;
    let reader = thread::spawn(move || (0..n).map(|_| r.read().unwrap()).collect::<Vec<u8>>());
    let mut counts = [0u32; 2];
    for _ in 0..n {
        let c = Alternation::new()
            .output(&w, 0, || 0)
            .output(&w, 1, || 1)
            .alt_select()
            .unwrap();
        counts[c.value] += 1;
    }
    let got = reader.join().unwrap();
    assert_eq!(got.iter().filter(|&&v| v == 1).count() as u32, counts[1]);
    // 100 expected, standard deviation about 7.
    assert!((50..=150).contains(&counts[0]), "{counts:?}");
}

#[test]
fn fair_select_chooses_the_least_recently_chosen_channel_as_the_guard_list_changes() {
    // Four always-ready channels; each round offers a different subset, in a different order
    // (a butler's guard list grows and shrinks with the philosophers seated).
    let chans: Vec<_> = (0..4)
        .map(|i| Channel::<u8>::named_buffered(&format!("fair-changing-{i}"), 4).unwrap())
        .collect();
    let readers: Vec<_> = chans.iter().map(|c| c.reader()).collect();
    let writers: Vec<_> = chans.iter().map(|c| c.writer()).collect();
    let mut last_chosen = [0u64; 4]; // round + 1 of the last choice, 0 = never
    let mut passed_over = [0u32; 4]; // rounds offered and not chosen since last chosen
    for round in 0..400u64 {
        for w in &writers {
            while w.write_timeout(1, Duration::ZERO).is_ok() {}
        }
        let offered: Vec<usize> = (0..4)
            .map(|j| (j + round as usize) % 4)
            .filter(|&j| (round * 7 + j as u64) % 5 != 0)
            .collect();
        let mut alt = Alternation::new();
        for &j in &offered {
            alt = alt.input(&readers[j], move |_| j);
        }
        let chosen = alt.fair_select().unwrap().value;
        let least = offered.iter().map(|&j| last_chosen[j]).min().unwrap();
        assert_eq!(
            last_chosen[chosen], least,
            "round {round}: chose channel {chosen} of {offered:?}, last chosen {last_chosen:?}"
        );
        last_chosen[chosen] = round + 1;
        for &j in &offered {
            passed_over[j] = if j == chosen { 0 } else { passed_over[j] + 1 };
            // Each other channel can be chosen before it at most once: no starvation.
            assert!(
                passed_over[j] <= 3,
                "round {round}: channel {j} passed over 4 times"
            );
        }
    }
}

#[test]
fn a_rendezvous_write_that_nobody_takes_by_its_deadline_is_withdrawn_and_times_out() {
    let ch = Channel::<u32>::named("write-timeout-rv").unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    let (w, waited, r) = within(Duration::from_secs(10), move || {
        let start = Instant::now();
        assert_eq!(
            w.write_timeout(1, Duration::from_millis(200)),
            Err(WriteTimeoutError::Timeout(1))
        );
        (w, start.elapsed(), r)
    });
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    // Withdrawn: no reader ever gets it, and the channel works on.
    assert_eq!(
        r.read_timeout(Duration::from_millis(50)),
        Err(ChannelError::Timeout)
    );
    let t = thread::spawn(move || w.write(2));
    assert_eq!(r.read(), Ok(2));
    assert_eq!(t.join().unwrap(), Ok(()));
}

#[test]
fn withdrawn_rendezvous_writes_of_large_messages_never_arrive_and_the_channel_works_on() {
    let ch = Channel::<Vec<u8>>::named("write-timeout-block").unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    let (w, r) = within(Duration::from_secs(10), move || {
        for _ in 0..100 {
            assert_eq!(
                w.write_timeout(vec![7; 4000], Duration::from_millis(1)),
                Err(WriteTimeoutError::Timeout(vec![7; 4000]))
            );
        }
        (w, r)
    });
    assert_eq!(
        r.read_timeout(Duration::from_millis(20)),
        Err(ChannelError::Timeout)
    );
    let t = thread::spawn(move || w.write(vec![1; 4000]));
    assert_eq!(r.read(), Ok(vec![1; 4000]));
    assert_eq!(t.join().unwrap(), Ok(()));
}

#[test]
fn a_large_message_that_carries_a_channel_end_is_sent() {
    let data = Channel::<u8>::named_buffered("end-in-large-data", 2).unwrap();
    let carrier = Channel::<(ChannelOut<u8>, String)>::named("end-in-large-carrier").unwrap();
    let (cw, cr) = (carrier.writer(), carrier.reader());
    let (dr, dw) = (data.reader(), data.writer());
    let t = thread::spawn(move || {
        let (end, text) = cr.read_timeout(Duration::from_secs(10))?;
        end.write(text.len() as u8)
    });
    // Longer than a slot's inline bytes: the first, inline encoding attempt fails.
    let sent = cw.write((dw, "x".repeat(200)));
    assert_eq!(sent, Ok(()));
    assert_eq!(t.join().unwrap(), Ok(()));
    assert_eq!(dr.read(), Ok(200));
}

#[test]
fn an_unchosen_output_guard_releases_the_ends_its_value_carries() {
    let data = Channel::<u8>::named_buffered("unchosen-end-data", 4).unwrap();
    let carrier = Channel::<ChannelIn<u8>>::named("unchosen-end-carrier").unwrap();
    let (cw, _cr) = (carrier.writer(), carrier.reader());
    let dw = data.writer();
    // Nobody reads the carrier: skip fires, and the reading end in the guard is dropped.
    let c = Alternation::new()
        .output(&cw, data.reader(), || "sent")
        .skip(|| "skip")
        .pri_select()
        .unwrap();
    assert_eq!(c.value, "skip");
    // No reader is left on `data`: a write must fail, not vanish into the buffer.
    assert_eq!(dw.write(1), Err(ChannelError::Retired));
}
