//! Panics are bugs, and never the way a binary reports a problem.
//!
//! - [`catch`] runs code that may panic on input it cannot trust (sled
//!   opening and recovering a damaged data directory) and returns the panic
//!   as a message instead. The panic prints nothing: the caller turns it
//!   into a one-line error.
//! - [`one_line`], called first thing in each binary's `main`, makes any
//!   other panic print one line (`<program>: internal error: ...`) instead
//!   of a multi-line report. `RUST_BACKTRACE` (other than `0`) restores the
//!   standard report, with its backtrace, for debugging.
//!
//! Both work through one process-wide hook, installed once, that delegates
//! to the hook it replaced for every panic neither of them is about (so the
//! test harness keeps its own reporting).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::{Once, OnceLock};

static HOOK: Once = Once::new();
static PROGRAM: OnceLock<&'static str> = OnceLock::new();

thread_local! {
    /// Set while [`catch`] runs on this thread.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// What the last quiet panic on this thread said.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Makes every panic of this process that is not caught by [`catch`] print
/// one line on stderr, prefixed with `program`.
pub fn one_line(program: &'static str) {
    let _ = PROGRAM.set(program);
    install();
}

/// Runs `f`; a panic inside it (on this thread) is returned as its message,
/// with where it happened, and prints nothing.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install();
    let was_quiet = QUIET.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.set(was_quiet);
    result.map_err(|payload| CAUGHT.take().unwrap_or_else(|| message(payload.as_ref())))
}

fn install() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.get() {
                CAUGHT.set(Some(describe(info)));
                return;
            }
            match PROGRAM.get() {
                Some(program) if !backtrace_requested() => {
                    eprintln!("{program}: internal error (a bug, please report it): {}", describe(info));
                }
                _ => previous(info),
            }
        }));
    });
}

fn backtrace_requested() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0")
}

/// The panic's message and location, on one line.
fn describe(info: &PanicHookInfo<'_>) -> String {
    let text = message(info.payload());
    match info.location() {
        Some(at) => format!("{text} (at {}:{})", short_path(at.file()), at.line()),
        None => text,
    }
}

/// A dependency's source path from its crate directory on
/// (`sled-0.34.7/src/...`), not from the builder's home directory.
fn short_path(file: &str) -> &str {
    match file.rsplit_once("/registry/src/") {
        Some((_, rest)) => rest.split_once('/').map_or(rest, |(_, path)| path),
        None => file,
    }
}

fn message(payload: &(dyn Any + Send)) -> String {
    let text = match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => s,
        (_, Some(s)) => s.as_str(),
        _ => "a panic without a message",
    };
    text.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_is_its_message_on_one_line() {
        let err = catch(|| -> u32 { panic!("first line\nsecond line") }).unwrap_err();
        assert!(err.starts_with("first line; second line (at src/panics.rs:"), "{err}");
        assert_eq!(catch(|| 7).unwrap(), 7);
        // Nested: the inner catch does not end the outer one's quiet mode.
        let outer = catch(|| {
            assert!(catch(|| panic!("inner")).unwrap_err().starts_with("inner"));
            panic!("outer")
        });
        assert!(outer.unwrap_err().starts_with("outer"));
    }
}
