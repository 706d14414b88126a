//! Which instruction set podium's CPU kernels run with, chosen once per
//! process: the widest this CPU has (AVX-512F, else AVX2 + FMA, else the
//! portable path, which leaves every convolution to im2col and the `gemm`
//! crate), or what the environment variable `PODIUM_CPU`
//! (`avx512`, `avx2`, `portable`) asks for, capped at what the CPU runs.
//! One machine can so run, and test, every path it has.

use std::sync::OnceLock;

/// An instruction set of podium's kernels, in increasing width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No podium kernel of its own: im2col and the `gemm` crate.
    Portable,
    /// 256-bit AVX2 with FMA.
    Avx2,
    /// 512-bit AVX-512F (with FMA, which it includes).
    Avx512,
}

impl Isa {
    /// Every path, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name `PODIUM_CPU` takes and benchmarks print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The widest path this CPU runs.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("fma") && has!("avx2") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        self <= Isa::detected()
    }

    fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s.trim())
    }
}

/// The path the kernels take in this process (see the module doc). A
/// `PODIUM_CPU` this CPU cannot run, or that names no path, is said once on
/// stderr and the widest path it runs is taken instead.
pub fn isa() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let best = Isa::detected();
        let Ok(asked) = std::env::var("PODIUM_CPU") else {
            return best;
        };
        match Isa::parse(&asked) {
            Some(i) if i <= best => i,
            Some(i) => {
                eprintln!(
                    "podium: PODIUM_CPU={} but this CPU does not run it; using {}",
                    i.name(),
                    best.name()
                );
                best
            }
            None => {
                eprintln!(
                    "podium: PODIUM_CPU={asked:?} is not one of avx512, avx2, portable; using {}",
                    best.name()
                );
                best
            }
        }
    })
}

/// The data caches the kernels block for, in bytes per core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caches {
    /// Level 1 data cache.
    pub l1d: usize,
    /// Level 2 cache (unified).
    pub l2: usize,
}

impl Caches {
    /// What the kernels assume where the system does not say: an AMD Zen 3
    /// core's (32 KiB L1d, 512 KiB L2), the CPU their blocking was first
    /// measured on.
    pub const FALLBACK: Caches = Caches {
        l1d: 32 << 10,
        l2: 512 << 10,
    };
}

/// This CPU's per-core L1d and L2 sizes, read once from
/// `/sys/devices/system/cpu/cpu0/cache` (Linux), else
/// [`Caches::FALLBACK`]. Blocking sizes derive from these, not from
/// one CPU's constants (an Intel Sapphire Rapids core has 48 KiB and
/// 2 MiB, a Zen 3 core 32 KiB and 512 KiB).
pub fn caches() -> Caches {
    static CACHES: OnceLock<Caches> = OnceLock::new();
    *CACHES.get_or_init(|| read_caches("/sys/devices/system/cpu/cpu0/cache"))
}

fn read_caches(dir: &str) -> Caches {
    let mut c = Caches::FALLBACK;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return c;
    };
    for e in entries.flatten() {
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        let Some(bytes) = parse_size(&size) else {
            continue;
        };
        match (level.trim(), kind.trim()) {
            ("1", "Data") => c.l1d = bytes,
            ("2", "Unified" | "Data") => c.l2 = bytes,
            _ => {}
        }
    }
    c
}

/// `48K`, `2048K`, `2M` (sysfs's cache sizes) in bytes; sizes below 4 KiB
/// or above 1 GiB are taken as misread.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    let v = num.parse::<usize>().ok()?.checked_mul(unit)?;
    (4 << 10..=1 << 30).contains(&v).then_some(v)
}

/// The CPU's model name (`/proc/cpuinfo`), for benchmarks and logs.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_the_order_is_by_width() {
        for i in Isa::ALL {
            assert_eq!(Isa::parse(i.name()), Some(i));
        }
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(Isa::Portable.available());
        assert!(isa().available());
    }

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_size("48K\n"), Some(48 << 10));
        assert_eq!(parse_size("2048K"), Some(2 << 20));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1K"), None);
        assert_eq!(parse_size("lots"), None);
        // A directory that is not there: the fallback, not an error.
        assert_eq!(read_caches("/nonexistent/cache"), Caches::FALLBACK);
        let c = caches();
        assert!(c.l1d >= 4 << 10 && c.l2 >= c.l1d, "{c:?}");
    }
}
