//! Several hosts for real, by Slurm: a one-node cluster of Debian's `slurm-wlm` (`slurmctld`
//! and `slurmd`) authenticated by `munged`, all three started by the test with a key, a
//! socket, state and logs in a temporary directory and a `slurm.conf` made from
//! `tests/cluster/slurm.conf` (found through `SLURM_CONF`). Processes are placed with `srun`
//! (a pipeline, a farm of four workers), and `sbatch` runs `tests/cluster/farm.sbatch`, whose
//! one `Parallel` spreads a farm over the job's allocation with `pycsp::slurm::Allocation`.
//!
//! Needs root, `slurm-wlm` and `munge` (`.ci/run` installs them); where they are missing the
//! tests print why and do nothing, unless `PYCSP_CLUSTER_TESTS=require` (set by `.ci/run`),
//! which makes that a failure.

mod common;
#[path = "cluster/support.rs"]
mod support;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pycsp::prelude::*;
use pycsp::slurm::Allocation;
use support::{cannot_run, output, wait_for};

/// A one-node Slurm cluster: `munged`, `slurmctld` and `slurmd`, children of this process.
/// Dropping it cancels the cluster's jobs, waits for them to end, stops the daemons and removes
/// their directory, also when a test fails.
struct Cluster {
    dir: PathBuf,
    conf: String,
    node: String,
    daemons: Vec<(&'static str, Child)>,
}

/// How long the cluster may take to come up, and a job to end.
const START: Duration = Duration::from_secs(60);

impl Cluster {
    /// Starts cluster number `n` of this test binary, or says why it cannot.
    fn new(n: u32) -> Option<Cluster> {
        if !support::root() {
            return cannot_run("not root: the Slurm tests start slurmd, which runs jobs as root");
        }
        let programs = [
            "munged",
            "slurmctld",
            "slurmd",
            "srun",
            "sbatch",
            "sinfo",
            "squeue",
            "scancel",
            "scontrol",
        ];
        if let Some(why) = support::missing(&programs, "slurm-wlm munge") {
            return cannot_run(&why);
        }
        let dir = support::private_dir(&format!("pycsp-slurm-{}-{n}", std::process::id()))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = Cluster {
            conf: dir.join("slurm.conf").display().to_string(),
            dir,
            node: support::hostname(),
            daemons: Vec::new(),
        };
        if let Err(e) = c.start(n) {
            panic!("starting the Slurm cluster failed: {e}\n{}", c.logs());
        }
        Some(c)
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A command of Slurm's, for this cluster.
    fn slurm(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn start(&mut self, n: u32) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let io = |e: std::io::Error| e.to_string();
        for d in ["state", "spool"] {
            std::fs::create_dir(self.dir.join(d)).map_err(io)?;
        }
        // munged reads the directories on the way to its socket: others may cross, not write.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o711)).map_err(io)?;
        let mut key = vec![0u8; 1024];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").map_err(io)?,
            &mut key,
        )
        .map_err(io)?;
        let key_file = self.file("munge.key");
        std::fs::write(&key_file, key).map_err(io)?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let dir = self.dir.display().to_string();
        let (ctld, slurmd) = (common::free_port(), common::free_port());
        let cluster = format!("pycsp{}x{n}", std::process::id() % 100_000);
        let conf = support::template(
            "slurm.conf",
            &[
                ("@DIR@", &dir),
                ("@HOST@", &self.node),
                ("@CLUSTER@", &cluster),
                ("@CTLD_PORT@", &ctld.to_string()),
                ("@SLURMD_PORT@", &slurmd.to_string()),
            ],
        )?;
        std::fs::write(&self.conf, conf).map_err(io)?;
        // munged, in the foreground (-F), so that it is our child.
        let socket = self.file("munge.socket");
        self.daemon(
            "munged",
            Command::new("munged").args([
                "-F",
                "--force",
                &format!("--key-file={key_file}"),
                &format!("--socket={socket}"),
                &format!("--pid-file={}", self.file("munged.pid")),
                &format!("--log-file={}", self.file("munged.log")),
                &format!("--seed-file={}", self.file("munged.seed")),
            ]),
        )?;
        self.wait_until("munged's socket", || Path::new(&socket).exists())?;
        let mut ctld = self.slurm("slurmctld");
        ctld.args(["-D", "-i", "-f", &self.conf]);
        self.daemon("slurmctld", &mut ctld)?;
        let mut slurmd = self.slurm("slurmd");
        slurmd.args(["-D", "-f", &self.conf]);
        self.daemon("slurmd", &mut slurmd)?;
        // Up when the node is idle.
        let mut sinfo = self.slurm("sinfo");
        sinfo.args(["--noheader", "--format=%T"]);
        self.wait_until("the node to be idle", || {
            output(&mut sinfo).is_ok_and(|s| s.trim() == "idle")
        })
    }

