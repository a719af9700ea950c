//! A farm across a whole Slurm allocation: one `Parallel` feeds jobs to workers placed on the
//! allocation's tasks with `srun` (`pycsp::slurm::Allocation`) and collects their results.
//! Each job counts the primes in a range of numbers; the total is the number of primes below
//! JOBS x SIZE. Run it from a batch script (`tests/cluster/farm.sbatch`):
//!
//! ```sh
//! sbatch --ntasks=4 tests/cluster/farm.sbatch target/release/examples/cluster_farm
//! ```
//!
//! Arguments: `[WORKERS] [JOBS] [SIZE]`; WORKERS 0 (the default) is one worker a task of the
//! allocation. Outside an allocation the workers run as local processes.

use pycsp::prelude::*;
use pycsp::slurm::Allocation;

// ANCHOR: processes
/// How many primes lie in `[from, to)`, by trial division (work for the CPU).
fn primes_in(from: u64, to: u64) -> u64 {
    let prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
    (from..to).filter(|&n| prime(n)).count() as u64
}

/// Where a worker ran: its host and its Slurm job and step.
fn whereabouts() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let var = |v| std::env::var(v).unwrap_or_else(|_| "-".into());
    let (job, step) = (var("SLURM_JOB_ID"), var("SLURM_STEP_ID"));
    format!("host {} job {job} step {step}", host.trim())
}

#[process]
fn feed(jobs: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for j in 0..n {
        jobs.write(j)?;
    }
    Ok(()) // `jobs` retires: the workers see Retired once every job is taken
}

#[process]
fn worker(
    jobs: ChannelIn<u64>,
    results: ChannelOut<u64>,
    size: u64,
) -> Result<(u64, String), ChannelError> {
    let mut done = 0;
    loop {
        match jobs.read() {
            Ok(j) => results.write(primes_in(j * size, (j + 1) * size))?,
            Err(ChannelError::Retired) => return Ok((done, whereabouts())),
            Err(e) => return Err(e),
        }
        done += 1;
    }
}

#[process]
fn collect(results: ChannelIn<u64>) -> Result<u64, ChannelError> {
    results.iter().sum()
}
// ANCHOR_END: processes

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let workers = args.next().transpose()?.unwrap_or(0) as usize;
    let jobs_n = args.next().transpose()?.unwrap_or(40);
    let size = args.next().transpose()?.unwrap_or(5_000);
    // ANCHOR: main
    // The allocation this batch script runs in (SLURM_JOB_NODELIST, SLURM_TASKS_PER_NODE).
    let alloc = match Allocation::from_env() {
        Ok(a) => Some(a),
        Err(e) => {
            println!("{e}: the workers run here");
            None
        }
    };
    let workers = match (&alloc, workers) {
        (Some(a), 0) => a.tasks(),
        (None, 0) => 4,
        (_, n) => n,
    };
    // The channels live in this process, at an address every node reaches.
    let here = alloc.as_ref().map_or("127.0.0.1".into(), |a| a.here());
    let port = std::net::TcpListener::bind((here.as_str(), 0))?
        .local_addr()?
        .port();
    let jobs = Channel::<u64>::named(&format!("tcp://{here}:{port}/jobs"))?;
    let results = Channel::<u64>::named_buffered(&format!("tcp://{here}:{port}/results"), 64)?;
    let started = std::time::Instant::now();
    let (fed, total, done) = Parallel((
        feed(jobs.writer(), jobs_n),
        collect(results.reader()),
        replicate(workers, |i| {
            let w = worker(jobs.reader(), results.writer(), size);
            match &alloc {
                Some(a) => w.on(a.place(i)), // srun ... --nodelist=NODE {cmd}
                None => w,
            }
        }),
    ))?;
    let took = started.elapsed();
    // ANCHOR_END: main
    fed?;
    if let Some(a) = &alloc {
        println!("allocation: nodes {:?}, {} tasks", a.nodes(), a.tasks());
    }
    for (i, d) in done.into_iter().enumerate() {
        let (n, at) = d?;
        println!("worker {i}: {n} jobs, {at}");
    }
    println!("primes below {}: {}", jobs_n * size, total?);
    println!(
        "farm: {workers} workers, {jobs_n} jobs in {} ms",
        took.as_millis()
    );
    Ok(())
}
