//! Interruption: a flag that long work polls, and the process groups of
//! running external commands, which are killed when the run is cancelled.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    note_child(pid, true);
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
    note_child(pid as i32, false);
    let mut guard = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = guard.as_mut() {
        set.remove(&(pid as i32));
    }
}

/// Writes in flight that an exit would leave half done (a temporary file
/// not yet renamed into place): a signal that would exit at once waits for
/// them.
static CRITICAL: AtomicUsize = AtomicUsize::new(0);
static EXIT_PENDING: AtomicBool = AtomicBool::new(false);

/// The exit status of a command stopped by a signal (as a shell reports
/// SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Exits the process now, or, while a [`Critical`] section is open, as soon
/// as the last one closes. For commands that only read, or write through
/// [`Critical`] sections: `check`, `plan`, `verify`, `gc`.
pub fn exit_when_safe() {
    EXIT_PENDING.store(true, Ordering::SeqCst);
    if CRITICAL.load(Ordering::SeqCst) == 0 {
        std::process::exit(EXIT_INTERRUPTED);
    }
}

/// A section an exit waits for; see [`critical`].
pub struct Critical(());

/// Opens a section that [`exit_when_safe`] waits for until it is dropped.
pub fn critical() -> Critical {
    CRITICAL.fetch_add(1, Ordering::SeqCst);
    Critical(())
}

impl Drop for Critical {
    fn drop(&mut self) {
        if CRITICAL.fetch_sub(1, Ordering::SeqCst) == 1 && EXIT_PENDING.load(Ordering::SeqCst) {
            std::process::exit(EXIT_INTERRUPTED);
        }
    }
}

/// Where the process groups of running commands are written down while a
/// run holds the store (`cache/running/<pgid>`), so that the next run can
/// stop any that outlived a podium killed with SIGKILL. See [`reap`].
static REGISTRY: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// A process's start time (clock ticks since boot), from `/proc/PID/stat`:
/// with the pid, it names one process for good.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Writes down, under `dir`, the commands this process starts from now on.
pub fn record_children_in(dir: std::path::PathBuf) {
    let _ = std::fs::create_dir_all(&dir);
    *REGISTRY.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
}

fn note_child(pid: i32, running: bool) {
    let guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = guard.as_ref() {
        let path = dir.join(pid.to_string());
        if running {
            if let Some(t) = start_time(pid) {
                let _ = std::fs::write(path, t.to_string());
            }
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Stops the commands that a run killed before it could stop them left
/// running (their process groups, written under `dir`), so that no command
/// runs twice at once. Called with the store's lock held: no live run owns
/// them. Returns how many groups were stopped.
pub fn reap(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut stopped = 0;
    for e in entries.flatten() {
        let path = e.path();
        let pid: Option<i32> = e.file_name().to_str().and_then(|n| n.parse().ok());
        let recorded: Option<u64> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let _ = std::fs::remove_file(&path);
        // A record without its start time (a podium killed while writing
        // it) cannot say whose group this is: left alone.
        let (Some(pid), Some(then)) = (pid.filter(|&p| p > 1), recorded) else {
            continue;
        };
        // The group's leader is either the recorded process or gone (Linux
        // gives no new process a pid still in use as a group id); a live
        // process of another start time means the group ended long ago.
        if start_time(pid).is_some_and(|now| now != then) {
            continue;
        }
        // SAFETY: kill(2) on a process group; signal 0 only checks it exists.
        let alive = || unsafe { libc::kill(-pid, 0) } == 0;
        if !alive() {
            continue;
        }
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if alive() {
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        stopped += 1;
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// `reap` stops a recorded group only when its leader is the recorded
    /// process (or gone): a record whose start time is wrong, or missing,
    /// never costs an unrelated process its life.
    #[test]
    fn reap_stops_only_the_group_it_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let started = start_time(pid).expect("a live process has a start time");
        let record = |text: &str| std::fs::write(dir.path().join(pid.to_string()), text).unwrap();
        record(&(started + 1).to_string());
        assert_eq!(reap(dir.path()), 0, "another process's start time");
        record("");
        assert_eq!(reap(dir.path()), 0, "no start time");
        assert!(child.try_wait().unwrap().is_none(), "left alone");
        // Waited for as it dies (as init waits for an orphan), so that no
        // zombie keeps the group alive.
        let waiter = std::thread::spawn(move || child.wait().unwrap());
        record(&started.to_string());
        assert_eq!(reap(dir.path()), 1);
        assert!(!waiter.join().unwrap().success(), "stopped by a signal");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "records removed"
        );
    }
}
