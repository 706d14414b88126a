//! COCO's run-length masks, as pycocotools' `mask` module (maskApi.c)
//! computes them: runs down each column (column-major), starting with a
//! run of zeros; the compressed string form (`counts` as text, 6 bits per
//! character); polygons rasterized as `frPyObjects` does; area, bounding
//! box, union and intersection, and the IoU COCOeval's `segm` matches by.
//!
//! ```
//! use podium::data::coco_rle::Rle;
//! // A 3×2 mask (row-major) with the middle column set.
//! let m = [false, true, false, false, true, false];
//! let r = Rle::encode(&m, 2, 3);
//! assert_eq!(r.counts, [2, 2, 2]);
//! assert_eq!(r.area(), 2);
//! assert_eq!(r.bbox(), [1.0, 0.0, 1.0, 2.0]);
//! assert_eq!(Rle::from_string(&r.to_string(), 2, 3).unwrap(), r);
//! assert_eq!(r.decode(), m);
//! ```

use serde::{Deserialize, Serialize};

/// A binary mask of `h` × `w` pixels as alternating run lengths down the
/// columns, zeros first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rle {
    pub h: usize,
    pub w: usize,
    pub counts: Vec<u32>,
}

/// A COCO `segmentation`: polygons (`[[x1, y1, x2, y2, …], …]`, pixels) or
/// a run-length mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    Polygons(Vec<Vec<f64>>),
    Rle(RleJson),
}

/// A run-length mask as COCO files write it: `size` is `[height, width]`;
/// `counts` compressed (a string, results and crowd annotations) or not (a
/// list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RleJson {
    pub size: [usize; 2],
    pub counts: Counts,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Counts {
    Compressed(String),
    Raw(Vec<u32>),
}

impl Rle {
    /// The runs of a row-major `h × w` mask.
    pub fn encode(mask: &[bool], h: usize, w: usize) -> Rle {
        assert_eq!(mask.len(), h * w, "mask of {h}×{w} pixels");
        let mut counts = Vec::new();
        let (mut p, mut c) = (false, 0u32);
        for x in 0..w {
            for y in 0..h {
                let v = mask[y * w + x];
                if v != p {
                    counts.push(c);
                    c = 0;
                    p = v;
                }
                c += 1;
            }
        }
        counts.push(c);
        Rle { h, w, counts }
    }

    /// The row-major mask.
    pub fn decode(&self) -> Vec<bool> {
        let mut m = vec![false; self.h * self.w];
        let mut i = 0usize;
        let mut v = false;
        for &c in &self.counts {
            for _ in 0..c {
                if i >= m.len() {
                    return m;
                }
                if v {
                    let (x, y) = (i / self.h, i % self.h);
                    m[y * self.w + x] = true;
                }
                i += 1;
            }
            v = !v;
        }
        m
    }

