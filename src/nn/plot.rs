//! Pictures people would rather look at than read: training curves and
//! example predictions, drawn into PNGs with the `image` crate and an 8×8
//! bitmap font (no system fonts needed).

use image::{Rgb, RgbImage};

pub const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
pub const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);
pub const GREEN: Rgb<u8> = Rgb([44, 160, 44]);
pub const RED: Rgb<u8> = Rgb([214, 39, 40]);
const GREY: Rgb<u8> = Rgb([200, 200, 200]);
const BLACK: Rgb<u8> = Rgb([30, 30, 30]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// Writes `s` with its top-left corner at (x, y), each font pixel `scale` wide.
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64, color: Rgb<u8>) {
    use font8x8::UnicodeFonts;
    for (k, ch) in s.chars().enumerate() {
        let Some(glyph) = font8x8::BASIC_FONTS.get(ch) else {
            continue;
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(
                                img,
                                x + (k as i64 * 8 + col) * scale + dx,
                                y + row as i64 * scale + dy,
                                color,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// A straight line `w` pixels thick.
pub fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), w: i64, c: Rgb<u8>) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
        for dy in 0..w {
            for dx in 0..w {
                put(img, x as i64 + dx - w / 2, y as i64 + dy - w / 2, c);
            }
        }
    }
}

/// The outline of a rectangle, corners (x0, y0) and (x1, y1).
pub fn rect(img: &mut RgbImage, x0: f64, y0: f64, x1: f64, y1: f64, w: i64, c: Rgb<u8>) {
    line(img, (x0, y0), (x1, y0), w, c);
    line(img, (x1, y0), (x1, y1), w, c);
    line(img, (x1, y1), (x0, y1), w, c);
    line(img, (x0, y1), (x0, y0), w, c);
}

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: Rgb<u8>,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with axes, tick labels, a title and a legend.
pub fn chart(title: &str, x_label: &str, series: &[Series], w: u32, h: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let (l, r, t, b) = (70.0, 16.0, 36.0, 44.0);
    let (pw, ph) = (f64::from(w) - l - r, f64::from(h) - t - b);
    text(&mut img, l as i64, 10, title, 2, BLACK);
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    // Non-negative data keeps a non-negative axis.
    (y0, y1) = (
        if y0 >= 0.0 {
            (y0 - pad).max(0.0)
        } else {
            y0 - pad
        },
        y1 + pad,
    );
    let px = |x: f64| l + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| t + (1.0 - (y - y0) / (y1 - y0)) * ph;
    for i in 0..=4 {
        let v = y0 + (y1 - y0) * f64::from(i) / 4.0;
        line(&mut img, (l, py(v)), (l + pw, py(v)), 1, GREY);
        text(&mut img, 4, py(v) as i64 - 4, &tick(v), 1, BLACK);
        let xv = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let lab = tick(xv);
        text(
            &mut img,
            px(xv) as i64 - 4 * lab.len() as i64,
            (t + ph) as i64 + 6,
            &lab,
            1,
            BLACK,
        );
    }
    line(&mut img, (l, t), (l, t + ph), 1, BLACK);
    line(&mut img, (l, t + ph), (l + pw, t + ph), 1, BLACK);
    text(
        &mut img,
        (l + pw / 2.0) as i64 - 4 * x_label.len() as i64,
        (t + ph) as i64 + 24,
        x_label,
        1,
        BLACK,
    );
    for (k, s) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .collect();
        for p in pts.windows(2) {
            line(
                &mut img,
                (px(p[0].0), py(p[0].1)),
                (px(p[1].0), py(p[1].1)),
                2,
                s.color,
            );
        }
        for p in &pts {
            line(&mut img, (px(p.0), py(p.1)), (px(p.0), py(p.1)), 5, s.color);
        }
        let (lx, ly) = (l as i64 + pw as i64 - 150, t as i64 + 8 + 14 * k as i64);
        line(
            &mut img,
            (lx as f64, ly as f64 + 4.0),
            (lx as f64 + 18.0, ly as f64 + 4.0),
            3,
            s.color,
        );
        text(&mut img, lx + 24, ly, s.name, 1, BLACK);
    }
    img
}

fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || (1e-2..1e4).contains(&a) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.1e}")
    }
}

