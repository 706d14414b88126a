//! Which ground-truth box each location learns, as torchvision's
//! `FCOSHead.compute_loss` decides, and a batch's targets.
//!
//! A location `(x, y)` of a level of stride `s` may learn box `g` when
//! - it lies within `radius · s` of the box's centre in both directions
//!   (centre sampling, radius 1.5),
//! - it lies inside the box,
//! - the largest of its four distances to the box's sides lies in the
//!   level's range: `(4s, 8s)`, from 0 on the finest level and without
//!   bound on the coarsest;
//!
//! and of the boxes it may learn, it learns the smallest.

use candle_core::{Device, Result, Tensor};

use super::fcos::Level;

/// Every location of every level: its position in input pixels (`(x·s +
/// o, y·s + o)`, where the backbone's features of that cell are centred:
/// `o` = 0 for ResNet and EfficientNet, as torchvision's FCOS places its
/// locations), its level's stride and level index.
#[derive(Clone, Debug, Default)]
pub struct Points {
    pub centers: Vec<[f32; 2]>,
    pub sizes: Vec<f32>,
    pub level: Vec<usize>,
    pub levels: usize,
}

impl Points {
    pub fn new(levels: &[Level]) -> Points {
        let mut p = Points {
            levels: levels.len(),
            ..Default::default()
        };
        for (l, lv) in levels.iter().enumerate() {
            let (s, o) = (lv.stride as f32, lv.offset);
            for y in 0..lv.h {
                for x in 0..lv.w {
                    p.centers.push([x as f32 * s + o, y as f32 * s + o]);
                    p.sizes.push(s);
                    p.level.push(l);
                }
            }
        }
        p
    }

    pub fn len(&self) -> usize {
        self.centers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.centers.is_empty()
    }
}

/// Centre sampling radius, in strides (torchvision's default).
pub const RADIUS: f32 = 1.5;

/// For each location, the index of the box it learns, or -1. `gt` are
/// `x1, y1, x2, y2` in input pixels. Computed in f32 as torchvision does,
/// ties to the first box.
pub fn assign(p: &Points, gt: &[[f32; 4]], radius: f32) -> Vec<i64> {
    let areas: Vec<f32> = gt.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).collect();
    (0..p.len())
        .map(|a| {
            let [x, y] = p.centers[a];
            let s = p.sizes[a];
            let lower = if p.level[a] == 0 { 0.0 } else { 4.0 * s };
            let upper = if p.level[a] + 1 == p.levels {
                f32::INFINITY
            } else {
                8.0 * s
            };
            let mut best = (0f32, -1i64);
            for (g, b) in gt.iter().enumerate() {
                let (gx, gy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
                if (x - gx).abs().max((y - gy).abs()) >= radius * s {
                    continue;
                }
                let d = [x - b[0], y - b[1], b[2] - x, b[3] - y];
                let (lo, hi) = (d.iter().copied().fold(f32::INFINITY, f32::min), {
                    d.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                });
                if lo <= 0.0 || hi <= lower || hi >= upper {
                    continue;
                }
                let v = 1e8f32 - areas[g];
                if v > best.0 {
                    best = (v, g as i64);
                }
            }
            if best.0 < 1e-5 { -1 } else { best.1 }
        })
        .collect()
}

/// What a batch's head outputs are scored against.
pub struct Targets {
    /// `[N, A, K]` one-hot classes (zero rows for background).
    pub cls: Tensor,
    /// Flat indices (`n·A + a`) of the foreground locations, `[M]`.
    pub fg: Tensor,
    /// `[M, 4]` their boxes, `x1, y1, x2, y2` in input pixels.
    pub boxes: Tensor,
    /// `[M, 4]` their centres twice (`x, y, x, y`).
    pub centers: Tensor,
    /// `[M, 1]` their strides.
    pub sizes: Tensor,
    /// `[M]` centre-ness targets.
    pub ctr: Tensor,
    /// `[M]` per foreground location, its object's weight.
    pub weights: Tensor,
    /// `[N, A, 1]` per location, the weight of its classification term: its
    /// object's weight, 1 for background.
    pub cls_weights: Tensor,
    pub num_fg: usize,
}

/// One image's objects: class index, box `x1, y1, x2, y2` in input pixels,
/// and a weight (1, or a pseudo label's).
pub type Object = (usize, [f32; 4], f32);

