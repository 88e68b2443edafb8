//! A thread-per-request server (a new thread for every connection, the patched function
//! in a shared library it uses) under a client that never pauses, while every CPU is
//! saturated by busy loops: apply and disable, over and over. Every command either
//! succeeds or fails cleanly (and a retry succeeds); no request fails; nothing is left to
//! repair; the process keeps its mappings and descriptors.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Busy loops at the test's own priority, 4 per CPU, killed by pid when dropped.
struct Burners(Vec<Child>);

impl Burners {
    fn start() -> Burners {
        let n = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
        Burners(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The client process, killed by pid when dropped.
struct Client(Child, Receiver<String>);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Client {
    /// The client's counts after `n` more requests: (ok, failed, v2).
    fn counts(&mut self) -> (i64, i64, i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut last = None;
        let mut seen = 0;
        while seen < 2 {
            let l = self
                .1
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .expect("the client stopped reporting");
            assert!(!l.starts_with("client failed"), "{l}");
            if l.starts_with("client ok=") {
                last = Some(l);
                seen += 1;
            }
        }
        let l = last.unwrap();
        (field(&l, "ok"), field(&l, "failed"), field(&l, "v2"))
    }
}

/// Anonymous reservations of 16 MiB or more (a malloc arena's heap is 64 MiB): an arena
/// the process did not have.
fn arenas(t: &Target) -> usize {
    t.maps()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = f[0].split_once('-').unwrap();
            let size = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            f.len() == 5 && size >= 16 << 20
        })
        .count()
}

/// The descriptors of the process but its connections (which come and go with the
/// requests): what each is.
fn files(t: &Target) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", t.pid))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| !p.starts_with("socket:"))
        .collect();
    v.sort();
    v
}

/// A request of the test's own: the answer the server gives now to request `n`.
fn request(port: &str, n: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.write_all(format!("{n}\n").as_bytes()).unwrap();
    let mut a = String::new();
    s.read_to_string(&mut a).unwrap();
    a.trim_end().to_string()
}

/// One operation, retried while it fails cleanly (exit 6: no safe moment, or the process
/// too busy): every failure leaves no patch and nothing pending.
fn until_done(pid: &str, args: &[&str], want_applied: bool) -> usize {
    for attempt in 1..=10 {
        let (code, _, err) = rlp_full(args);
        if code == 0 {
            return attempt;
        }
        assert_eq!(code, 6, "{args:?}: {err}");
        let v = json(&rlp_ok(&["list", pid, "--json"]));
        assert!(v.get("pending").is_none(), "after a clean failure: {v}");
        let applied = !v["patches"].as_array().unwrap().is_empty();
        assert_eq!(
            applied, !want_applied,
            "{args:?} failed but changed the record: {v}"
        );
    }
    panic!("{args:?}: 10 attempts failed");
}

#[test]
fn a_thread_per_request_server_under_saturated_cpus_takes_every_cycle() {
    let dir = build_dir().display().to_string();
    cc(
        "libtpr.so",
        &["-shared", "-fPIC", "-O2", "-g", "fixtures/libtpr.c"],
    );
    let server = cc(
        "tpr-server",
        &[
            "-O2",
            "-g",
            "fixtures/tpr-server.c",
            "-pthread",
            "-L",
            &dir,
            "-ltpr",
            "-Wl,-rpath,$ORIGIN",
        ],
    );
    let client = cc("tpr-client", &["-O2", "fixtures/tpr-client.c"]);
    let fix = patch("tpr-fix");
    let t = Target::start(&server, &[]);
    let port = t.seen[0].split_whitespace().nth(2).unwrap().to_string();
    // Two clients, so that connections and their threads overlap.
    let mut clients: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Command::new(&client)
                .arg(&port)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let rx = lines_of(c.stdout.take().unwrap());
            Client(c, rx)
        })
        .collect();
    for c in &mut clients {
        c.counts();
    }
    let before = (t.stable_maps(), files(&t), arenas(&t));
    let pid = t.pid.to_string();
    let burn = Burners::start();
    let cycles = env_count("RLIVEPATCH_TPR_CYCLES", 100);
    let (mut apply_tries, mut disable_tries) = (0, 0);
    for i in 0..cycles {
        apply_tries += until_done(&pid, &["apply", &pid, s(&fix)], true);
        assert_eq!(request(&port, i), format!("v2 {i}"));
        disable_tries += until_done(&pid, &["disable", &pid, "tpr-fix"], false);
        assert_eq!(request(&port, i), format!("v1 {i}"));
    }
    drop(burn);
    let mut ok = 0;
    for c in &mut clients {
        let (o, failed, _) = c.counts();
        assert_eq!(failed, 0, "requests failed");
        ok += o;
    }
    assert!(rlp_ok(&["list", &pid]).contains("no patches applied"));
    assert!(rlp_ok(&["repair", &pid]).contains("nothing to repair"));
    assert_eq!(
        (t.stable_maps(), files(&t), arenas(&t)),
        before,
        "the process lost or gained mappings, descriptors or malloc arenas"
    );
    t.assert_running();
    eprintln!(
        "tpr: {cycles} cycles, {apply_tries} apply and {disable_tries} disable attempts, {ok} requests"
    );
}