/// A table of counts as a heat map: each row shaded by its share of the
/// row's total (white to blue), the count in each cell, rows and columns
/// labelled. A confusion matrix (rows the true class, columns the
/// predicted one) or per-class counts (`TP FN FP TN`).
pub fn heatmap(
    title: &str,
    rows_title: &str,
    cols_title: &str,
    row_labels: &[String],
    col_labels: &[String],
    counts: &[Vec<usize>],
) -> RgbImage {
    let cell: i64 = if row_labels.len().max(col_labels.len()) > 20 {
        24
    } else {
        44
    };
    let short = |s: &String, n: usize| -> String { s.chars().take(n).collect() };
    let widest = row_labels
        .iter()
        .map(|l| short(l, 12).chars().count())
        .chain([rows_title.chars().count()])
        .max()
        .unwrap_or(1) as i64;
    let left = 8 + 8 * widest + 8;
    let top: i64 = 44;
    let (nr, nc) = (row_labels.len() as i64, col_labels.len() as i64);
    let w = (left + nc * cell + 16).max(8 * title.chars().count() as i64 + 16);
    let h = top + nr * cell + 28;
    let mut img = RgbImage::from_pixel(w as u32, h as u32, WHITE);
    text(&mut img, 8, 6, title, 1, BLACK);
    text(&mut img, left, 20, &format!("{cols_title} ->"), 1, BLACK);
    text(&mut img, 8, top - 12, rows_title, 1, BLACK);
    for (j, l) in col_labels.iter().enumerate() {
        let s = short(l, (cell / 8) as usize);
        text(&mut img, left + j as i64 * cell + 2, top - 12, &s, 1, BLACK);
    }
    for (i, l) in row_labels.iter().enumerate() {
        let y = top + i as i64 * cell;
        text(&mut img, 8, y + cell / 2 - 4, &short(l, 12), 1, BLACK);
        let total: usize = counts[i].iter().sum();
        for (j, &c) in counts[i].iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            };
            let shade = |white: u8, full: u8| -> u8 {
                (f64::from(white) + (f64::from(full) - f64::from(white)) * share).round() as u8
            };
            let fill = Rgb([
                shade(255, BLUE.0[0]),
                shade(255, BLUE.0[1]),
                shade(255, BLUE.0[2]),
            ]);
            let x = left + j as i64 * cell;
            for yy in y..y + cell - 1 {
                for xx in x..x + cell - 1 {
                    img.put_pixel(xx as u32, yy as u32, fill);
                }
            }
            let label = c.to_string();
            let ink = if share > 0.5 { WHITE } else { BLACK };
            text(
                &mut img,
                x + (cell - 8 * label.len() as i64) / 2,
                y + cell / 2 - 4,
                &label,
                1,
                ink,
            );
        }
    }
    img
}

/// Images in a grid of `columns`, row by row (each the first's size).
pub fn grid(parts: &[RgbImage], columns: usize) -> RgbImage {
    let (tw, th) = parts.first().map_or((1, 1), |p| (p.width(), p.height()));
    let columns = columns.clamp(1, parts.len().max(1));
    let rows = parts.len().div_ceil(columns).max(1);
    let mut out = RgbImage::from_pixel(tw * columns as u32, th * rows as u32, WHITE);
    for (k, p) in parts.iter().enumerate() {
        let (c, r) = ((k % columns) as u32, (k / columns) as u32);
        image::imageops::overlay(&mut out, p, i64::from(c * tw), i64::from(r * th));
    }
    out
}

/// Images side by side (same height), left to right.
pub fn hstack(parts: &[RgbImage]) -> RgbImage {
    let w: u32 = parts.iter().map(RgbImage::width).sum();
    let h = parts.iter().map(RgbImage::height).max().unwrap_or(1);
    let mut out = RgbImage::from_pixel(w.max(1), h, WHITE);
    let mut x = 0;
    for p in parts {
        image::imageops::overlay(&mut out, p, i64::from(x), 0);
        x += p.width();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heatmap_shades_each_cell_by_its_share_of_the_row() {
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let img = heatmap(
            "t",
            "true",
            "predicted",
            &labels,
            &labels,
            &[vec![9, 1], vec![0, 10]],
        );
        // The cell centres' top-left corners: the full cell is the darkest.
        // The row labels' column is as wide as "true".
        let left = 8 + 8 * 4 + 8;
        let px =
            |i: i64, j: i64| *img.get_pixel((left + j * 44 + 2) as u32, (44 + i * 44 + 2) as u32);
        assert_eq!(px(1, 1), BLUE);
        assert_eq!(px(1, 0), WHITE);
        let (a, b) = (px(0, 0), px(0, 1));
        assert!(a.0[0] < b.0[0], "90 % is darker than 10 %: {a:?} {b:?}");
    }

    #[test]
    fn a_chart_draws_its_series_in_their_colours() {
        let s = [Series {
            name: "train",
            color: BLUE,
            points: vec![(1.0, 2.0), (2.0, 1.0), (3.0, 0.5)],
        }];
        let img = chart("loss", "epoch", &s, 400, 300);
        let blue = img.pixels().filter(|p| **p == BLUE).count();
        assert!(blue > 200, "{blue}");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(3.0), "3");
        assert_eq!(tick(1.5e-5), "1.5e-5");
    }
}
