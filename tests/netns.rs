//! Several hosts for real: three Linux network namespaces joined by veth links to a bridge,
//! with the stages of a pipeline and the workers of a farm placed on them by
//! `ip netns exec NS {cmd}`. Needs root and iproute2 (`.ci/run` installs it); as another user
//! the tests say so and do nothing.

mod common;
use std::process::Command;
use std::time::{Duration, Instant};

use pycsp::prelude::*;
use pycsp::{Error, Failure};

/// Three namespaces `<tag>0..2` on a bridge; the root namespace is 10.213.N.1, namespace i is
/// 10.213.N.(10+i). Dropping it deletes them all (also when a test fails).
struct Hosts {
    tag: String,
    bridge: String,
    pub subnet: String,
}

fn ip(args: &str) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    fn new(n: u32) -> Option<Hosts> {
        // SAFETY: geteuid only reads this process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: the network-namespace tests need root, skipped");
            return None;
        }
        let id = std::process::id() % 10_000;
        let h = Hosts {
            tag: format!("pyc{id}x{n}"),
            bridge: format!("pycbr{id}x{n}"),
            subnet: format!("10.213.{}", (std::process::id() as u32 * 3 + n) % 250),
        };
        h.build()
            .unwrap_or_else(|e| panic!("building the namespaces failed: {e}"));
        Some(h)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}{i}", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }

    fn build(&self) -> Result<(), String> {
        ip(&format!("link add {} type bridge", self.bridge))?;
        ip(&format!(
            "addr add {}.1/24 dev {}",
            self.subnet, self.bridge
        ))?;
        ip(&format!("link set {} up", self.bridge))?;
        for i in 0..3 {
            let (ns, v) = (self.ns(i), self.veth(i));
            ip(&format!("netns add {ns}"))?;
            ip(&format!("link add {v} type veth peer name {v}p"))?;
            ip(&format!("link set {v} master {} up", self.bridge))?;
            ip(&format!("link set {v}p netns {ns}"))?;
            ip(&format!(
                "-n {ns} addr add {}.{}/24 dev {v}p",
                self.subnet,
                10 + i
            ))?;
            ip(&format!("-n {ns} link set {v}p up"))?;
            ip(&format!("-n {ns} link set lo up"))?;
        }
        Ok(())
    }

    // ANCHOR: place
    fn place(&self, i: usize) -> Placement {
        Placement::launcher(&format!("ip netns exec {} {{cmd}}", self.ns(i)))
            .reach_back(&format!("{}.1", self.subnet))
    }
    // ANCHOR_END: place

    fn address(&self, port: u16, name: &str) -> String {
        format!("tcp://{}.1:{port}/{name}", self.subnet)
    }

    /// The inode of namespace i's network namespace.
    fn ns_inode(&self, i: usize) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.ns(i)))
            .unwrap()
            .ino()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..3 {
            let _ = ip(&format!("link del {}", self.veth(i)));
            let _ = ip(&format!("netns del {}", self.ns(i)));
        }
        let _ = ip(&format!("link del {}", self.bridge));
    }
}

/// The inode of this process's network namespace.
fn my_netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").unwrap().ino()
}

#[process]
fn source(out: ChannelOut<u64>, n: u64) -> Result<u64, ChannelError> {
    for i in 1..=n {
        out.write(i)?;
    }
    Ok(my_netns())
}

