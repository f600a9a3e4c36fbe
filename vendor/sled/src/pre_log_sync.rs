//! checkpointd: a hook run before a log buffer is written.
//!
//! A program that keeps data beside sled's log which the log points to
//! (checkpointd's state segments) registers a hook for the directory; every
//! log buffer sled writes there (and then fdatasyncs) first runs it, so the
//! log can never be durable while what it points to is not.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

type Hook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

fn hooks() -> &'static Mutex<HashMap<PathBuf, Hook>> {
    static HOOKS: OnceLock<Mutex<HashMap<PathBuf, Hook>>> = OnceLock::new();
    HOOKS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Keeps the hook registered while it lives.
pub struct PreLogSync {
    path: PathBuf,
    hook: Hook,
}

impl Drop for PreLogSync {
    fn drop(&mut self) {
        let mut hooks = hooks().lock().unwrap_or_else(|e| e.into_inner());
        // Only our own: a later registration for the path replaced it.
        if hooks.get(&self.path).is_some_and(|h| Arc::ptr_eq(h, &self.hook)) {
            hooks.remove(&self.path);
        }
    }
}

/// Runs `hook` before every log buffer of the database at `path` (as given
/// to `Config::path`) is written, until the returned guard is dropped.
pub fn register_pre_log_sync(
    path: &Path,
    hook: impl Fn() -> io::Result<()> + Send + Sync + 'static,
) -> PreLogSync {
    let hook: Hook = Arc::new(hook);
    hooks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(path.to_path_buf(), Arc::clone(&hook));
    PreLogSync { path: path.to_path_buf(), hook }
}

pub(crate) fn run(path: &Path) -> io::Result<()> {
    let hook = hooks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(path)
        .cloned();
    match hook {
        Some(hook) => hook(),
        None => Ok(()),
    }
}
