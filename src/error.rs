//! Errors that carry their exit code.
//!
//! Every error rlivepatch reports is one line that names the cause and the fix. The
//! [`ErrorKind`] decides the process exit code, documented in the README, so that scripts
//! can tell "the target is fine, your patch is wrong" from "wait and retry".

use std::fmt;

/// What went wrong, at the level an operator acts on. Each kind has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Anything without a more precise kind (exit 1).
    Failed,
    /// The target process: not found, no permission, unsupported, traced by someone else (exit 3).
    Target,
    /// The patch file: missing, not a shared object, wrong machine, bad metadata (exit 4).
    Patch,
    /// The patch does not fit the process: object or symbol missing, entry owned by someone
    /// else, already applied, not applied, incompatible states (exit 5).
    Mismatch,
    /// The switch was not safe before the timeout: threads stayed inside changed functions (exit 6).
    Busy,
    /// rlivepatch was interrupted by SIGINT/SIGTERM/SIGHUP and undid the current step (exit 7).
    Interrupted,
    /// The operation could not finish nor be undone cleanly; the process state says what is
    /// left and `rlivepatch repair` finishes it (exit 8).
    Incomplete,
    /// Job control stopped the process (`SIGSTOP`, `SIGTSTP`...) while rlivepatch worked:
    /// the current step was undone and the process stays stopped (exit 9).
    Stopped,
    /// `build`: the fix cannot become a safe livepatch (changed data or layouts, start-up
    /// code, assembly, LTO...); the message says why and the way out (exit 10).
    Refused,
    /// `build`: the build itself failed: the diff does not apply, a compiler or linker
    /// error, a rebuilt original that differs from the binary, a missing tool (exit 11).
    Build,
    /// The command line (exit 2, as clap's own errors).
    Usage,
}

impl ErrorKind {
    /// The process exit code for this kind.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::Target => 3,
            ErrorKind::Patch => 4,
            ErrorKind::Mismatch => 5,
            ErrorKind::Busy => 6,
            ErrorKind::Interrupted => 7,
            ErrorKind::Incomplete => 8,
            ErrorKind::Stopped => 9,
            ErrorKind::Refused => 10,
            ErrorKind::Build => 11,
            ErrorKind::Usage => 2,
        }
    }
}

/// What callers decide by, beyond the kind: the few causes some code acts on (starting
/// over, reporting a process as gone), so that no decision reads the message's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cause {
    /// Nothing a caller acts on.
    #[default]
    Other,
    /// The process loaded or unloaded a library under the operation, which changed
    /// nothing: it can start over from the objects of the moment.
    Churn,
    /// The process does not exist (any more).
    Gone,
    /// The operating system refused access (ptrace rules, file modes).
    Permission,
    /// A file, object or symbol that was named does not exist.
    NotFound,
    /// Threads may still run code in rlivepatch's memory in the target (a return
    /// trampoline that could not be taken away): it must stay mapped.
    ScratchInUse,
}

/// Why `rlivepatch build` refused a change ([`ErrorKind::Refused`]): the class of the
/// reason, for scripts and reports (`"class"` in the JSON error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// A struct or union the running code uses changes layout.
    Layout,
    /// A variable changes size.
    Size,
    /// A variable changes its initial value.
    Initializer,
    /// Code that runs only at start-up (main, constructors, IFUNC resolvers) changes.
    Startup,
    /// Thread-local storage is added or used by changed code.
    ThreadLocal,
    /// Code built without -fPIC or -fPIE, which cannot move into a patch.
    NotPic,
    /// Link-time optimisation.
    Lto,
    /// Assembly sources.
    Assembly,
    /// A construct the generator does not handle (named in the message).
    Unsupported,
    /// The diffs change no file compiled into the binaries.
    NotCompiled,
    /// The diffs change no code of the binaries (nothing to patch).
    NoCode,
    /// The binary was built by another compiler.
    Compiler,
    /// The rebuilt original differs from the binary (other flags, other sources).
    Differs,
    /// The binary has no symbols and no debug file was found.
    NoSymbols,
}

/// An error with its kind and its one-line message.
#[derive(Debug, Clone)]
pub struct Error {
    /// The kind, which decides the exit code.
    pub kind: ErrorKind,
    /// One line: the cause and, where there is one, the fix.
    pub message: String,
    /// What a caller may decide by.
    pub cause: Cause,
    /// For a refused build, the class of the reason.
    pub refusal: Option<Refusal>,
    /// The cause alone, when the message also says what became of the process ("...;
    /// the current step was undone"): for a message that has to say otherwise.
    pub bare: Option<String>,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            cause: Cause::Other,
            refusal: None,
            bare: None,
        }
    }

    /// A refused build: the change cannot be made into a livepatch, for reason `class`.
    pub fn refused(class: Refusal, message: impl Into<String>) -> Self {
        Error {
            refusal: Some(class),
            ..Error::new(ErrorKind::Refused, message)
        }
    }

    /// The same error, with `cause`.
    pub fn because(mut self, cause: Cause) -> Self {
        self.cause = cause;
        self
    }

    /// The same error, whose cause alone reads `bare`.
    pub fn bare_cause(mut self, bare: impl Into<String>) -> Self {
        self.bare = Some(bare.into());
        self
    }

    /// The cause alone: the message without what it says became of the process.
    pub fn cause_alone(&self) -> &str {
        self.bare.as_deref().unwrap_or(&self.message)
    }

    /// Prefix the message with what was being done, keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::new(ErrorKind::Failed, e.desc().to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Failed, e.to_string())
    }
}

/// The result type of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Build an [`Error`] from a kind and a format string.
#[macro_export]
macro_rules! err {
    ($kind:ident, $($arg:tt)*) => {
        $crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($arg)*))
    };
}

/// Return early with an [`Error`] built from a kind and a format string.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::err!($kind, $($arg)*))
    };
}

/// Return early with a refused build ([`Error::refused`]) of a class and a format string.
#[macro_export]
macro_rules! refuse {
    ($class:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::refused(
            $crate::error::Refusal::$class,
            format!($($arg)*),
        ))
    };
}

/// Add what was being done to any error that can be displayed.
pub trait Context<T> {
    /// On error, a [`ErrorKind::Failed`] error (or the error's own kind) prefixed with `what`.
    fn context(self, what: impl fmt::Display) -> Result<T>;
    /// Like [`Context::context`], with the message built lazily.
    fn with_context<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
    fn with_context<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// An I/O error in words, without the errno number (`No such file or directory`).
pub fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
