//! pycsp's benchmark: one run, one machine, pycsp against the physical limit and the tools a
//! user would pick instead. Prints a table of medians with their spread and the ratios that
//! the targets are stated in, and writes `target/bench/results.json` and
//! `target/bench/chart.svg`.
//!
//! Run: `cargo run --release -p pycsp-bench` (about 2-3 minutes on 2 cores), or with
//! `--quick` for a smoke run.

mod chart;
mod peers;
mod pycsp_rows;
mod raw;
mod stats;

use std::collections::BTreeMap;

use stats::{fmt, measure, Row};

struct Target {
    what: &'static str,
    value: f64,
    goal: &'static str,
    met: bool,
}

fn main() {
    if std::env::var_os(raw::EXIT_AT_ONCE).is_some() {
        return; // a copy started by the fork + exec row
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let what = args
            .get(i + 1)
            .expect("--only needs the text of a row name");
        stats::ONLY.set(what.clone()).unwrap();
    }
    let (t, k) = if quick { (3, 1u64) } else { (7, 5u64) };
    let mut rows: Vec<Row> = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "pycsp benchmark ({} mode, {cores} cores, {t} trials per row)",
        if quick { "quick" } else { "full" }
    );

    eprintln!("pairs whose ratio is a target, in alternating trials:");
    let (rv_row, spin_row, pair_row, rv_over_spin, rv_over_pair) = stats::measure_three(
        ("pycsp", "rendezvous channel pair (RTT)", "ns", || {
            pycsp_rows::round_trip(0, 50_000 * k)
        }),
        (
            "limit",
            "raw shared-memory ping-pong, spinning (RTT)",
            "ns",
            || raw::ping_pong(200_000 * k as u32, false),
        ),
        (
            "limit",
            "raw rendezvous pair, two spinning flags (RTT)",
            "ns",
            || raw::rendezvous_pair(200_000 * k as u32),
        ),
        t,
    );
    let (thr_row, cb_row, thr_over_cb) = stats::measure_pair(
        ("pycsp", "buffered u64 one way", "msg/s", || {
            pycsp_rows::throughput(2_000_000 * k)
        }),
        (
            "peers",
            "crossbeam bounded(1024) u64, two threads",
            "msg/s",
            || peers::crossbeam_throughput(5_000_000 * k),
        ),
        t,
    );
    let (mib_row, limit_row, mib_over_limit) = stats::measure_pair(
        ("pycsp", "1 MiB messages", "GB/s", || {
            pycsp_rows::bandwidth(1 << 20, 256 << 20)
        }),
        (
            "limit",
            "1 MiB through shared memory, 2 processes",
            "GB/s",
            || raw::handover(1 << 20, 256 << 20),
        ),
        t,
    );
    let (ct_row, raw_ct_row, ct_over_raw) = stats::measure_pair(
        ("pycsp", "commstime", "us/comm", || {
            pycsp_rows::commstime(20_000 * k)
        }),
        (
            "limit",
            "raw commstime, four processes on flags, yielding",
            "us/comm",
            || raw::commstime(100_000 * k as u32),
        ),
        t,
    );
    let (sj_row, fork_row, sj_over_fork) = stats::measure_pair(
        (
            "pycsp",
            "start and join 1 process, one at a time",
            "ms/process",
            || pycsp_rows::start_join(30 * k as usize),
        ),
        (
            "limit",
            "fork + waitpid, the child exits at once",
            "ms/process",
            || raw::fork_wait(200 * k as usize),
        ),
        t,
    );

    eprintln!("the limit:");
    rows.push(spin_row);
    rows.push(pair_row);
    rows.push(measure(
        "limit",
        "raw shared-memory ping-pong, futex (RTT)",
        "ns",
        t,
        || raw::ping_pong(5_000 * k as u32, true),
    ));
    for (name, size) in [("memcpy 64 KiB", 64 << 10), ("memcpy 1 MiB", 1 << 20)] {
        rows.push(measure("limit", name, "GB/s", t, || {
            raw::memcpy(size, 256 << 20)
        }));
    }
    rows.push(raw_ct_row);
    rows.push(limit_row);
    rows.push(fork_row);
    rows.push(measure(
        "limit",
        "fork + exec of this binary + waitpid",
        "ms/process",
        t,
        || raw::fork_exec_wait(20 * k as usize),
    ));
    for procs in [1, cores] {
        rows.push(measure(
            "limit",
            &format!("primes < 1e6, {procs} proc., no communication"),
            "s",
            t,
            || raw::primes_limit(procs, 1_000_000, 2_000),
        ));
    }

    eprintln!("pycsp, shared memory:");
    rows.push(rv_row);
    rows.push(measure(
        "pycsp",
        "buffered channel pair (RTT)",
        "ns",
        t,
        || pycsp_rows::round_trip(64, 50_000 * k),
    ));
    rows.push(thr_row);
    rows.push(measure("pycsp", "64 KiB messages", "GB/s", t, || {
        pycsp_rows::bandwidth(64 << 10, 128 << 20)
    }));
    rows.push(mib_row);
    rows.push(measure(
        "pycsp",
        "1 MiB SharedBlock, ownership moves (zero-copy)",
        "GB/s",
        t,
        || pycsp_rows::zero_copy(1 << 20, 2 << 30),
    ));
    rows.push(measure(
        "pycsp",
        "4 writers x 4 readers, one channel",
        "msg/s",
        t,
        || pycsp_rows::any_to_any(250_000 * k),
    ));
    rows.push(measure(
        "pycsp",
        "1 writer x 3 readers, buffered(1), 4 processes",
        "msg/s",
        t,
        || pycsp_rows::oversubscribed(50_000 * k),
    ));
    rows.push(ct_row);
    for (label, capacity) in [("buffered(16)", 16), ("rendezvous", 0)] {
        for workers in [1, cores] {
            rows.push(measure(
                "pycsp",
                &format!("primes < 1e6, {workers} worker(s), {label} jobs"),
                "s",
                t,
                || pycsp_rows::primes(workers, capacity),
            ));
        }
    }
    for workers in [1, cores] {
        rows.push(measure(
            "pycsp",
            &format!("fill 50M f64 SharedArray in place, {workers} proc."),
            "s",
            t,
            || pycsp_rows::array_fill(50_000_000, workers),
        ));
    }
    rows.push(sj_row);
    rows.push(measure(
        "pycsp",
        "spawn and join 100 processes",
        "ms/process",
        t,
        || pycsp_rows::spawn(100),
    ));
    for (name, chunksize) in [
        ("Pool.map, 100,000 tiny items, default chunks", None),
        ("Pool.map, 100,000 tiny items, chunksize 1", Some(1)),
    ] {
        rows.push(measure("pycsp", name, "items/s", t, || {
            pycsp_rows::pool_map(cores, 100_000, chunksize)
        }));
    }
    let (rss, pss) = pycsp_rows::idle_process_memory();
    rows.push(measure("pycsp", "idle process, resident", "KiB", 1, || rss));
    rows.push(measure(
        "pycsp",
        "idle process, proportional (PSS)",
        "KiB",
        1,
        || pss,
    ));
    rows.push(measure(
        "pycsp",
        "one buffered(64) channel, shared memory",
        "bytes",
        1,
        || pycsp_rows::channel_bytes(64),
    ));

    eprintln!("channels with a life (made and freed while the network runs):");
    rows.push(measure("pycsp", "channel create + drop", "us", t, || {
        pycsp_rows::create_drop(20_000 * k)
    }));
    rows.push(measure(
        "peers",
        "crossbeam bounded(16) create + drop",
        "us",
        t,
        || peers::crossbeam_create_drop(200_000 * k),
    ));
    rows.push(measure(
        "pycsp",
        "request/reply, a reply channel per request",
        "req/s",
        t,
        || pycsp_rows::reply_per_request(10_000 * k),
    ));
    rows.push(measure(
        "pycsp",
        "request/reply, one reply channel per client",
        "req/s",
        t,
        || pycsp_rows::reply_per_client(10_000 * k),
    ));
    let many = if quick { 100_000 } else { 1_000_000 };
    if stats::wanted(&format!("{many} channels")) {
        let (before, after) = pycsp_rows::many_channels(many);
        for (i, what) in [
            "shared memory allocated",
            "shared memory resident",
            "process RSS",
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("{many} channels made and freed: {what}, before -> after");
            eprintln!("  {name:<52} {:.3} -> {:.3} MiB", before[i], after[i]);
            rows.push(measure(
                "pycsp",
                &format!("{name} (after)"),
                "MiB",
                1,
                || after[i],
            ));
        }
    }

    eprintln!("pycsp, sockets (echo, sink or writer placed by the launcher {{cmd}}):");
    // (label, rendezvous RTT / raw Unix socket RTT, buffered(16) RTT / raw Unix socket RTT,
    // remote writer / raw Unix socket one way, remote reader / raw Unix socket one way),
    // paired.
    let mut socket_pairs: Vec<(&'static str, f64, f64, f64, f64)> = Vec::new();
    let mut mib_tcp_over_raw = f64::NAN;
    let mut tcp_over_raw_tcp = f64::NAN;
    let mut local_over_raw_rendezvous = f64::NAN;
    for (socket, label) in [
        (pycsp_rows::Socket::Local, "local socket"),
        (pycsp_rows::Socket::Tcp, "TCP loopback"),
    ] {
        let rt_name = format!("{label}: rendezvous channel pair (RTT)");
        let uds_name = format!("Unix domain socket (RTT), paired with {label}");
        let mut rt_f = || pycsp_rows::socket_round_trip(socket, 0, 2_000 * k);
        let mut uds_f = || peers::uds_rtt(20_000 * k);
        let (rt, uds_rt, rt_ratio) = if let pycsp_rows::Socket::Tcp = socket {
            // A third row in the same alternation: a raw TCP loopback round trip, the floor
            // under pycsp's own TCP round trip (the target pairs it with the Unix socket's).
            let (rt, uds_rt, raw_rt, rt_ratio, over_raw) = stats::measure_three(
                ("sockets", &rt_name, "ns", &mut rt_f),
                ("peers", &uds_name, "ns", &mut uds_f),
                ("limit", "raw TCP loopback, 8 bytes (RTT)", "ns", || {
                    raw::tcp_rtt(20_000 * k)
                }),
                t,
            );
            rows.push(raw_rt);
            tcp_over_raw_tcp = over_raw;
            (rt, uds_rt, rt_ratio)
        } else {
            // A third row in the same alternation: the least a rendezvous pair does over a
            // Unix socket per channel (each message confirmed, as pycsp's), the floor of
            // pycsp's wire design under its local round trip.
            let (rt, uds_rt, raw_rt, rt_ratio, over_raw) = stats::measure_three(
                ("sockets", &rt_name, "ns", &mut rt_f),
                ("peers", &uds_name, "ns", &mut uds_f),
                (
                    "limit",
                    "raw rendezvous pair, a Unix socket per channel (RTT)",
                    "ns",
                    || raw::uds_rendezvous_rtt(20_000 * k),
                ),
                t,
            );
            rows.push(raw_rt);
            local_over_raw_rendezvous = over_raw;
            (rt, uds_rt, rt_ratio)
        };
        let (brt, buds_rt, brt_ratio) = stats::measure_pair(
            (
                "sockets",
                &format!("{label}: buffered(16) channel pair (RTT)"),
                "ns",
                || pycsp_rows::socket_round_trip(socket, 16, 2_000 * k),
            ),
            (
                "peers",
                &format!("Unix domain socket (RTT), paired with {label} buffered"),
                "ns",
                || peers::uds_rtt(20_000 * k),
            ),
            t,
        );
        let (thr, uds_thr, thr_ratio) = stats::measure_pair(
            (
                "sockets",
                &format!("{label}: buffered u64 one way, remote writer"),
                "msg/s",
                || pycsp_rows::socket_throughput_from_remote(socket, 200_000 * k),
            ),
            (
                "peers",
                &format!("Unix domain socket one way, paired with {label}"),
                "msg/s",
                || peers::uds_throughput(500_000 * k),
            ),
            t,
        );
        let (rthr, ruds_thr, rthr_ratio) = stats::measure_pair(
            (
                "sockets",
                &format!("{label}: buffered u64 one way, remote reader"),
                "msg/s",
                || pycsp_rows::socket_throughput(socket, 200_000 * k),
            ),
            (
                "peers",
                &format!("Unix domain socket one way, paired with {label} reader"),
                "msg/s",
                || peers::uds_throughput(500_000 * k),
            ),
            t,
        );
        rows.extend([rt, uds_rt, brt, buds_rt, thr, uds_thr, rthr, ruds_thr]);
        socket_pairs.push((label, rt_ratio, brt_ratio, thr_ratio, rthr_ratio));
        if let pycsp_rows::Socket::Tcp = socket {
            let (mib, raw_mib, ratio) = stats::measure_pair(
                (
                    "sockets",
                    "TCP loopback: 1 MiB messages, remote writer",
                    "GB/s",
                    || pycsp_rows::socket_bandwidth_from_remote(socket, 1 << 20, 256 << 20),
                ),
                (
                    "limit",
                    "raw TCP loopback stream, 1 MiB writes",
                    "GB/s",
                    || raw::tcp_stream(1 << 20, 256 << 20),
                ),
                t,
            );
            rows.extend([mib, raw_mib]);
            mib_tcp_over_raw = ratio;
        }
    }

    eprintln!("peers:");
    rows.push(measure(
        "peers",
        "crossbeam bounded(0), two threads (RTT)",
        "ns",
        t,
        || peers::crossbeam_rtt(50_000 * k),
    ));
    rows.push(cb_row);
    let mut ipc_thr = Vec::new();
    rows.push(measure(
        "peers",
        "ipc-channel, two processes (RTT)",
        "ns",
        t,
        || {
            let (rtt, thr) = peers::ipc_channel(10_000 * k);
            ipc_thr.push(thr);
            rtt
        },
    ));
    ipc_thr.sort_by(|a, b| a.total_cmp(b));
    if let (Some(&min), Some(&max)) = (ipc_thr.first(), ipc_thr.last()) {
        rows.push(Row {
            group: "peers",
            name: "ipc-channel u64, two processes one way".into(),
            unit: "msg/s",
            median: ipc_thr[ipc_thr.len() / 2],
            min,
            max,
            trials: ipc_thr.len(),
        });
    }
    rows.push(measure(
        "peers",
        "Unix domain socket, 8 bytes (RTT)",
        "ns",
        t,
        || peers::uds_rtt(20_000 * k),
    ));
    rows.push(measure(
        "peers",
        "Unix domain socket, 8 bytes one way",
        "msg/s",
        t,
        || peers::uds_throughput(500_000 * k),
    ));
    rows.push(measure(
        "peers",
        "ipc-channel 1 MiB, two processes one way",
        "GB/s",
        t,
        || peers::ipc_channel_bytes(1 << 20, 256 << 20),
    ));
    let trials = t.min(5);
    python_rows(
        &mut rows,
        "connection",
        &[
            (
                "conn_rtt_ns",
                "Python multiprocessing.connection over TCP (RTT)",
                "ns",
            ),
            (
                "conn_msgs_per_s",
                "Python multiprocessing.connection over TCP one way",
                "msg/s",
            ),
        ],
        trials,
        || peers::python_connection(trials, 2_000 * k),
    );
    python_rows(
        &mut rows,
        "Pipe and Queue",
        &[
            ("pipe_rtt_ns", "Python multiprocessing.Pipe (RTT)", "ns"),
            (
                "pipe_msgs_per_s",
                "Python multiprocessing.Pipe one way",
                "msg/s",
            ),
            ("queue_rtt_ns", "Python multiprocessing.Queue (RTT)", "ns"),
            (
                "queue_msgs_per_s",
                "Python multiprocessing.Queue one way",
                "msg/s",
            ),
        ],
        trials,
        || peers::python(trials, 2_000 * k),
    );
    python_rows(
        &mut rows,
        "Pool",
        &[
            (
                "chunked",
                "Python Pool.map, 100,000 tiny, default chunks",
                "items/s",
            ),
            (
                "chunksize1",
                "Python Pool.map, 100,000 tiny, chunksize=1",
                "items/s",
            ),
        ],
        trials,
        || peers::python_pool(trials, 100_000, cores),
    );

    let get = |name: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(name))
            .map_or(f64::NAN, |r| r.median)
    };
    let rv = get("rendezvous channel pair");
    let thr = get("buffered u64 one way");
    let q = get("Python multiprocessing.Queue (RTT)");
    let ipc = get("ipc-channel, two processes (RTT)");
    let mib = get("1 MiB messages");
    let memcpy = get("memcpy 1 MiB");
    let limit = get("primes < 1e6, 1 proc., no communication")
        / get(&format!("primes < 1e6, {cores} proc., no communication"));
    let efficiency = |label: &str| {
        get(&format!("primes < 1e6, 1 worker(s), {label} jobs"))
            / get(&format!("primes < 1e6, {cores} worker(s), {label} jobs"))
            / limit
    };
    let (eff_buffered, eff_rendezvous) = (efficiency("buffered(16)"), efficiency("rendezvous"));
    let ipc_one_way = get("ipc-channel u64, two processes one way");
    let mut targets = vec![
        Target {
            what: "rendezvous RTT / raw spin RTT (paired)",
            value: rv_over_spin,
            goal: "<= 2",
            met: rv_over_spin <= 2.0,
        },
        Target {
            what: "rendezvous RTT / raw rendezvous pair (paired)",
            value: rv_over_pair,
            goal: "info",
            met: true,
        },
        Target {
            what: "commstime, us per communication",
            value: get("commstime"),
            goal: "<= 1",
            met: get("commstime") <= 1.0,
        },
        Target {
            what: "commstime / raw commstime (paired)",
            value: ct_over_raw,
            goal: "info",
            met: true,
        },
        Target {
            what: "buffered u64 / crossbeam threads (paired)",
            value: thr_over_cb,
            goal: ">= 0.5",
            met: thr_over_cb >= 0.5,
        },
        Target {
            what: "buffered u64, million msg/s",
            value: thr / 1e6,
            goal: ">= 10",
            met: thr >= 10e6,
        },
        Target {
            what: "ipc-channel RTT / pycsp RTT",
            value: ipc / rv,
            goal: ">= 20",
            met: ipc / rv >= 20.0,
        },
        Target {
            what: "multiprocessing.Queue RTT / pycsp RTT",
            value: q / rv,
            goal: ">= 100",
            met: q / rv >= 100.0,
        },
        Target {
            what: "1 MiB bandwidth / memcpy",
            value: mib / memcpy,
            goal: ">= 0.5",
            met: mib / memcpy >= 0.5,
        },
        Target {
            what: "1 MiB / two-process copy limit (paired)",
            value: mib_over_limit,
            goal: ">= 0.5",
            met: mib_over_limit >= 0.5,
        },
        Target {
            what: "primes parallel limit (speedup, no comm.)",
            value: limit,
            goal: "info",
            met: true,
        },
        Target {
            what: "primes farm buffered(16): speedup / limit",
            value: eff_buffered,
            goal: ">= 0.9",
            met: eff_buffered >= 0.9,
        },
        Target {
            what: "primes farm rendezvous: speedup / limit",
            value: eff_rendezvous,
            goal: ">= 0.9",
            met: eff_rendezvous >= 0.9,
        },
        Target {
            what: "start+join / fork+waitpid (paired)",
            value: sj_over_fork,
            goal: "<= 2",
            met: sj_over_fork <= 2.0,
        },
        Target {
            what: "spawn and join, ms per process",
            value: get("spawn and join"),
            goal: "<= 2",
            met: get("spawn and join") <= 2.0,
        },
    ];
    for (label, rt_ratio, brt_ratio, thr_ratio, rthr_ratio) in socket_pairs {
        let (rt_what, brt_what, thr_what, ipc_what, rthr_what, ripc_what) = match label {
            "local socket" => (
                "local socket RTT / raw Unix socket (paired)",
                "local buffered(16) RTT / raw Unix (paired)",
                "local socket remote writer / raw Unix (paired)",
                "local socket remote writer / ipc-channel",
                "local socket remote reader / raw Unix (paired)",
                "local socket remote reader / ipc-channel",
            ),
            _ => (
                "TCP RTT / raw Unix socket RTT (paired)",
                "TCP buffered(16) RTT / raw Unix (paired)",
                "TCP remote writer / raw Unix one way (paired)",
                "TCP remote writer / ipc-channel one way",
                "TCP remote reader / raw Unix one way (paired)",
                "TCP remote reader / ipc-channel one way",
            ),
        };
        let vs_ipc = get(&format!("{label}: buffered u64 one way, remote writer")) / ipc_one_way;
        let reader_vs_ipc =
            get(&format!("{label}: buffered u64 one way, remote reader")) / ipc_one_way;
        targets.extend([
            // Both pairs cross the socket twice per round trip on their critical path, as
            // the raw socket does (a remote reader's next Read travels with its Ack; the
            // rendezvous Done overlaps the next Message); what the raw socket does not pay
            // is the hand-offs between threads: user, proxy ring, pump, socket, the host's
            // connection thread, ring, user (see the book's performance chapter).
            Target {
                what: rt_what,
                value: rt_ratio,
                goal: "<= 1",
                met: rt_ratio <= 1.0,
            },
            Target {
                what: brt_what,
                value: brt_ratio,
                goal: "<= 1",
                met: brt_ratio <= 1.0,
            },
            Target {
                what: thr_what,
                value: thr_ratio,
                goal: ">= 1",
                met: thr_ratio >= 1.0,
            },
            Target {
                what: ipc_what,
                value: vs_ipc,
                goal: ">= 3",
                met: vs_ipc >= 3.0,
            },
            Target {
                what: rthr_what,
                value: rthr_ratio,
                goal: ">= 1",
                met: rthr_ratio >= 1.0,
            },
            Target {
                what: ripc_what,
                value: reader_vs_ipc,
                goal: ">= 3",
                met: reader_vs_ipc >= 3.0,
            },
        ]);
    }
    // Beside each round-trip target, its floor measured in the same trials (an info ratio):
    // over a local socket, the wire design's (a raw rendezvous pair over a Unix socket per
    // channel); over TCP, TCP's own (a raw TCP round trip).
    for (beside, what, value) in [
        (
            "local socket RTT / raw Unix socket (paired)",
            "local socket RTT / raw rendezvous pair over Unix sockets (paired)",
            local_over_raw_rendezvous,
        ),
        (
            "TCP RTT / raw Unix socket RTT (paired)",
            "TCP RTT / raw TCP loopback RTT (paired)",
            tcp_over_raw_tcp,
        ),
    ] {
        if let Some(at) = targets.iter().position(|t| t.what == beside) {
            let info = Target {
                what,
                value,
                goal: "info",
                met: true,
            };
            targets.insert(at + 1, info);
        }
    }
    targets.push(Target {
        what: "TCP 1 MiB / raw TCP 1 MiB writes (paired)",
        value: mib_tcp_over_raw,
        goal: ">= 0.5",
        met: mib_tcp_over_raw >= 0.5,
    });

    rows.retain(|r| r.trials > 0);
    let table = table(&rows, &targets);
    println!("\n{table}");

    if stats::ONLY.get().is_some() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let mut ratios = BTreeMap::new();
    for tg in &targets {
        ratios.insert(
            tg.what,
            serde_json::json!({"value": tg.value, "goal": tg.goal, "met": tg.met}),
        );
    }
    let json =
        serde_json::json!({ "quick": quick, "cores": cores, "rows": rows, "targets": ratios });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .expect("write results.json");
    std::fs::write(dir.join("chart.svg"), chart::svg(&rows)).expect("write chart.svg");
    std::fs::write(dir.join("table.txt"), table).expect("write table.txt");
    println!(
        "wrote {}/results.json, table.txt and chart.svg",
        dir.display()
    );
}

