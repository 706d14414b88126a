//! Per-op convolution timings: podium's CPU kernels (forward,
//! backward-data, backward-weights) on the conv shapes of resnet18 and
//! efficientnet_b0 listed in `benches/conv_shapes.json`, one JSON line per
//! case, median of several runs. `benches/conv.py` runs it beside PyTorch
//! and prints the comparison; alone:
//!
//!     cargo bench --bench conv -- [--size 64] [--batch 32] [--reps 5] [--only TEXT]
//!
//! `--only` keeps the cases whose net or name contains TEXT.

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (size, batch, reps) = (
        arg(&args, "--size", 64),
        arg(&args, "--batch", 32),
        arg(&args, "--reps", 5),
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
        let y = forward(&x, &w, &g);
        let fwd = time(reps, || {
            std::hint::black_box(forward(&x, &w, &g));
        });
        let bwd_data = time(reps, || {
            std::hint::black_box(backward_data(&y, &w, &g));
        });
        let bwd_weight = time(reps, || {
            std::hint::black_box(backward_weight(&x, &y, &g));
        });
        println!(
            "{}",
            serde_json::json!({
                "net": s["net"], "name": s["name"], "hw": hw, "batch": batch,
                "forward_ms": fwd, "backward_data_ms": bwd_data, "backward_weight_ms": bwd_weight,
            })
        );
    }
}
