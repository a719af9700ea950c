//! Several hosts for real, by ssh: two Linux network namespaces on a bridge, each running its
//! own OpenSSH server (`sshd` from Debian's `openssh-server`) with key-only login, configured
//! from `tests/cluster/sshd_config` with a host key and a client key pair made for the test in
//! a temporary directory. Processes are placed on them with the launcher
//! `ssh -F DIR/ssh_config root@HOST {cmd}`; the binary is found at the same path there, as the
//! namespaces share this machine's file system.
//!
//! Needs root, iproute2, util-linux's `unshare` and OpenSSH (`.ci/run` installs them); where
//! they are missing the tests print why and do nothing, unless `PYCSP_CLUSTER_TESTS=require`
//! (set by `.ci/run`), which makes that a failure.

mod common;
#[path = "cluster/support.rs"]
mod support;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pycsp::prelude::*;
use pycsp::{Error, Failure};
use support::{cannot_run, find, run, wait_for};

fn ip(args: &str) -> Result<(), String> {
    run("ip", &args.split_whitespace().collect::<Vec<_>>()).map(drop)
}

/// Two hosts: network namespaces `<tag>0` and `<tag>1` on a bridge, each running an sshd.
/// The root namespace is 10.214.N.1, host i is 10.214.N.(10+i). Dropping it kills every
/// process in the namespaces (the sshds, their sessions, anything they started), deletes the
/// namespaces and the bridge, and removes the temporary directory, also when a test fails.
struct SshHosts {
    tag: String,
    bridge: String,
    subnet: String,
    dir: PathBuf,
    sshd: Vec<Child>,
}

const HOSTS: usize = 2;

impl SshHosts {
    /// Builds the hosts for test number `n`, or says why it cannot.
    fn new(n: u32) -> Option<SshHosts> {
        if !support::root() {
            return cannot_run("not root: the ssh tests need network namespaces");
        }
        let programs = ["ip", "unshare", "ssh", "ssh-keygen", "sshd"];
        let packages = "iproute2 util-linux openssh-client openssh-server";
        if let Some(why) = support::missing(&programs, packages) {
            return cannot_run(&why);
        }
        let id = std::process::id() % 10_000;
        let dir = support::private_dir(&format!("pycsp-ssh-{}-{n}", std::process::id()))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut h = SshHosts {
            tag: format!("pys{id}x{n}"),
            bridge: format!("pysbr{id}x{n}"),
            subnet: format!("10.214.{}", (std::process::id() * 3 + n) % 250),
            dir,
            sshd: Vec::new(),
        };
        if let Err(e) = h.build() {
            panic!("building the ssh hosts failed: {e}");
        }
        Some(h)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}{i}", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }

    fn address(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    /// The root namespace's address on the bridge: where placed processes call back and where
    /// the channels are hosted.
    fn here(&self) -> String {
        format!("{}.1", self.subnet)
    }

    fn channel(&self, port: u16, name: &str) -> String {
        format!("tcp://{}:{port}/{name}", self.here())
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `tests/cluster/NAME` with `@DIR@` and `@ADDRESS@` filled in, written to the test's
    /// directory.
    fn config(&self, name: &str, to: &str, address: &str) -> Result<String, String> {
        let dir = self.dir.display().to_string();
        let text = support::template(name, &[("@DIR@", &dir), ("@ADDRESS@", address)])?;
        let path = self.file(to);
        std::fs::write(&path, text).map_err(|e| format!("{path}: {e}"))?;
        Ok(path)
    }

    fn build(&mut self) -> Result<(), String> {
        // The keys: the client's pair, and a host key whose public half the client trusts.
        for key in ["id_ed25519", "host_key"] {
            let file = self.file(key);
            run(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "pycsp-test",
                    "-f",
                    &file,
                ],
            )?;
        }
        let public = |f: &str| std::fs::read_to_string(self.file(f)).map_err(|e| e.to_string());
        std::fs::write(self.file("authorized_keys"), public("id_ed25519.pub")?)
            .map_err(|e| e.to_string())?;
        let host_key = public("host_key.pub")?;
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        let known: String = (0..HOSTS)
            .map(|i| format!("{} {}\n", self.address(i), host_key.join(" ")))
            .collect();
        std::fs::write(self.file("known_hosts"), known).map_err(|e| e.to_string())?;
        self.config("ssh_config", "ssh_config", "")?;
        // The network: a bridge in the root namespace, one veth link to each host.
        ip(&format!("link add {} type bridge", self.bridge))?;
        ip(&format!("addr add {}/24 dev {}", self.here(), self.bridge))?;
        ip(&format!("link set {} up", self.bridge))?;
        for i in 0..HOSTS {
            let (ns, v) = (self.ns(i), self.veth(i));
            ip(&format!("netns add {ns}"))?;
            ip(&format!("link add {v} type veth peer name {v}p"))?;
            ip(&format!("link set {v} master {} up", self.bridge))?;
            ip(&format!("link set {v}p netns {ns}"))?;
            ip(&format!("-n {ns} addr add {}/24 dev {v}p", self.address(i)))?;
            ip(&format!("-n {ns} link set {v}p up"))?;
            ip(&format!("-n {ns} link set lo up"))?;
        }
        for i in 0..HOSTS {
            self.start_sshd(i)?;
        }
        Ok(())
    }

    /// Starts host i's sshd in the foreground (so that it is our child), and waits until it
    /// accepts connections. sshd needs its privilege-separation directory, /run/sshd: it gets
    /// one on a tmpfs mounted over /run in a mount namespace of its own, so this machine's
    /// /run is not changed.
    fn start_sshd(&mut self, i: usize) -> Result<(), String> {
        let config = self.config("sshd_config", &format!("sshd_config.{i}"), &self.address(i))?;
        let sshd = find("sshd").ok_or("no sshd")?;
        let log = std::fs::File::create(self.file(&format!("sshd.{i}.log")))
            .map_err(|e| e.to_string())?;
        let script = format!(
            "mount -t tmpfs -o mode=755 pycsp-run /run && mkdir -p /run/sshd && \
             exec {} -D -e -f {config}",
            sshd.display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start sshd: {e}"))?;
        self.sshd.push(child);
        let to = format!("{}:22", self.address(i));
        let to: std::net::SocketAddr = to.parse().map_err(|e| format!("{to}: {e}"))?;
        let up = wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok()
        });
        let exited = self.sshd[i].try_wait().ok().flatten();
        if !up || exited.is_some() {
            let log = std::fs::read_to_string(self.file(&format!("sshd.{i}.log")));
            return Err(format!(
                "sshd of host {i} did not start within 20 s (exit: {exited:?}): {log:?}"
            ));
        }
        Ok(())
    }

