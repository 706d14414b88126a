//! Augmentations on RGB images, box-aware: the eight dihedral transforms
//! (flips, 90° rotations, transpose; also the TTA variants), random resized
//! crop, brightness and contrast.

use image::RgbImage;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// The TTA variants, named as the HPA solution names them.
pub const TTA_NAMES: [&str; 8] = [
    "default",
    "flipud",
    "fliplr",
    "transpose",
    "flipud_lr",
    "flipud_transpose",
    "fliplr_transpose",
    "flipud_lr_transpose",
];

/// One of the eight symmetries of the square: flip up-down, then left-right,
/// then transpose, each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dihedral {
    pub flipud: bool,
    pub fliplr: bool,
    pub transpose: bool,
}

impl Dihedral {
    pub fn parse(name: &str) -> Option<Dihedral> {
        let i = TTA_NAMES.iter().position(|n| *n == name)?;
        Some(Dihedral::all()[i])
    }

    /// All eight, in [`TTA_NAMES`] order.
    pub fn all() -> [Dihedral; 8] {
        let d = |flipud, fliplr, transpose| Dihedral {
            flipud,
            fliplr,
            transpose,
        };
        [
            d(false, false, false),
            d(true, false, false),
            d(false, true, false),
            d(false, false, true),
            d(true, true, false),
            d(true, false, true),
            d(false, true, true),
            d(true, true, true),
        ]
    }

    /// Where output pixel (y, x) of an `s × s` image comes from.
    fn source(self, y: usize, x: usize, s: usize) -> (usize, usize) {
        let (mut y, mut x) = (y, x);
        if self.transpose {
            std::mem::swap(&mut y, &mut x);
        }
        if self.fliplr {
            x = s - 1 - x;
        }
        if self.flipud {
            y = s - 1 - y;
        }
        (y, x)
    }

    /// This transform followed by `next`.
    pub fn then(self, next: Dihedral) -> Dihedral {
        let s = 3;
        let probe = |f: &dyn Fn(usize, usize) -> (usize, usize)| [f(0, 1), f(1, 2), f(2, 0)];
        let want = probe(&|y, x| {
            let (y, x) = next.source(y, x, s);
            self.source(y, x, s)
        });
        Dihedral::all()
            .into_iter()
            .find(|c| probe(&|y, x| c.source(y, x, s)) == want)
            .expect("the dihedral group is closed")
    }

    pub fn inverse(self) -> Dihedral {
        Dihedral::all()
            .into_iter()
            .find(|c| self.then(*c) == Dihedral::default())
            .expect("every element has an inverse")
    }

    /// Applies the transform to a square CHW image.
    pub fn apply(self, chw: &[f32], c: usize, s: usize) -> Vec<f32> {
        if self == Dihedral::default() {
            return chw.to_vec();
        }
        let mut out = vec![0f32; chw.len()];
        for y in 0..s {
            for x in 0..s {
                let (sy, sx) = self.source(y, x, s);
                for ch in 0..c {
                    out[ch * s * s + y * s + x] = chw[ch * s * s + sy * s + sx];
                }
            }
        }
        out
    }

    /// Maps a normalized box `[cx, cy, w, h]` the way [`Dihedral::apply`] maps the image.
    pub fn map_box(self, b: [f32; 4]) -> [f32; 4] {
        let [mut cx, mut cy, mut w, mut h] = b;
        if self.flipud {
            cy = 1.0 - cy;
        }
        if self.fliplr {
            cx = 1.0 - cx;
        }
        if self.transpose {
            std::mem::swap(&mut cx, &mut cy);
            std::mem::swap(&mut w, &mut h);
        }
        [cx, cy, w, h]
    }
}

/// Training augmentations; probabilities in [0, 1].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aug {
    pub hflip: f64,
    pub vflip: f64,
    pub rot90: f64,
    pub transpose: f64,
    /// Random resized crop: the area fraction's range; `[1, 1]` is off.
    pub crop_scale: [f64; 2],
    pub brightness: f64,
    pub contrast: f64,
    /// Saturation jitter σ: blend each pixel with its grey by a factor in
    /// [1 − σ, 1 + σ] (torchvision's `ColorJitter` saturation).
    pub saturation: f64,
    /// Cutout (Albumentations' `CoarseDropout`): with this probability,
    /// `cutout_holes` squares of side `cutout_size` × the image's side,
    /// placed at random (clipped at the borders), set to black.
    pub cutout: f64,
    pub cutout_holes: usize,
    pub cutout_size: f64,
    /// Train on a random window of this side at native resolution (task
    /// segment's tiles) before any crop; `None`: the whole image.
    pub window: Option<u32>,
}

impl Aug {
    /// A random `side × side` window (x, y, w, h) of a `w × h` image,
    /// clipped to the image.
    pub fn window_region(side: u32, w: u32, h: u32, rng: &mut ChaCha8Rng) -> (u32, u32, u32, u32) {
        let (cw, ch) = (side.min(w), side.min(h));
        let x = rng.random_range(0..=w - cw);
        let y = rng.random_range(0..=h - ch);
        (x, y, cw, ch)
    }

