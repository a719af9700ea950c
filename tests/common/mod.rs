//! Helpers shared by the multi-process tests (each test binary uses some of them).
#![allow(dead_code)]

use std::time::Duration;

/// CPU time (user + system) this thread has used.
pub fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Held by tests that measure time and by tests that load every core, so that within one
/// test binary the former never run while the latter saturate the machine.
pub static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`TIMING`], also after a test that held it failed.
pub fn timing() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}