    /// The launcher of host i.
    // ANCHOR: place
    fn ssh(&self, i: usize) -> String {
        format!(
            "ssh -F {} root@{} {{cmd}}",
            self.file("ssh_config"),
            self.address(i)
        )
    }

    fn place(&self, i: usize) -> Placement {
        Placement::launcher(&self.ssh(i)).reach_back(&self.here())
    }
    // ANCHOR_END: place

    /// The inode of host i's network namespace.
    fn ns_inode(&self, i: usize) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.ns(i)))
            .unwrap()
            .ino()
    }
}

impl Drop for SshHosts {
    fn drop(&mut self) {
        // Everything still running in the namespaces: the sshds, sessions of a failed test,
        // processes they started.
        for i in 0..HOSTS {
            if let Ok(pids) = run("ip", &["netns", "pids", &self.ns(i)]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill only sends a signal, to a process of our test's namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for c in &mut self.sshd {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..HOSTS {
            let _ = ip(&format!("link del {}", self.veth(i)));
            let _ = ip(&format!("netns del {}", self.ns(i)));
        }
        let _ = ip(&format!("link del {}", self.bridge));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a process runs: the inode of its network namespace, and the program its parent runs
/// (`sshd` for a process that ssh started).
fn whereabouts() -> (u64, String) {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let ppid = std::os::unix::process::parent_id();
    let parent = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
    (ns, parent.trim().to_string())
}

#[process]
fn source(out: ChannelOut<u64>, n: u64) -> Result<(u64, String), ChannelError> {
    for i in 1..=n {
        out.write(i)?;
    }
    Ok(whereabouts())
}

#[process]
fn square(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(u64, String), ChannelError> {
    loop {
        match inp.read() {
            Ok(v) => out.write(v * v)?,
            Err(ChannelError::Retired) => return Ok(whereabouts()),
            Err(e) => return Err(e),
        }
    }
}

#[process]
fn total(inp: ChannelIn<u64>) -> Result<(u64, u64, u64, String), ChannelError> {
    let (n, s) = inp
        .iter()
        .try_fold((0, 0), |(n, s), v| Ok((n + 1, s + v?)))?;
    let (ns, parent) = whereabouts();
    Ok((n, s, ns, parent))
}

#[test]
fn a_pipeline_runs_on_two_hosts_placed_by_ssh() {
    let Some(hosts) = SshHosts::new(0) else {
        return;
    };
    let a = Channel::<u64>::named(&hosts.channel(0, "a")).unwrap();
    let port = common::port_of(a.name());
    let b = Channel::<u64>::named_buffered(&hosts.channel(port, "b"), 16).unwrap();
    let (s, q, t) = Parallel((
        source(a.writer(), 300).on(hosts.place(0)),
        square(a.reader(), b.writer()).on(hosts.place(1)),
        total(b.reader()).on(hosts.place(0)),
    ))
    .unwrap();
    assert_eq!(s.unwrap(), (hosts.ns_inode(0), "sshd".to_string()));
    assert_eq!(q.unwrap(), (hosts.ns_inode(1), "sshd".to_string()));
    let (n, sum, ns, parent) = t.unwrap();
    assert_eq!((ns, parent.as_str()), (hosts.ns_inode(0), "sshd"));
    assert_eq!(n, 300);
    assert_eq!(sum, (1..=300u64).map(|v| v * v).sum::<u64>());
}

#[process]
fn worker(jobs: ChannelIn<u64>, results: ChannelOut<(u64, u64)>) -> (u64, u64, String) {
    let mut done = 0;
    while let Ok(n) = jobs.read() {
        if results.write((n, n * 3)).is_err() {
            break;
        }
        done += 1;
    }
    let (ns, parent) = whereabouts();
    (done, ns, parent)
}

#[test]
fn a_farm_of_four_workers_runs_on_two_hosts_placed_by_ssh() {
    let Some(hosts) = SshHosts::new(1) else {
        return;
    };
    let jobs = Channel::<u64>::named(&hosts.channel(0, "jobs")).unwrap();
    let port = common::port_of(jobs.name());
    let results = Channel::<(u64, u64)>::named_buffered(&hosts.channel(port, "res"), 8).unwrap();
    let (w, r) = (jobs.writer(), results.reader());
    let farm = Spawn(replicate(4, |i| {
        worker(jobs.reader(), results.writer()).on(hosts.place(i % HOSTS))
    }))
    .unwrap();
    drop((jobs, results));
    let feeder = std::thread::spawn(move || {
        for n in 0..400u64 {
            w.write(n).unwrap();
        }
    });
    let mut seen = vec![false; 400];
    for _ in 0..400 {
        let (n, t) = r.read().unwrap();
        assert_eq!(t, 3 * n);
        assert!(!std::mem::replace(&mut seen[n as usize], true), "{n} twice");
    }
    feeder.join().unwrap();
    let done = farm.join().unwrap();
    assert_eq!(done.iter().map(|d| d.0).sum::<u64>(), 400);
    for (i, (_, ns, parent)) in done.iter().enumerate() {
        assert_eq!(*ns, hosts.ns_inode(i % HOSTS), "worker {i} ran elsewhere");
        assert_eq!(parent, "sshd", "worker {i} was not started by ssh");
    }
}

#[process]
fn fails(how: u8) -> u64 {
    if how == 0 {
        panic!("a remote panic on purpose");
    }
    std::process::exit(3)
}

#[test]
fn a_remote_panic_and_a_remote_exit_come_back_named_as_for_local_processes() {
    let Some(hosts) = SshHosts::new(2) else {
        return;
    };
    match Parallel(fails(0).on(hosts.place(0))) {
        Err(Error::ProcessFailed {
            name,
            failure: Failure::Panicked(m),
            ..
        }) => {
            assert!(name.ends_with("fails"), "{name}");
            assert!(m.contains("a remote panic on purpose"), "{m}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    match Parallel(fails(1).on(hosts.place(1))) {
        Err(Error::ProcessFailed {
            name,
            failure: Failure::Exited(3),
            ..
        }) => assert!(name.ends_with("fails"), "{name}"),
        other => panic!("expected exit code 3, got {other:?}"),
    }
}

#[process]
fn echo_telling_pid(pids: ChannelOut<u32>, jobs: ChannelIn<u64>, out: ChannelOut<u64>) -> u64 {
    pids.write(std::process::id()).unwrap();
    let mut n = 0;
    while let Ok(v) = jobs.read() {
        if out.write(v).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// Whether process `pid` is gone (or a zombie no one reaps).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z')),
    }
}

#[test]
fn killing_the_sshd_session_of_a_placed_process_is_reported_naming_it() {
    let Some(hosts) = SshHosts::new(3) else {
        return;
    };
    let pids = Channel::<u32>::named(&hosts.channel(0, "pids")).unwrap();
    let port = common::port_of(pids.name());
    let jobs = Channel::<u64>::named(&hosts.channel(port, "jobs")).unwrap();
    let out = Channel::<u64>::named(&hosts.channel(port, "out")).unwrap();
    let (p, w, r) = (pids.reader(), jobs.writer(), out.reader());
    let one =
        Spawn(echo_telling_pid(pids.writer(), jobs.reader(), out.writer()).on(hosts.place(0)))
            .unwrap();
    drop((pids, jobs, out));
    let pid = p.read_timeout(Duration::from_secs(30)).unwrap();
    // A round trip: the process works.
    w.write(5).unwrap();
    assert_eq!(r.read_timeout(Duration::from_secs(30)), Ok(5));
    // Its parent is the sshd serving its session: kill that.
    let session = parent_of(pid).expect("the placed process has a parent");
    let comm = std::fs::read_to_string(format!("/proc/{session}/comm")).unwrap();
    assert_eq!(comm.trim(), "sshd", "the parent of the placed process");
    let killed = Instant::now();
    // SAFETY: kill only sends a signal, to the sshd session process of our own test host.
    assert_eq!(unsafe { libc::kill(session as i32, libc::SIGKILL) }, 0);
    // Its peer, blocked on a read from it, is told; the process is gone; Parallel names it.
    let got = r.read_timeout(Duration::from_secs(30));
    eprintln!(
        "sshd session killed: the peer was told after {:?}",
        killed.elapsed()
    );
    match got {
        Err(ChannelError::PeerDied { process, .. }) => {
            assert!(process.contains("echo_telling_pid"), "{process}")
        }
        other => panic!("expected PeerDied, got {other:?}"),
    }
    assert!(
        wait_for(Duration::from_secs(10), || gone(pid)),
        "the placed process {pid} outlived its ssh session"
    );
    match one.join() {
        Err(Error::ProcessFailed {
            name,
            failure: Failure::Exited(255),
            ..
        }) => assert!(name.contains("echo_telling_pid"), "{name}"),
        other => panic!("expected the launcher's exit 255 naming the process, got {other:?}"),
    }
}

#[process]
fn forty_two() -> u64 {
    42
}

#[test]
fn ssh_n_starves_a_placed_process_of_its_ticket() {
    let Some(hosts) = SshHosts::new(4) else {
        return;
    };
    // The ticket and the key travel on the launcher's standard input; `ssh -n` replaces it
    // with /dev/null, so the process exits with 126 at once and the start fails saying so.
    let ssh_n = hosts.ssh(0).replacen("ssh ", "ssh -n ", 1);
    let placed = Placement::launcher(&ssh_n).reach_back(&hosts.here());
    match Parallel(forty_two().on(placed)) {
        Err(Error::Spawn { name, reason }) => {
            assert!(name.ends_with("forty_two"), "{name}");
            assert!(reason.contains("126"), "{reason}");
        }
        other => panic!("expected a start that fails with 126, got {other:?}"),
    }
    // Without -n the same process starts.
    assert_eq!(Parallel(forty_two().on(hosts.place(0))), Ok(42));
}

/// Median of `n` timed runs of `f`, in milliseconds.
fn median_ms(n: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[n / 2]
}

/// The figures of the sockets chapter: what starting one process costs, locally and through
/// each launcher (a trivial process, started and joined, one after another). Run with
/// `cargo test --release --test cluster_ssh -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run it by name with --ignored --nocapture"]
fn measure_placement_overhead() {
    let Some(hosts) = SshHosts::new(9) else {
        return;
    };
    let n = 21;
    let rows = [
        ("local child (no placement)", None),
        (
            "launcher {cmd} (this host)",
            Some(Placement::launcher("{cmd}")),
        ),
        (
            "ip netns exec NS {cmd}",
            Some(
                Placement::launcher(&format!("ip netns exec {} {{cmd}}", hosts.ns(0)))
                    .reach_back(&hosts.here()),
            ),
        ),
        ("ssh -F CONFIG root@HOST {cmd}", Some(hosts.place(0))),
    ];
    // One ssh connection that the launchers reuse (OpenSSH's multiplexing): a master, our
    // child, and launchers that open sessions over its socket.
    let socket = hosts.file("master.sock");
    let options = format!("-o ControlPath={socket}");
    let mut master = Command::new("ssh")
        .args(["-F", &hosts.file("ssh_config"), "-o", "ControlMaster=yes"])
        .args(["-o", &format!("ControlPath={socket}"), "-N"])
        .arg(format!("root@{}", hosts.address(0)))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || std::path::Path::new(&socket)
            .exists()),
        "the ssh master did not start"
    );
    let reused = hosts.ssh(0).replacen("ssh ", &format!("ssh {options} "), 1);
    let mut rows = rows.to_vec();
    rows.push((
        "ssh ... {cmd}, over a master connection",
        Some(Placement::launcher(&reused).reach_back(&hosts.here())),
    ));
    println!("start and join of one trivial process, median of {n}:");
    for (what, place) in rows {
        let ms = median_ms(n, || {
            let p = match &place {
                Some(pl) => forty_two().on(pl.clone()),
                None => forty_two(),
            };
            assert_eq!(Parallel(p), Ok(42));
        });
        println!("  {what:<40} {ms:8.1} ms");
    }
    let _ = master.kill();
    let _ = master.wait();
}
