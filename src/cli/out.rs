//! Where the command's output goes: reports on stdout (text or JSON), progress and
//! errors on stderr. A reader that went away is not an error of the operation.

use crate::error::Error;
use std::io::Write;

/// A progress line on stderr.
pub fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "rlivepatch: {line}");
}

/// Text on stdout.
pub fn text(s: &str) {
    bytes(s.as_bytes());
}

/// Bytes on stdout; a reader that went away (`| head`) ends the output quietly.
pub fn bytes(b: &[u8]) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(b).and_then(|()| o.flush());
}

/// A report as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(v: &T) {
    let mut text = serde_json::to_string_pretty(v).expect("serializable");
    text.push('\n');
    bytes(text.as_bytes());
}

/// An error: one line on stderr, and with `--json` the same on stdout.
pub fn error(e: &Error, as_json: bool) {
    let _ = writeln!(std::io::stderr(), "rlivepatch: error: {}", e.message);
    if as_json {
        let mut err = serde_json::json!({ "kind": e.kind, "message": e.message });
        if let Some(class) = e.refusal {
            err["class"] = serde_json::json!(class);
        }
        json(&serde_json::json!({ "error": err }));
    }
}