#[process]
fn square(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<u64, ChannelError> {
    loop {
        match inp.read() {
            Ok(v) => out.write(v * v)?,
            Err(ChannelError::Retired) => return Ok(my_netns()),
            Err(e) => return Err(e),
        }
    }
}

#[process]
fn total(inp: ChannelIn<u64>) -> Result<(u64, u64, u64), ChannelError> {
    let (n, s) = inp
        .iter()
        .try_fold((0, 0), |(n, s), v| Ok((n + 1, s + v?)))?;
    Ok((n, s, my_netns()))
}

#[test]
fn a_pipeline_spans_three_namespaces() {
    let Some(hosts) = Hosts::new(0) else { return };
    let a = Channel::<u64>::named(&hosts.address(0, "a")).unwrap();
    let port = common::port_of(a.name());
    let b = Channel::<u64>::named_buffered(&hosts.address(port, "b"), 16).unwrap();
    let (s, q, totals) = Parallel((
        source(a.writer(), 500).on(hosts.place(0)),
        square(a.reader(), b.writer()).on(hosts.place(1)),
        total(b.reader()).on(hosts.place(2)),
    ))
    .unwrap();
    assert_eq!(s.unwrap(), hosts.ns_inode(0));
    assert_eq!(q.unwrap(), hosts.ns_inode(1));
    let (n, sum, t) = totals.unwrap();
    assert_eq!(t, hosts.ns_inode(2));
    assert_ne!(t, my_netns());
    assert_eq!(n, 500);
    assert_eq!(sum, (1..=500u64).map(|v| v * v).sum::<u64>());
}

#[process]
fn worker(jobs: ChannelIn<u64>, results: ChannelOut<(u64, u64, u64)>) -> u64 {
    let me = my_netns();
    let mut done = 0;
    while let Ok(n) = jobs.read() {
        if results.write((n, n * 3, me)).is_err() {
            break;
        }
        done += 1;
    }
    done
}

#[test]
fn a_worker_farm_spans_three_namespaces() {
    let Some(hosts) = Hosts::new(1) else { return };
    let jobs = Channel::<u64>::named(&hosts.address(0, "jobs")).unwrap();
    let port = common::port_of(jobs.name());
    let results =
        Channel::<(u64, u64, u64)>::named_buffered(&hosts.address(port, "res"), 8).unwrap();
    let (w, r) = (jobs.writer(), results.reader());
    let farm = Spawn(
        (0..3)
            .map(|i| worker(jobs.reader(), results.writer()).on(hosts.place(i)))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    drop((jobs, results));
    let feeder = std::thread::spawn(move || {
        for n in 0..600u64 {
            w.write(n).unwrap();
        }
    });
    let mut seen = vec![false; 600];
    let mut where_ = std::collections::BTreeSet::new();
    for _ in 0..600 {
        let (n, t, ns) = r.read().unwrap();
        assert_eq!(t, 3 * n);
        assert!(!std::mem::replace(&mut seen[n as usize], true), "{n} twice");
        where_.insert(ns);
    }
    feeder.join().unwrap();
    let done = farm.join().unwrap();
    assert_eq!(done.iter().sum::<u64>(), 600);
    let all: std::collections::BTreeSet<u64> = (0..3).map(|i| hosts.ns_inode(i)).collect();
    assert!(
        where_.is_subset(&all),
        "results came from outside the namespaces"
    );
}

#[process]
fn slow_worker(jobs: ChannelIn<u64>, results: ChannelOut<u64>) -> u64 {
    let mut done = 0;
    while let Ok(n) = jobs.read() {
        if results.write(n).is_err() {
            break;
        }
        done += 1;
    }
    done
}

#[test]
fn a_link_that_goes_down_is_reported_as_a_lost_process_within_the_bound() {
    let Some(hosts) = Hosts::new(2) else { return };
    let jobs = Channel::<u64>::named(&hosts.address(0, "jobs")).unwrap();
    let port = common::port_of(jobs.name());
    let results = Channel::<u64>::named(&hosts.address(port, "res")).unwrap();
    let (w, r) = (jobs.writer(), results.reader());
    let one = Spawn(slow_worker(jobs.reader(), results.writer()).on(hosts.place(0))).unwrap();
    drop((jobs, results));
    // A round trip proves the worker is connected and working.
    w.write(7).unwrap();
    assert_eq!(r.read().unwrap(), 7);
    ip(&format!("link set {} down", hosts.veth(0))).unwrap();
    let start = Instant::now();
    // The reader is blocked on a worker that can no longer answer: it must fail, not hang.
    let got = r.read();
    let waited = start.elapsed();
    eprintln!("link down: the blocked reader was told after {waited:?}");
    assert!(
        matches!(got, Err(ChannelError::PeerDied { .. })),
        "expected PeerDied, got {got:?}"
    );
    let bound = pycsp::net::LOSS_TIMEOUT + Duration::from_secs(5);
    assert!(waited < bound, "the loss took {waited:?} to notice");
    match one.join() {
        Err(Error::ProcessFailed {
            failure: Failure::Lost(_),
            name,
            ..
        }) => assert!(name.contains("slow_worker"), "{name}"),
        other => panic!("expected a lost process, got {other:?}"),
    }
    assert!(start.elapsed() < bound * 2);
}