    pub fn crops(&self) -> bool {
        self.crop_scale[0] < 1.0
    }

    /// A random dihedral transform, each part drawn with its probability.
    pub fn dihedral(&self, rng: &mut ChaCha8Rng) -> Dihedral {
        let mut d = Dihedral::default();
        if rng.random_bool(self.hflip.clamp(0.0, 1.0)) {
            d = d.then(Dihedral::parse("fliplr").expect("known"));
        }
        if rng.random_bool(self.vflip.clamp(0.0, 1.0)) {
            d = d.then(Dihedral::parse("flipud").expect("known"));
        }
        if rng.random_bool(self.rot90.clamp(0.0, 1.0)) {
            // 90°, 180° or 270°.
            let r = ["fliplr_transpose", "flipud_lr", "flipud_transpose"][rng.random_range(0..3)];
            d = d.then(Dihedral::parse(r).expect("known"));
        }
        if rng.random_bool(self.transpose.clamp(0.0, 1.0)) {
            d = d.then(Dihedral::parse("transpose").expect("known"));
        }
        d
    }

    /// torchvision's `RandomResizedCrop` region (x, y, w, h) in an image of
    /// `w × h`: area fraction in `crop_scale`, aspect ratio in [3/4, 4/3]
    /// (log-uniform), ten tries, then the centre.
    pub fn crop_region(&self, w: u32, h: u32, rng: &mut ChaCha8Rng) -> (u32, u32, u32, u32) {
        let area = f64::from(w) * f64::from(h);
        let (lo, hi) = (
            self.crop_scale[0],
            self.crop_scale[1].max(self.crop_scale[0]),
        );
        let (lr0, lr1) = ((3f64 / 4.0).ln(), (4f64 / 3.0).ln());
        for _ in 0..10 {
            let target = area * rng.random_range(lo..=hi);
            let ratio = rng.random_range(lr0..=lr1).exp();
            let cw = (target * ratio).sqrt().round() as u32;
            let ch = (target / ratio).sqrt().round() as u32;
            if cw >= 1 && ch >= 1 && cw <= w && ch <= h {
                let x = rng.random_range(0..=w - cw);
                let y = rng.random_range(0..=h - ch);
                return (x, y, cw, ch);
            }
        }
        let s = w.min(h);
        ((w - s) / 2, (h - s) / 2, s, s)
    }

    /// Brightness and contrast as torchvision's `ColorJitter`: scale by
    /// b ∈ [1 − β, 1 + β], then blend with the grey mean by c ∈ [1 − γ, 1 + γ].
    pub fn jitter(&self, chw: &mut [f32], rng: &mut ChaCha8Rng) {
        if self.brightness > 0.0 {
            let b = rng.random_range(1.0 - self.brightness..=1.0 + self.brightness) as f32;
            chw.iter_mut().for_each(|v| *v = (*v * b).clamp(0.0, 1.0));
        }
        if self.contrast > 0.0 {
            let c = rng.random_range(1.0 - self.contrast..=1.0 + self.contrast) as f32;
            let n = chw.len() / 3;
            let grey: f32 = (0..n)
                .map(|i| 0.299 * chw[i] + 0.587 * chw[n + i] + 0.114 * chw[2 * n + i])
                .sum::<f32>()
                / n.max(1) as f32;
            chw.iter_mut()
                .for_each(|v| *v = (grey + c * (*v - grey)).clamp(0.0, 1.0));
        }
        let n = chw.len() / 3;
        if self.saturation > 0.0 {
            let s = rng.random_range(1.0 - self.saturation..=1.0 + self.saturation) as f32;
            for i in 0..n {
                let grey = 0.299 * chw[i] + 0.587 * chw[n + i] + 0.114 * chw[2 * n + i];
                for c in 0..3 {
                    let v = &mut chw[c * n + i];
                    *v = (grey + s * (*v - grey)).clamp(0.0, 1.0);
                }
            }
        }
        if self.cutout > 0.0 && rng.random_bool(self.cutout.clamp(0.0, 1.0)) {
            let side = (n as f64).sqrt() as usize;
            let hole = ((self.cutout_size * side as f64).round() as usize).clamp(1, side.max(1));
            for _ in 0..self.cutout_holes {
                // The hole's centre anywhere in the image, as CoarseDropout.
                let cy = rng.random_range(0..side.max(1));
                let cx = rng.random_range(0..side.max(1));
                let (y0, x0) = (cy.saturating_sub(hole / 2), cx.saturating_sub(hole / 2));
                let (y1, x1) = ((y0 + hole).min(side), (x0 + hole).min(side));
                for c in 0..3 {
                    for y in y0..y1 {
                        chw[c * n + y * side + x0..c * n + y * side + x1].fill(0.0);
                    }
                }
            }
        }
    }
}