/// FCOS's centre-ness of a location with distances `l, t, r, b`.
pub fn centerness(d: [f32; 4]) -> f32 {
    let [l, t, r, b] = d;
    ((l.min(r) / l.max(r)) * (t.min(b) / t.max(b))).sqrt()
}

/// The targets of a batch of images' objects.
pub fn targets(
    p: &Points,
    images: &[Vec<Object>],
    classes: usize,
    dev: &Device,
) -> Result<Targets> {
    let a = p.len();
    let mut cls = vec![0f32; images.len() * a * classes];
    let mut cls_w = vec![1f32; images.len() * a];
    let (mut fg, mut boxes, mut centers, mut sizes, mut ctr, mut weights) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (n, objs) in images.iter().enumerate() {
        let gt: Vec<[f32; 4]> = objs.iter().map(|o| o.1).collect();
        for (i, g) in assign(p, &gt, RADIUS).into_iter().enumerate() {
            if g < 0 {
                continue;
            }
            let (k, b, w) = objs[g as usize];
            cls[(n * a + i) * classes + k] = 1.0;
            fg.push((n * a + i) as u32);
            boxes.extend_from_slice(&b);
            let [x, y] = p.centers[i];
            centers.extend_from_slice(&[x, y, x, y]);
            sizes.push(p.sizes[i]);
            ctr.push(centerness([x - b[0], y - b[1], b[2] - x, b[3] - y]));
            weights.push(w);
            cls_w[n * a + i] = w;
        }
    }
    let m = fg.len();
    Ok(Targets {
        cls: Tensor::from_vec(cls, (images.len(), a, classes), dev)?,
        fg: Tensor::from_vec(fg, m, dev)?,
        boxes: Tensor::from_vec(boxes, (m, 4), dev)?,
        centers: Tensor::from_vec(centers, (m, 4), dev)?,
        sizes: Tensor::from_vec(sizes, (m, 1), dev)?,
        ctr: Tensor::from_vec(ctr, m, dev)?,
        weights: Tensor::from_vec(weights, m, dev)?,
        cls_weights: Tensor::from_vec(cls_w, (images.len(), a, 1), dev)?,
        num_fg: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three levels of a 64-pixel image, locations at the cells' centres.
    fn pts() -> Points {
        Points::new(&[
            Level {
                stride: 8,
                h: 8,
                w: 8,
                offset: 4.0,
            },
            Level {
                stride: 16,
                h: 4,
                w: 4,
                offset: 8.0,
            },
            Level {
                stride: 32,
                h: 2,
                w: 2,
                offset: 16.0,
            },
        ])
    }

    #[test]
    fn a_location_learns_the_smallest_box_that_holds_it() {
        let p = pts();
        // Location (3, 3) of the finest level: centre (28, 28).
        let i = 3 * 8 + 3;
        let big = [4.0, 4.0, 52.0, 52.0];
        let small = [20.0, 20.0, 36.0, 36.0];
        let m = assign(&p, &[big, small], RADIUS);
        assert_eq!(m[i], 1);
        // Alone, the big box is learnt there too.
        assert_eq!(assign(&p, &[big], RADIUS)[i], 0);
    }

    #[test]
    fn locations_outside_the_centre_region_or_the_box_learn_nothing() {
        let p = pts();
        let b = [0.0, 0.0, 60.0, 60.0];
        let m = assign(&p, &[b], RADIUS);
        // (0, 0) at (4, 4): 26 px from the centre (30, 30), beyond 1.5 · 8.
        assert_eq!(m[0], -1);
        // (3, 3) at (28, 28): near the centre, distances up to 32 < 64.
        assert_eq!(m[3 * 8 + 3], 0);
        // The coarse levels: 32 ≤ 4 · 16, so P4 is out of range.
        assert!(m[64..80].iter().all(|&g| g == -1));
    }

    #[test]
    fn centerness_is_one_at_the_centre_and_falls_off() {
        assert_eq!(centerness([5.0, 5.0, 5.0, 5.0]), 1.0);
        assert!((centerness([1.0, 5.0, 9.0, 5.0]) - (1.0f32 / 9.0).sqrt()).abs() < 1e-6);
    }
}
