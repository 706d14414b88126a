//! Neural networks on candle for the `train` and `predict` ops: models with
//! timm names ([`models`]), layers whose backward works ([`layers`]),
//! losses, optimizers with checkpointable state, learning-rate schedules,
//! augmentations, the data loader and checkpoints.
//!
//! Everything runs on candle's CPU backend by default; the `cuda` cargo
//! feature adds NVIDIA GPUs.

use candle_core::Device;

pub mod aug;
pub mod checkpoint;
pub mod dataset;
pub mod detect;
pub mod segment;
pub use podium_kernels as kernels;
pub mod layers;
pub mod loader;
pub mod loss;
pub mod memory;
pub mod models;
pub mod optim;
pub mod plot;
pub mod predict;
pub mod schedule;
pub mod train;
pub mod vars;

/// A failed training or prediction.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Other(String),
    #[error("interrupted")]
    Cancelled,
}

/// The devices `device` accepts.
pub const DEVICES: &str = "auto | cpu | cuda | cuda:N";

/// The device for `spec` (`auto`, `cpu`, `cuda`, `cuda:N`). `auto` is the
/// first GPU the executor handed the stage (or GPU 0) when podium was built
/// with the `cuda` feature and a GPU is present, else the CPU.
pub fn device(spec: &str, gpus: &[usize]) -> Result<Device, String> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "auto" => {
            if gpu_count() == 0 {
                return Ok(Device::Cpu);
            }
            gpus.first().copied().unwrap_or(0)
        }
        "cuda" => gpus.first().copied().unwrap_or(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(format!("unknown device `{spec}`; use {DEVICES}")),
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(format!(
            "device `{spec}` needs a GPU build: podium was built without the `cuda` feature \
             (cargo build --release --features cuda)"
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| format!("cannot open GPU {ordinal}: {e}"))
}

/// The GPUs the CUDA driver reports: 0 in a build without the `cuda` feature,
/// and where no driver or no GPU is present (a `cuda` build on a CPU machine).
pub fn gpu_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        candle_core::cuda::cudarc::driver::CudaContext::device_count()
            .map_or(0, |n| usize::try_from(n).unwrap_or(0))
    }
    #[cfg(not(feature = "cuda"))]
    0
}

/// Whether `spec` names a device (without opening it).
pub fn valid_device(spec: &str) -> bool {
    matches!(spec, "auto" | "cpu" | "cuda")
        || spec
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_cpu_builds_refuse_cuda() {
        assert!(matches!(device("cpu", &[]), Ok(Device::Cpu)));
        assert!(valid_device("cuda:1") && !valid_device("gpu"));
        assert!(device("gpu", &[]).unwrap_err().contains("unknown device"));
        if gpu_count() == 0 {
            // Also in a `cuda` build on a machine without a GPU or driver.
            assert!(matches!(device("auto", &[0]), Ok(Device::Cpu)));
        }
        if !cfg!(feature = "cuda") {
            assert_eq!(gpu_count(), 0);
            assert!(
                device("cuda:0", &[])
                    .unwrap_err()
                    .contains("--features cuda")
            );
        }
    }
}