    /// Starts daemon `name` with its output in `name.out`.
    fn daemon(&mut self, name: &'static str, cmd: &mut Command) -> Result<(), String> {
        let out =
            std::fs::File::create(self.file(&format!("{name}.out"))).map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.daemons.push((name, child));
        Ok(())
    }

    /// Polls `ready` until it holds, for at most [`START`]; fails early if a daemon exited.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let mut exited = None;
        let daemons = &mut self.daemons;
        let up = wait_for(START, || {
            exited = daemons
                .iter_mut()
                .find_map(|(n, c)| c.try_wait().ok().flatten().map(|st| format!("{n}: {st}")));
            exited.is_some() || ready()
        });
        match (up, exited) {
            (_, Some(e)) => Err(format!("waiting for {what}, a daemon exited ({e})")),
            (false, None) => Err(format!("no {what} within {START:?}")),
            (true, None) => Ok(()),
        }
    }

    /// The daemons' logs, for a failure's message.
    fn logs(&self) -> String {
        [
            "munged.out",
            "slurmctld.out",
            "slurmd.out",
            "slurmctld.log",
            "slurmd.log",
        ]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(self.file(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- {f}\n{}\n", tail.join("\n"))
        })
        .collect()
    }

    /// The command that runs srun on this cluster.
    fn srun(&self) -> String {
        format!("env SLURM_CONF={} srun", self.conf)
    }

    /// The jobs of the cluster.
    fn jobs(&self) -> Result<Vec<String>, String> {
        let mut squeue = self.slurm("squeue");
        squeue.args(["--noheader", "--format=%i"]);
        Ok(output(&mut squeue)?
            .split_whitespace()
            .map(String::from)
            .collect())
    }

