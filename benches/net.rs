//! Whole-network timings in one process, warm: the forward pass in
//! evaluation mode (inference) and forward + backward in training mode
//! (a training step without the optimizer) of podium's nets on random
//! images, one JSON line per net. `benches/net.py` runs it beside PyTorch's
//! same nets and prints the comparison; alone:
//!
//!     cargo bench --bench net -- [--size 64] [--batch 64] [--reps 7] [--archs simple_cnn,resnet18] [--infer-only]
//!
//! Unlike `benches/train.py`, which times `podium op train` and `podium op
//! predict` (decoding, augmentation, the first batch's cold memory and all),
//! this times the nets alone, as PyTorch's side of both benches is timed:
//! the difference between the two is what the ops add around the nets.
//! Threads: `RAYON_NUM_THREADS` (the kernels' pool).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use podium::nn::models::{Arch, Model, Task};
use podium::nn::vars::VarStore;

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Minimum and median of `reps` timed calls after one warm-up, ms.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    if reps == 0 {
        return (f64::NAN, f64::NAN);
    }
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

/// As in `podium` (`src/main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    podium::nn::memory::keep_freed_memory();
    // As `podium` itself runs: candle's element-wise pool does not spin.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: at start-up, before any thread exists.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0") };
    }
    let args: Vec<String> = std::env::args().collect();
    let num = |name: &str, default: usize| {
        arg(&args, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (size, batch, reps) = (num("--size", 64), num("--batch", 64), num("--reps", 7));
    let archs = arg(&args, "--archs").unwrap_or("simple_cnn,resnet18,efficientnet_b0");
    println!(
        "# cpu: {}; podium kernels: {}",
        podium::nn::kernels::isa::cpu_model(),
        podium::nn::kernels::isa::isa().name()
    );
    let dev = Device::Cpu;
    for name in archs.split(',') {
        let arch = Arch::parse(name).unwrap_or_else(|| panic!("no arch {name}"));
        let vars = VarStore::new(&dev, 0);
        let model = Model::new(arch, Task::Classify, 4, vars.clone()).expect("model");
        // Inference as `predict` runs it: on the frozen variables.
        let frozen = Model::new(arch, Task::Classify, 4, vars.frozen()).expect("model");
        let x = Tensor::rand(0f32, 1f32, (batch, 3, size, size), &dev).expect("x");
        let labels: Vec<u32> = (0..batch as u32).map(|i| i % 4).collect();
        let y = Tensor::from_vec(labels, batch, &dev).expect("labels");
        let (infer_min, infer_med) = time(reps, || {
            let o = frozen.forward_t(&x, false).expect("forward");
            std::hint::black_box(o.logits.to_dtype(DType::F32).expect("logits"));
        });
        let reps_train = if args.iter().any(|a| a == "--infer-only") {
            0
        } else {
            reps
        };
        let (train_min, train_med) = time(reps_train, || {
            let o = model.forward_t(&x, true).expect("forward");
            let loss = candle_nn::loss::cross_entropy(&o.logits, &y).expect("loss");
            std::hint::black_box(loss.backward().expect("backward"));
        });
        let per = |ms: f64| ms / batch as f64;
        println!(
            "{}",
            serde_json::json!({
                "arch": name, "size": size, "batch": batch,
                "infer_ms_per_image": per(infer_min), "infer_ms_per_image_median": per(infer_med),
                "train_ms_per_image": per(train_min), "train_ms_per_image_median": per(train_med),
            })
        );
    }
}