    /// Pixels set.
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| u64::from(c))
            .sum()
    }

    /// `[x, y, w, h]` of the set pixels (pycocotools' `toBbox`; zeros when
    /// none is set).
    pub fn bbox(&self) -> [f64; 4] {
        let (h, w) = (self.h as u64, self.w as u64);
        let m = self.counts.len() / 2 * 2;
        if m == 0 || h == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye) = (w, h, 0u64, 0u64);
        let (mut cc, mut xp) = (0u64, 0u64);
        for j in 0..m {
            cc += u64::from(self.counts[j]);
            let t = cc - (j % 2) as u64;
            let (y, x) = (t % h, t / h);
            if j % 2 == 0 {
                xp = x;
            } else if xp < x {
                ys = 0;
                ye = h - 1;
            }
            xs = xs.min(x);
            xe = xe.max(x);
            ys = ys.min(y);
            ye = ye.max(y);
        }
        [
            xs as f64,
            ys as f64,
            (xe - xs + 1) as f64,
            (ye - ys + 1) as f64,
        ]
    }

    /// pycocotools' `rleFrPoly`: one polygon (`x1, y1, x2, y2, …` in pixels)
    /// rasterized on a 5× finer grid along its boundary.
    pub fn from_polygon(xy: &[f64], h: usize, w: usize) -> Rle {
        let scale = 5.0;
        let k = xy.len() / 2;
        if k == 0 {
            return Rle {
                h,
                w,
                counts: vec![(h * w) as u32],
            };
        }
        let mut x: Vec<i64> = (0..k).map(|j| (scale * xy[2 * j] + 0.5) as i64).collect();
        let mut y: Vec<i64> = (0..k)
            .map(|j| (scale * xy[2 * j + 1] + 0.5) as i64)
            .collect();
        x.push(x[0]);
        y.push(y[0]);
        let (mut u, mut v) = (Vec::new(), Vec::new());
        for j in 0..k {
            let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
            let (dx, dy) = ((xe - xs).abs(), (ys - ye).abs());
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if flip {
                std::mem::swap(&mut xs, &mut xe);
                std::mem::swap(&mut ys, &mut ye);
            }
            if dx >= dy {
                let s = if dx == 0 {
                    0.0
                } else {
                    (ye - ys) as f64 / dx as f64
                };
                for d in 0..=dx {
                    let t = if flip { dx - d } else { d };
                    u.push(t + xs);
                    v.push((ys as f64 + s * t as f64 + 0.5) as i64);
                }
            } else {
                let s = (xe - xs) as f64 / dy as f64;
                for d in 0..=dy {
                    let t = if flip { dy - d } else { d };
                    v.push(t + ys);
                    u.push((xs as f64 + s * t as f64 + 0.5) as i64);
                }
            }
        }
        // Points along the y-boundary, back on the pixel grid.
        let mut a: Vec<u64> = Vec::new();
        for j in 1..u.len() {
            if u[j] == u[j - 1] {
                continue;
            }
            let xd = (if u[j] < u[j - 1] { u[j] } else { u[j] - 1 }) as f64;
            let xd = (xd + 0.5) / scale - 0.5;
            if xd.floor() != xd || xd < 0.0 || xd > (w as f64 - 1.0) {
                continue;
            }
            let yd = (if v[j] < v[j - 1] { v[j] } else { v[j - 1] }) as f64;
            let yd = ((yd + 0.5) / scale - 0.5).clamp(0.0, h as f64).ceil();
            a.push(xd as u64 * h as u64 + yd as u64);
        }
        a.push((h * w) as u64);
        a.sort_unstable();
        let mut p = 0u64;
        for e in a.iter_mut() {
            let t = *e;
            *e -= p;
            p = t;
        }
        let mut b: Vec<u32> = vec![a[0] as u32];
        let mut j = 1;
        while j < a.len() {
            if a[j] > 0 {
                b.push(a[j] as u32);
                j += 1;
            } else {
                j += 1;
                if j < a.len() {
                    *b.last_mut().expect("one run at least") += a[j] as u32;
                    j += 1;
                }
            }
        }
        Rle { h, w, counts: b }
    }

    /// pycocotools' `frBbox`: a box `[x, y, w, h]` as the polygon of its corners.
    pub fn from_bbox(bb: [f64; 4], h: usize, w: usize) -> Rle {
        let (xs, ys) = (bb[0], bb[1]);
        let (xe, ye) = (xs + bb[2], ys + bb[3]);
        Rle::from_polygon(&[xs, ys, xs, ye, xe, ye, xe, ys], h, w)
    }

    /// pycocotools' `merge`: the union (or intersection) of masks of one size.
    pub fn merge(rles: &[Rle], intersect: bool) -> Rle {
        let Some(first) = rles.first() else {
            return Rle {
                h: 0,
                w: 0,
                counts: Vec::new(),
            };
        };
        let mut acc = first.clone();
        for b in &rles[1..] {
            if (b.h, b.w) != (acc.h, acc.w) {
                return Rle {
                    h: 0,
                    w: 0,
                    counts: Vec::new(),
                };
            }
            let mut out = Vec::new();
            let (mut cur, mut cc) = (false, 0u32);
            zip_runs(&acc, b, |c, va, vb| {
                let v = if intersect { va && vb } else { va || vb };
                if v != cur {
                    out.push(cc);
                    cc = 0;
                    cur = v;
                }
                cc += c;
            });
            out.push(cc);
            acc = Rle {
                h: acc.h,
                w: acc.w,
                counts: out,
            };
        }
        acc
    }

    /// The inverse of `to_string` ([`Rle`]'s `Display`).
    pub fn from_string(s: &str, h: usize, w: usize) -> Result<Rle, String> {
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::new();
        let mut p = 0;
        while p < bytes.len() {
            let (mut x, mut k) = (0i64, 0u32);
            loop {
                let Some(&b) = bytes.get(p) else {
                    return Err("the run-length string ends inside a number".into());
                };
                if !(48..48 + 64).contains(&b) {
                    return Err(format!("`{}` is not a run-length character", b as char));
                }
                if k >= 12 {
                    return Err("a run length is too long".into());
                }
                let c = i64::from(b - 48);
                x |= (c & 0x1f) << (5 * k);
                p += 1;
                k += 1;
                if c & 0x20 == 0 {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
            }
            if counts.len() > 2 {
                x += i64::from(counts[counts.len() - 2]);
            }
            let x = u32::try_from(x).map_err(|_| format!("a run of {x} pixels"))?;
            counts.push(x);
        }
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if total != (h * w) as u64 {
            return Err(format!(
                "the runs cover {total} pixels, the mask has {h}×{w} = {}",
                h * w
            ));
        }
        Ok(Rle { h, w, counts })
    }

    /// pycocotools' `rleIou` of a detection and a ground truth: shared
    /// pixels over the union, or over the detection's area when the ground
    /// truth is a crowd; 0 when the boxes do not overlap, -1 when the sizes
    /// differ.
    pub fn iou(dt: &Rle, gt: &Rle, crowd: bool) -> f64 {
        if crate::metrics::coco::bb_iou(&dt.bbox(), &gt.bbox(), crowd) <= 0.0 {
            return 0.0;
        }
        if (dt.h, dt.w) != (gt.h, gt.w) {
            return -1.0;
        }
        let (mut i, mut u) = (0u64, 0u64);
        zip_runs(dt, gt, |c, va, vb| {
            if va || vb {
                u += u64::from(c);
                if va && vb {
                    i += u64::from(c);
                }
            }
        });
        if i == 0 {
            u = 1;
        } else if crowd {
            u = dt.area();
        }
        i as f64 / u as f64
    }
}

