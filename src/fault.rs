//! Named points in rlivepatch's steps, for tests and profiling.
//!
//! `RLIVEPATCH_FAULT=<point>` makes rlivepatch kill itself with SIGKILL when it reaches
//! that point, exactly as an operator's `kill -9` would, so that tests can prove the next
//! run repairs every state a killed run leaves. `RLIVEPATCH_TRACE=1` prints each point
//! reached, with the time since the start, on stderr (what the benchmarks' profile uses).

use std::sync::OnceLock;
use std::time::Instant;

struct Config {
    fault: Option<String>,
    trace: bool,
    start: Instant,
}

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config {
        fault: std::env::var("RLIVEPATCH_FAULT").ok(),
        trace: std::env::var_os("RLIVEPATCH_TRACE").is_some_and(|v| v != "0"),
        start: Instant::now(),
    })
}

/// Start the clock of the trace (call first thing).
pub fn init() {
    config();
}

/// A point: die here if the environment asks for it; print it when tracing.
pub fn point(name: &str) {
    crate::pace::point();
    let c = config();
    trace_line(c, name);
    if c.fault.as_deref() == Some(name) {
        // SAFETY: raise(2) with SIGKILL ends this process; nothing to clean up.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

/// A point that is only traced (a moment worth timing, not a state worth killing in).
pub fn trace(name: &str) {
    crate::pace::point();
    trace_line(config(), name);
}

fn trace_line(c: &Config, name: &str) {
    if c.trace {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        eprintln!(
            "rlivepatch: trace {:9.3} ms (monotonic {}.{:06}) {name}",
            c.start.elapsed().as_secs_f64() * 1e3,
            ts.tv_sec,
            ts.tv_nsec / 1000
        );
    }
}
