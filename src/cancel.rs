//! Interruption: a flag that long work polls, and the process groups of
//! running external commands, which are killed when the run is cancelled.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static CANCELLED: AtomicBool = AtomicBool::new(false);
static CHILDREN: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// The flag that ops poll.
pub fn flag() -> &'static AtomicBool {
    &CANCELLED
}

pub fn is_cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// Cancels the run: sets the flag and terminates every registered child
/// process group. Safe to call from a signal-handling thread.
pub fn cancel() {
    CANCELLED.store(true, Ordering::SeqCst);
    let guard = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = guard.as_ref() {
        for &pgid in set {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
            unsafe {
                libc::kill(-pgid, libc::SIGTERM);
            }
        }
    }
}

/// Registers a child that leads its own process group. If the run was
/// cancelled already, the child is terminated at once.
pub fn register_child(pid: u32) {
    let pid = pid as i32;
    let mut guard = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(HashSet::new).insert(pid);
    if is_cancelled() {
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
    }
}

pub fn unregister_child(pid: u32) {
    let mut guard = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = guard.as_mut() {
        set.remove(&(pid as i32));
    }
}