/// pycocotools' compressed `counts`: each run (after the first two, the
/// difference from the run two before) in 5-bit groups with a continuation
/// bit, as characters from `0` (48).
impl std::fmt::Display for Rle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = i64::from(c);
            if i > 2 {
                x -= i64::from(self.counts[i - 2]);
            }
            loop {
                let mut ch = (x & 0x1f) as u8;
                x >>= 5;
                let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    ch |= 0x20;
                }
                f.write_char((ch + 48) as char)?;
                if !more {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Walks two masks' runs together, as maskApi.c's merge and IoU loops do:
/// `f(length, set in a, set in b)` for each stretch where neither changes.
fn zip_runs(a: &Rle, b: &Rle, mut f: impl FnMut(u32, bool, bool)) {
    let (Some(&a0), Some(&b0)) = (a.counts.first(), b.counts.first()) else {
        return;
    };
    let (mut ai, mut bi) = (1usize, 1usize);
    let (mut ca, mut cb) = (a0, b0);
    let (mut va, mut vb) = (false, false);
    loop {
        let c = ca.min(cb);
        f(c, va, vb);
        ca -= c;
        if ca == 0 && ai < a.counts.len() {
            ca = a.counts[ai];
            ai += 1;
            va = !va;
        }
        cb -= c;
        if cb == 0 && bi < b.counts.len() {
            cb = b.counts[bi];
            bi += 1;
            vb = !vb;
        }
        if ca == 0 && cb == 0 {
            break;
        }
    }
}

/// The Open Images / HuBMAP 2023 text form of a mask: the compressed
/// `counts` string, zlib-compressed (best compression), in base64 (the
/// competitions' `encode_binary_mask`).
pub fn oid_encode(r: &Rle) -> String {
    use base64::Engine;
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(r.to_string().as_bytes())
        .expect("writing to memory");
    let bytes = z.finish().expect("writing to memory");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The inverse of [`oid_encode`], for an `h × w` mask.
pub fn oid_decode(s: &str, h: usize, w: usize) -> Result<Rle, String> {
    use base64::Engine;
    use std::io::Read;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let mut counts = String::new();
    flate2::read::ZlibDecoder::new(&bytes[..])
        .take(1 << 30)
        .read_to_string(&mut counts)
        .map_err(|e| format!("not a zlib stream of run lengths: {e}"))?;
    Rle::from_string(&counts, h, w)
}

impl RleJson {
    /// The mask; uncompressed counts are taken as they are (pycocotools'
    /// `frUncompressedRLE`).
    pub fn to_rle(&self) -> Result<Rle, String> {
        let [h, w] = self.size;
        match &self.counts {
            Counts::Compressed(s) => Rle::from_string(s, h, w),
            Counts::Raw(c) => {
                let total: u64 = c.iter().map(|&v| u64::from(v)).sum();
                if total != (h * w) as u64 {
                    return Err(format!(
                        "the runs cover {total} pixels, the mask has {h}×{w} = {}",
                        h * w
                    ));
                }
                Ok(Rle {
                    h,
                    w,
                    counts: c.clone(),
                })
            }
        }
    }

    /// The compressed form of `r`.
    pub fn from_rle(r: &Rle) -> RleJson {
        RleJson {
            size: [r.h, r.w],
            counts: Counts::Compressed(r.to_string()),
        }
    }
}

impl Segmentation {
    /// The mask on an `h × w` image, as pycocotools' `annToRLE`: polygons
    /// rasterized and merged, run-length masks as they are.
    pub fn to_rle(&self, h: usize, w: usize) -> Result<Rle, String> {
        match self {
            Segmentation::Polygons(p) if p.is_empty() => Ok(Rle {
                h,
                w,
                counts: vec![(h * w) as u32],
            }),
            Segmentation::Polygons(p) => {
                let parts: Vec<Rle> = p
                    .iter()
                    .map(|poly| {
                        if poly.len() < 6 || poly.len() % 2 != 0 {
                            Err(format!(
                                "a polygon needs an even number (6 or more) of coordinates, not {}",
                                poly.len()
                            ))
                        } else {
                            Ok(Rle::from_polygon(poly, h, w))
                        }
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Rle::merge(&parts, false))
            }
            Segmentation::Rle(r) => {
                if r.size != [h, w] {
                    return Err(format!(
                        "a mask of {}×{} on an image of {h}×{w}",
                        r.size[0], r.size[1]
                    ));
                }
                r.to_rle()
            }
        }
    }
}