/// The printed table: every row, then the targets with their verdicts.
/// The rows one Python script measures together (`(key in its JSON, row name, unit)`): run
/// when `--only` lets one of them be measured, each row from its `[median, min, max]`.
fn python_rows(
    rows: &mut Vec<Row>,
    what: &str,
    group: &[(&str, &'static str, &'static str)],
    trials: usize,
    run: impl FnOnce() -> Option<serde_json::Map<String, serde_json::Value>>,
) {
    if !group.iter().any(|(_, name, _)| stats::wanted(name)) {
        return;
    }
    let Some(py) = run() else {
        eprintln!("  (python3 not available: Python {what} rows skipped)");
        return;
    };
    for &(key, name, unit) in group {
        if let Some(v) = py.get(key).and_then(|v| v.as_array()) {
            let f = |i: usize| v.get(i).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
            rows.push(Row {
                group: "peers",
                name: name.into(),
                unit,
                median: f(0),
                min: f(1),
                max: f(2),
                trials,
            });
        }
    }
}

fn table(rows: &[Row], targets: &[Target]) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<8} {:<46} {:>12} {:>25}  unit",
        "group", "row", "median", "min - max"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<8} {:<46} {:>12} {:>25}  {}",
            r.group,
            r.name,
            fmt(r.median),
            format!("{} - {}", fmt(r.min), fmt(r.max)),
            r.unit
        );
    }
    let _ = writeln!(
        t,
        "\n{:<42} {:>10}  {:<8} verdict",
        "target (ratios within this run)", "measured", "goal"
    );
    for tg in targets {
        let verdict = if tg.value.is_nan() {
            "not measured"
        } else if tg.met {
            "MET"
        } else {
            "MISSED"
        };
        let _ = writeln!(
            t,
            "{:<42} {:>10}  {:<8} {verdict}",
            tg.what,
            fmt(tg.value),
            tg.goal
        );
    }
    t
}