    /// The state of job `id` (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, ...).
    fn job_state(&self, id: &str) -> Result<String, String> {
        let mut show = self.slurm("scontrol");
        show.args(["--oneliner", "show", "job", id]);
        let text = output(&mut show)?;
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .map(String::from)
            .ok_or_else(|| format!("no JobState in {text:?}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(jobs) = self.jobs() {
            if !jobs.is_empty() {
                let mut scancel = self.slurm("scancel");
                let _ = output(scancel.args(&jobs));
                wait_for(Duration::from_secs(20), || {
                    self.jobs().is_ok_and(|j| j.is_empty())
                });
            }
        }
        // The daemons in the reverse order of their start: slurmd, slurmctld, munged.
        while let Some((_, mut child)) = self.daemons.pop() {
            support::stop(&mut child, Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a process runs: the Slurm job and step it is a task of.
fn slurm_step() -> (Option<String>, Option<String>) {
    (
        std::env::var("SLURM_JOB_ID").ok(),
        std::env::var("SLURM_STEP_ID").ok(),
    )
}

type Step = (Option<String>, Option<String>);

#[process]
fn source(out: ChannelOut<u64>, n: u64) -> Result<Step, ChannelError> {
    for i in 1..=n {
        out.write(i)?;
    }
    Ok(slurm_step())
}

#[process]
fn square(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<Step, ChannelError> {
    loop {
        match inp.read() {
            Ok(v) => out.write(v * v)?,
            Err(ChannelError::Retired) => return Ok(slurm_step()),
            Err(e) => return Err(e),
        }
    }
}

#[process]
fn total(inp: ChannelIn<u64>) -> Result<(u64, Step), ChannelError> {
    let sum = inp.iter().sum::<Result<u64, _>>()?;
    Ok((sum, slurm_step()))
}

#[process]
fn worker(jobs: ChannelIn<u64>, results: ChannelOut<(u64, u64)>) -> (u64, Step) {
    let mut done = 0;
    while let Ok(n) = jobs.read() {
        if results.write((n, n * 3)).is_err() {
            break;
        }
        done += 1;
    }
    (done, slurm_step())
}

#[test]
fn srun_places_a_pipeline_and_a_farm_of_four_workers() {
    let Some(cluster) = Cluster::new(0) else {
        return;
    };
    let a = Channel::<u64>::named("tcp://127.0.0.1:0/a").unwrap();
    let port = common::port_of(a.name());
    let addr = |name: &str| format!("tcp://127.0.0.1:{port}/{name}");
    // The pipeline, each stage a job of its own (srun outside an allocation makes one).
    let srun = Placement::launcher(&format!(
        "{} --nodes=1 --ntasks=1 --quiet {{cmd}}",
        cluster.srun()
    ));
    let b = Channel::<u64>::named_buffered(&addr("b"), 16).unwrap();
    let (s, q, t) = Parallel((
        source(a.writer(), 200).on(srun.clone()),
        square(a.reader(), b.writer()).on(srun.clone()),
        total(b.reader()).on(srun),
    ))
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let (sum, t) = t.unwrap();
    assert_eq!(sum, (1..=200u64).map(|v| v * v).sum::<u64>());
    let steps = [s.unwrap(), q.unwrap(), t];
    for (job, step) in &steps {
        assert!(
            job.is_some() && step.is_some(),
            "not a Slurm task: {steps:?}"
        );
    }
    let jobs: std::collections::BTreeSet<_> = steps.iter().map(|s| s.0.clone()).collect();
    assert_eq!(jobs.len(), 3, "three stages, three jobs: {steps:?}");

    // The farm: four workers placed on the tasks of a 4-task allocation of the node.
    let alloc = Allocation::new(&cluster.node, 4)
        .unwrap()
        .srun(&cluster.srun());
    let jobs = Channel::<u64>::named(&addr("jobs")).unwrap();
    let results = Channel::<(u64, u64)>::named_buffered(&addr("res"), 8).unwrap();
    let (w, r) = (jobs.writer(), results.reader());
    let farm = Spawn(replicate(4, |i| {
        worker(jobs.reader(), results.writer()).on(alloc.place(i))
    }))
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
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
    for (_, (job, step)) in &done {
        assert!(
            job.is_some() && step.is_some(),
            "not a Slurm task: {done:?}"
        );
    }
}

/// The example the batch script runs: built by `cargo test` (all targets) next to this test.
fn farm_program() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe
        .parent()?
        .parent()?
        .join("examples")
        .join("cluster_farm");
    p.is_file().then_some(p)
}

#[test]
fn sbatch_runs_a_farm_across_its_allocation() {
    let Some(program) = farm_program() else {
        cannot_run::<()>(
            "examples/cluster_farm is not built (cargo test builds it; or run cargo build \
             --example cluster_farm)",
        );
        return;
    };
    let Some(cluster) = Cluster::new(1) else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/farm.sbatch");
    let out = cluster.file("farm-%j.out");
    let mut sbatch = cluster.slurm("sbatch");
    sbatch
        .args(["--parsable", "--output", &out, "--chdir"])
        .arg(&cluster.dir)
        .arg(&script)
        .arg(&program)
        .args(["0", "40", "5000"]); // a worker a task, 40 jobs of 5000 numbers
    let id = output(&mut sbatch).unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let id = id.trim().split(';').next().unwrap().to_string();
    let out = out.replace("%j", &id);
    let started = Instant::now();
    let mut state = String::new();
    let ended = wait_for(Duration::from_secs(120), || {
        state = cluster.job_state(&id).unwrap_or_default();
        !matches!(
            state.as_str(),
            "" | "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING"
        )
    });
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        ended,
        "job {id} still {state} after 120 s:\n{text}\n{}",
        cluster.logs()
    );
    eprintln!("job {id} {state} after {:?}:\n{text}", started.elapsed());
    assert_eq!(state, "COMPLETED", "{text}\n{}", cluster.logs());
    assert!(text.contains("primes below 200000: 17984"), "{text}");
    assert!(text.contains("4 tasks"), "{text}");
    // Four workers, each a step of this job.
    let steps: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("worker "))
        .map(|l| {
            assert!(l.contains(&format!("job {id} step ")), "{l}");
            l.rsplit(' ').next().unwrap()
        })
        .collect();
    assert_eq!(steps.len(), 4, "four workers in four steps: {text}");
}

#[process]
fn echo_telling_job(ids: ChannelOut<String>, jobs: ChannelIn<u64>, out: ChannelOut<u64>) -> u64 {
    ids.write(std::env::var("SLURM_JOB_ID").unwrap_or_default())
        .unwrap();
    let mut n = 0;
    while let Ok(v) = jobs.read() {
        if out.write(v).is_err() {
            break;
        }
        n += 1;
    }
    n
}

#[test]
fn cancelling_the_job_of_a_placed_process_is_reported_naming_it() {
    let Some(cluster) = Cluster::new(2) else {
        return;
    };
    let ids = Channel::<String>::named("tcp://127.0.0.1:0/ids").unwrap();
    let port = common::port_of(ids.name());
    let addr = |name: &str| format!("tcp://127.0.0.1:{port}/{name}");
    let jobs = Channel::<u64>::named(&addr("jobs")).unwrap();
    let out = Channel::<u64>::named(&addr("out")).unwrap();
    let (i, w, r) = (ids.reader(), jobs.writer(), out.reader());
    let alloc = Allocation::new(&cluster.node, 1)
        .unwrap()
        .srun(&cluster.srun());
    let one = Spawn(echo_telling_job(ids.writer(), jobs.reader(), out.writer()).on(alloc.place(0)))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    drop((ids, jobs, out));
    let job = i.read_timeout(Duration::from_secs(30)).unwrap();
    assert!(!job.is_empty(), "the placed process is no Slurm task");
    w.write(5).unwrap();
    assert_eq!(r.read_timeout(Duration::from_secs(30)), Ok(5));
    let cancelled = Instant::now();
    output(cluster.slurm("scancel").arg(&job)).unwrap();
    let got = r.read_timeout(Duration::from_secs(30));
    eprintln!(
        "job {job} cancelled: the peer was told after {:?}",
        cancelled.elapsed()
    );
    match got {
        Err(ChannelError::PeerDied { process, .. }) => {
            assert!(process.contains("echo_telling_job"), "{process}")
        }
        other => panic!("expected PeerDied, got {other:?}"),
    }
    match one.join() {
        Err(pycsp::Error::ProcessFailed { name, failure, .. }) => {
            eprintln!("Parallel: {name} {failure}");
            assert!(name.contains("echo_telling_job"), "{name}");
        }
        other => panic!("expected a failed process, got {other:?}"),
    }
}

#[process]
fn forty_two() -> u64 {
    42
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

/// The figures of the sockets chapter: what starting one process by srun costs beside a
/// local start, and the farm's speedup from 1 to 4 workers in a batch job of the one-node
/// cluster. Run with `cargo build --release --example cluster_farm && cargo test --release
/// --test cluster_slurm -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run it by name with --ignored --nocapture"]
fn measure_placement_overhead_and_farm_speedup() {
    let Some(cluster) = Cluster::new(9) else {
        return;
    };
    let n = 21;
    let srun = Placement::launcher(&format!(
        "{} --nodes=1 --ntasks=1 --quiet {{cmd}}",
        cluster.srun()
    ));
    println!("start and join of one trivial process, median of {n}:");
    let local = median_ms(n, || assert_eq!(Parallel(forty_two()), Ok(42)));
    println!("  {:<44} {local:8.1} ms", "local child (no placement)");
    let ms = median_ms(n, || {
        assert_eq!(Parallel(forty_two().on(srun.clone())), Ok(42))
    });
    println!(
        "  {:<44} {ms:8.1} ms",
        "srun --nodes=1 --ntasks=1 {cmd} (a job each)"
    );
    let Some(program) = farm_program() else {
        cannot_run::<()>("examples/cluster_farm is not built: no farm figures");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/farm.sbatch");
    let (jobs, size) = ("200", "50000");
    println!("farm in a 4-task batch job, {jobs} jobs of {size} numbers ({program:?}):");
    let mut one = None;
    for workers in ["1", "2", "4"] {
        let out = cluster.file(&format!("measure-{workers}.out"));
        let mut sbatch = cluster.slurm("sbatch");
        sbatch
            .args(["--parsable", "--output", &out])
            .arg(&script)
            .arg(&program)
            .args([workers, jobs, size]);
        let id = output(&mut sbatch).unwrap();
        let id = id.trim().split(';').next().unwrap().to_string();
        let ended = wait_for(Duration::from_secs(600), || {
            let s = cluster.job_state(&id).unwrap_or_default();
            !matches!(
                s.as_str(),
                "" | "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING"
            )
        });
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(ended, "job {id} did not end: {text}");
        assert!(text.contains("primes below 10000000: 664579"), "{text}");
        let ms: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("farm: ")?
                    .rsplit(" in ")
                    .next()?
                    .strip_suffix(" ms")
            })
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no time in {text}"));
        let base = *one.get_or_insert(ms);
        println!(
            "  {workers} worker(s): {ms:8.0} ms, speedup {:.2}",
            base / ms
        );
    }
}
