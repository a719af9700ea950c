//! What the cluster tests (`tests/cluster_ssh.rs`, `tests/cluster_slurm.rs`) share: running
//! the daemons' tools, waiting with a deadline, and skipping where they cannot run.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Says why a test cannot run here and returns `None`; a failure instead where the tests are
/// required to run (`.ci/run` sets `PYCSP_CLUSTER_TESTS=require`).
pub fn cannot_run<T>(why: &str) -> Option<T> {
    if std::env::var("PYCSP_CLUSTER_TESTS").is_ok_and(|v| v == "require") {
        panic!("{why} (PYCSP_CLUSTER_TESTS=require)");
    }
    // Straight to the descriptor: the test harness captures eprintln! of a passing test, and
    // a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
    None
}

/// Whether this process runs as root.
pub fn root() -> bool {
    // SAFETY: geteuid only reads this process's credentials.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cmd` with standard input closed and returns its standard output, or what went wrong.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {} {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `program args` (see [`output`]).
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    output(Command::new(program).args(args))
}

/// Polls `ready` every 20 ms until it holds or `limit` has passed; whether it held.
pub fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The path of an installed program (also in the sbin directories, which a user's PATH may
/// lack).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file());
    found
}

/// Says which of `programs` are missing (and which Debian packages have them), if any.
pub fn missing(programs: &[&str], packages: &str) -> Option<String> {
    let absent: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find(p).is_none())
        .collect();
    (!absent.is_empty()).then(|| {
        format!(
            "{} not installed (apt-get install {packages})",
            absent.join(", ")
        )
    })
}

/// `tests/cluster/NAME` with each `(placeholder, value)` replaced.
pub fn template(name: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cluster")
        .join(name);
    let mut text =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (k, v) in values {
        text = text.replace(k, v);
    }
    Ok(text)
}

/// A new temporary directory only its owner may use.
pub fn private_dir(name: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// Sends SIGTERM to `child`, waits up to `limit` for it to exit, then kills it; reaps it.
pub fn stop(child: &mut std::process::Child, limit: Duration) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill only sends a signal, to our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        if !wait_for(limit, || !matches!(child.try_wait(), Ok(None))) {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}