/// An RGB image as CHW floats in [0, 1].
pub fn to_chw(img: &RgbImage) -> Vec<f32> {
    let n = (img.width() * img.height()) as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = f32::from(p[c]) / 255.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn dihedral_names_are_the_eight_distinct_symmetries() {
        let s = 3;
        let img: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let outs: Vec<Vec<f32>> = Dihedral::all()
            .iter()
            .map(|d| d.apply(&img, 1, s))
            .collect();
        for i in 0..8 {
            for j in 0..i {
                assert_ne!(outs[i], outs[j], "{} = {}", TTA_NAMES[i], TTA_NAMES[j]);
            }
        }
        // np.flipud / np.fliplr / .T
        assert_eq!(outs[1], [6., 7., 8., 3., 4., 5., 0., 1., 2.]);
        assert_eq!(outs[2], [2., 1., 0., 5., 4., 3., 8., 7., 6.]);
        assert_eq!(outs[3], [0., 3., 6., 1., 4., 7., 2., 5., 8.]);
    }

    #[test]
    fn inverse_undoes_and_boxes_follow_pixels() {
        let s = 4;
        // A one-pixel "box" at (x=1, y=0): its centre moves with the pixel.
        let mut img = vec![0f32; 16];
        img[1] = 1.0;
        let b = [1.5 / 4.0, 0.5 / 4.0, 0.25, 0.25];
        for d in Dihedral::all() {
            let out = d.apply(&img, 1, s);
            assert_eq!(d.inverse().apply(&out, 1, s), img);
            let k = out.iter().position(|v| *v == 1.0).unwrap();
            let m = d.map_box(b);
            assert_eq!(
                ((m[0] * 4.0) as usize, (m[1] * 4.0) as usize),
                (k % 4, k / 4),
                "{d:?}"
            );
            let back = d.inverse().map_box(m);
            assert!(back.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-6));
        }
    }

    fn noise(side: usize) -> Vec<f32> {
        let mut r = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
        (0..3 * side * side)
            .map(|_| r.random_range(0.1f32..0.9))
            .collect()
    }

    #[test]
    fn saturation_zero_is_grey_and_one_is_the_image() {
        let img = noise(8);
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        // σ = 1 draws a factor in [0, 2]; with this seed it is well away
        // from 1, and the result stays between the grey and the image's
        // extrapolation: each pixel's channels keep their grey.
        let a = Aug {
            saturation: 1.0,
            ..Default::default()
        };
        let mut out = img.clone();
        a.jitter(&mut out, &mut rng);
        let n = 64;
        let grey = |v: &[f32], i: usize| 0.299 * v[i] + 0.587 * v[n + i] + 0.114 * v[2 * n + i];
        let mut changed = false;
        for i in 0..n {
            let unclamped = (0..3).all(|c| out[c * n + i] > 0.0 && out[c * n + i] < 1.0);
            if unclamped {
                assert!((grey(&out, i) - grey(&img, i)).abs() < 1e-5, "pixel {i}");
            }
            changed |= (out[i] - img[i]).abs() > 1e-3;
        }
        assert!(changed);
    }

    #[test]
    fn cutout_blacks_out_squares_of_the_asked_size() {
        let img = noise(16);
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
        let a = Aug {
            cutout: 1.0,
            cutout_holes: 1,
            cutout_size: 0.25,
            ..Default::default()
        };
        let mut out = img.clone();
        a.jitter(&mut out, &mut rng);
        let n = 256;
        let black: Vec<usize> = (0..n)
            .filter(|&i| (0..3).all(|c| out[c * n + i] == 0.0))
            .collect();
        // One 4 × 4 hole, fewer pixels where a border clips it.
        assert!(!black.is_empty() && black.len() <= 16, "{}", black.len());
        let (ys, xs): (Vec<usize>, Vec<usize>) = black.iter().map(|i| (i / 16, i % 16)).unzip();
        let span = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap() + 1;
        assert!(span(&ys) <= 4 && span(&xs) <= 4);
        assert_eq!(black.len(), span(&ys) * span(&xs), "a rectangle");
        // Probability 0 leaves the image as it is.
        let a = Aug {
            cutout: 0.0,
            cutout_holes: 1,
            cutout_size: 0.25,
            ..Default::default()
        };
        let mut same = img.clone();
        a.jitter(&mut same, &mut rng);
        assert_eq!(same, img);
    }

    #[test]
    fn crops_stay_inside_and_respect_the_area_range() {
        let a = Aug {
            crop_scale: [0.3, 0.6],
            ..Aug::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let (x, y, w, h) = a.crop_region(40, 30, &mut rng);
            assert!(x + w <= 40 && y + h <= 30);
            let f = f64::from(w * h) / 1200.0;
            assert!(f > 0.25 && f < 0.68, "{f}");
        }
    }
}
