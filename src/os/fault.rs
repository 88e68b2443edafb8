//! Named points in rlivepatch's steps, for tests and profiling.
//!
//! `RLIVEPATCH_FAULT=<point>` makes rlivepatch kill itself with SIGKILL when it reaches
//! that point, exactly as an operator's `kill -9` would, so that tests can prove the next
//! run repairs every state a killed run leaves. With `RLIVEPATCH_FAULT_SIGNAL=<number>`
//! the point instead sends that signal, once, to the target process (job control arriving
//! mid-operation), or with `tool:<number>` to rlivepatch itself (an operator's Ctrl-C at
//! that moment). `RLIVEPATCH_TRACE=1` prints each point reached, with the time since the
//! start, on stderr (what the benchmarks' profile uses). `RLIVEPATCH_FAULT=no-preserve`
//! turns the preserving path off (see `crate::remote::preserve`), and `narrow-vectors` has it keep
//! only the low halves of vector registers, for tests that show the hazards they prevent.
//! `RLIVEPATCH_FAULT=fail:<step>` makes that step fail once, as a refusing system would
//! ([`fails`]); `linger:<point>` makes rlivepatch wait there longer than a borrowed thread
//! waits at its gate, as when a saturated machine is slow to give rlivepatch a CPU.
//!
//! The fault and signal switches exist only in test builds (`debug_assertions`: what
//! `cargo test` runs); a release build ignores them, so no environment can make an
//! installed rlivepatch kill itself midway or corrupt callers (`no-preserve`), whoever
//! runs it and on whatever process. The trace is kept in release builds: it only
//! prints, and the benchmarks profile release builds with it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

struct Config {
    /// The points (`RLIVEPATCH_FAULT`, comma-separated).
    fault: Vec<String>,
    /// For each point, the signal to send there instead of dying, and whether to
    /// rlivepatch itself (`RLIVEPATCH_FAULT_SIGNAL`, comma-separated like the points).
    signal: Vec<(bool, i32)>,
    trace: bool,
    start: Instant,
}

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config {
        fault: test_var("RLIVEPATCH_FAULT")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        signal: test_var("RLIVEPATCH_FAULT_SIGNAL")
            .map(|v| {
                v.split(',')
                    .filter_map(|s| match s.strip_prefix("tool:") {
                        Some(n) => n.parse().ok().map(|n| (true, n)),
                        None => s.parse().ok().map(|n| (false, n)),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        trace: std::env::var_os("RLIVEPATCH_TRACE").is_some_and(|v| v != "0"),
        start: Instant::now(),
    })
}

/// A test switch's value: in test builds only.
fn test_var(name: &str) -> Option<String> {
    if cfg!(debug_assertions) {
        std::env::var(name).ok()
    } else {
        None
    }
}

/// The process being worked on, for `RLIVEPATCH_FAULT_SIGNAL`.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// Which points sent their signal already (each does once).
static SIGNALLED: [AtomicBool; 8] = [const { AtomicBool::new(false) }; 8];

/// Name the process rlivepatch works on (the target of `RLIVEPATCH_FAULT_SIGNAL`).
pub fn set_target(pid: i32) {
    TARGET.store(pid, Ordering::SeqCst);
}

/// Start the clock of the trace (call first thing).
pub fn init() {
    config();
}

/// A point: die here if the environment asks for it; print it when tracing.
pub fn point(name: &str) {
    crate::os::pace::point();
    let c = config();
    trace_line(c, name);
    if c.fault
        .iter()
        .any(|f| f.strip_prefix("linger:") == Some(name))
    {
        // Longer than a borrowed thread waits at its gate between calls (100 ms), as
        // when a saturated machine gives rlivepatch its CPU back late.
        std::thread::sleep(std::time::Duration::from_millis(400));
    }
    let Some(i) = c.fault.iter().position(|f| f == name) else {
        return;
    };
    match c.signal.get(i) {
        Some(&(tool, sig)) => {
            if !SIGNALLED
                .get(i)
                .is_some_and(|s| s.swap(true, Ordering::SeqCst))
            {
                let to = if tool {
                    std::process::id() as i32
                } else {
                    TARGET.load(Ordering::SeqCst)
                };
                // SAFETY: kill(2) sends a signal; no memory is involved.
                unsafe { libc::kill(to, sig) };
            }
        }
        // SAFETY: raise(2) with SIGKILL ends this process; nothing to clean up.
        None => unsafe {
            libc::raise(libc::SIGKILL);
        },
    }
}

/// Should the step at point `name` fail, as if the system had refused it
/// (`RLIVEPATCH_FAULT=fail:<name>`)? True the first time only: the test proves what a
/// failure leaves, and that what comes after it (undoing, cleaning up) still works.
pub fn fails(name: &str) -> bool {
    static FAILED: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let c = config();
    if !c
        .fault
        .iter()
        .any(|f| f.strip_prefix("fail:") == Some(name))
    {
        return false;
    }
    let mut done = FAILED.get_or_init(Default::default).lock().unwrap();
    if done.iter().any(|d| d == name) {
        return false;
    }
    done.push(name.to_string());
    trace_line(c, &format!("failing {name}"));
    true
}

/// Is the test switch `name` on (`RLIVEPATCH_FAULT` names it)? `no-preserve` turns the
/// preserving path off, `narrow-vectors` narrows it to the low halves of vector
/// registers, so that a test can show what they prevent; `no-waitv` makes borrowed
/// threads wait between calls as on a kernel without `futex_waitv`.
pub fn switched_on(name: &str) -> bool {
    config().fault.iter().any(|f| f == name)
}

/// A point that is only traced (a moment worth timing, not a state worth killing in).
pub fn trace(name: &str) {
    crate::os::pace::point();
    trace_line(config(), name);
}

/// [`trace`] of a line made only when the trace is on: for the points reached once per
/// thread, where formatting a line nobody reads cost a thousand-thread run half a
/// millisecond.
pub fn trace_with(line: impl FnOnce() -> String) {
    crate::os::pace::point();
    let c = config();
    if c.trace {
        trace_line(c, &line());
    }
}

fn trace_line(c: &Config, name: &str) {
    if c.trace {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        // One write per line: the trace should cost little next to what it measures.
        let line = format!(
            "rlivepatch: trace {:9.3} ms (monotonic {}.{:06}) {name}\n",
            c.start.elapsed().as_secs_f64() * 1e3,
            ts.tv_sec,
            ts.tv_nsec / 1000
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }
}
