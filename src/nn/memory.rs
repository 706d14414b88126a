//! What a training batch needs in memory, estimated before anything is
//! allocated, so that `image_size = 100000` is refused with a message
//! naming the parameter rather than aborting on a failed allocation.

use super::models::Arch;
// The allocator whose option `keep_freed_memory` sets, linked wherever this is.
use mimalloc as _;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys
/// 0.1.49 builds v3; its Rust bindings leave this option out).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// For a binary whose global allocator is mimalloc (`podium`, the
/// benches): keep freed memory in the process. By default mimalloc still
/// hands freed memory back to the kernel after a delay, and a training
/// step's buffers (tens of MB, freed every batch) were faulted in and
/// zeroed again: 9,456 page faults in a 2-epoch simple_cnn run, against 509
/// without purging. Leaves a `MIMALLOC_PURGE_DELAY` the user set alone.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain C calls into the linked mimalloc with a valid option.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
        debug_assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}

/// A lower bound on the bytes one training step of `arch` holds at once:
/// the f32 input batch and the first layer's outputs (convolution, batch
/// norm and activation, all kept for the backward pass). Real use is
/// several times this, so a configuration over it can never fit; one under
/// it may still not, which the allocator then reports.
pub fn batch_lower_bound(arch: Arch, batch: usize, image_size: u32) -> u128 {
    let px = image_size as u128 * image_size as u128;
    let b = batch as u128;
    let input = b * 3 * px * 4;
    // Channels and stride of the first convolution.
    let (channels, stride) = match arch {
        Arch::SimpleCnn => (32, 1),
        Arch::Resnet18 | Arch::Resnet34 => (64, 2),
        Arch::EfficientnetB0 => (32, 2),
    };
    let first = b * channels * (px / (stride * stride)) * 4 * 3;
    input + first
}

/// Memory this process may still take, in bytes: the kernel's
/// `MemAvailable`, lowered by a cgroup limit where one is set. `None`
/// where neither can be read.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => None,
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `12.3 GiB`.
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = bytes as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    format!("{x:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_grows_with_the_square_of_the_image_size_and_with_the_batch() {
        let a = batch_lower_bound(Arch::Resnet18, 8, 64);
        assert_eq!(batch_lower_bound(Arch::Resnet18, 8, 128), 4 * a);
        assert_eq!(batch_lower_bound(Arch::Resnet18, 16, 64), 2 * a);
        // 8 × 3 × 64² floats of input, 8 × 64 × 32² × 3 of the stem.
        assert_eq!(a, (8 * 3 * 4096 + 8 * 64 * 1024 * 3) * 4);
    }

    #[test]
    fn an_absurd_image_size_is_far_beyond_any_machine() {
        // 32 images of 100,000² pixels: over 100 TiB in the first layer alone.
        assert!(batch_lower_bound(Arch::SimpleCnn, 32, 100_000) > 100 << 40);
    }

    #[test]
    fn available_memory_is_read_on_linux() {
        let a = available().expect("/proc/meminfo");
        assert!(a > 1 << 20, "{a}");
    }
}
