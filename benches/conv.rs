//! Per-op convolution timings: podium's CPU kernels (forward,
//! backward-data, backward-weights) on the conv shapes of resnet18 and
//! efficientnet_b0 listed in `benches/conv_shapes.json`, one JSON line per
//! case, median of several runs. `benches/conv.py` runs it beside PyTorch
//! and prints the comparison; alone:
//!
//!     cargo bench --bench conv -- [--size 64] [--batch 32] [--reps 5] [--only TEXT]
//!
//! `--only` keeps the cases whose net or name contains TEXT. `--device cuda`
//! (a build with `--features cudnn`, on a GPU) times the same three
//! convolutions of podium's conv ops on the GPU instead, each call waited
//! for.

use std::time::Instant;

use podium::nn::kernels::conv::{ConvParams, Geometry, backward_data, backward_weight, forward};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Forward, backward-data and backward-weights on the GPU (ms).
#[cfg(feature = "cuda")]
fn gpu(g: &Geometry, x: &[f32], w: &[f32], reps: usize) -> [f64; 3] {
    use candle_core::{Device, Tensor};
    use podium::nn::kernels::conv::{BackwardData, BackwardWeight, conv2d};
    let dev = Device::new_cuda(0).expect("a GPU");
    let xt = Tensor::from_slice(x, (g.n, g.cin, g.h, g.w), &dev).expect("x");
    let wt = Tensor::from_slice(w, (g.cout, g.cin / g.p.groups, g.kh, g.kw), &dev).expect("w");
    let y = conv2d(&xt, &wt, g.p).expect("forward");
    let (bd, bw) = (
        BackwardData {
            p: g.p,
            hw: (g.h, g.w),
        },
        BackwardWeight {
            p: g.p,
            khw: (g.kh, g.kw),
        },
    );
    let sync = || dev.synchronize().expect("synchronize");
    [
        time(reps, || {
            std::hint::black_box(conv2d(&xt, &wt, g.p).expect("forward"));
            sync();
        }),
        time(reps, || {
            std::hint::black_box(y.apply_op2_no_bwd(&wt, &bd).expect("backward-data"));
            sync();
        }),
        time(reps, || {
            std::hint::black_box(xt.apply_op2_no_bwd(&y, &bw).expect("backward-weights"));
            sync();
        }),
    ]
}

#[cfg(not(feature = "cuda"))]
fn gpu(_: &Geometry, _: &[f32], _: &[f32], _: usize) -> [f64; 3] {
    eprintln!("--device cuda needs a build with `--features cudnn`");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let on_gpu = args
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .is_some_and(|d| d == "cuda");
    let (size, batch, reps) = (
        arg(&args, "--size", 64),
        arg(&args, "--batch", 32),
        arg(&args, "--reps", 5),
    );
    // What ran: `benches/conv.py` prints this line above its table.
    println!(
        "# cpu: {}; podium kernels: {}",
        podium::nn::kernels::isa::cpu_model(),
        podium::nn::kernels::isa::isa().name()
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/conv_shapes.json");
    let shapes: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("shapes")).expect("json");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    for s in shapes {
        let label = format!(
            "{} {}",
            s["net"].as_str().unwrap_or(""),
            s["name"].as_str().unwrap_or("")
        );
        if only.is_some_and(|o| !label.contains(o.as_str())) {
            continue;
        }
        let u = |k: &str| s[k].as_u64().expect(k) as usize;
        let hw = size / u("at");
        let p = ConvParams {
            stride: u("stride"),
            padding: u("pad"),
            dilation: 1,
            groups: u("groups"),
        };
        let (cin, cout, k) = (u("cin"), u("cout"), u("k"));
        let g =
            Geometry::new([batch, cin, hw, hw], [cout, cin / p.groups, k, k], p).expect("shape");
        let x: Vec<f32> = (0..batch * cin * hw * hw)
            .map(|i| (i % 13) as f32 * 0.1)
            .collect();
        let w: Vec<f32> = (0..cout * cin / p.groups * k * k)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let [fwd, bwd_data, bwd_weight] = if on_gpu {
            gpu(&g, &x, &w, reps)
        } else {
            let y = forward(&x, &w, &g);
            [
                time(reps, || {
                    std::hint::black_box(forward(&x, &w, &g));
                }),
                time(reps, || {
                    std::hint::black_box(backward_data(&y, &w, &g));
                }),
                time(reps, || {
                    std::hint::black_box(backward_weight(&x, &y, &g));
                }),
            ]
        };
        println!(
            "{}",
            serde_json::json!({
                "net": s["net"], "name": s["name"], "hw": hw, "batch": batch,
                "forward_ms": fwd, "backward_data_ms": bwd_data, "backward_weight_ms": bwd_weight,
            })
        );
    }
}
