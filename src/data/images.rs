//! Image sets: a directory of PNG, JPEG or TIFF files (8- or 16-bit),
//! found recursively and named by their path relative to it.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat};

use super::DataError;

pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "tif", "tiff"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files under `dir`, relative to it, sorted.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    if !dir.is_dir() {
        return Err(DataError::new(dir, "not a directory of images"));
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))?;
        for e in entries {
            let e = e.map_err(|e| DataError::io(&d, e))?;
            let p = e.path();
            let ft = e.file_type().map_err(|e| DataError::io(&p, e))?;
            if ft.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The names of `dir`'s subdirectories, sorted (numerically when every
/// name is a number: `2` before `10`).
pub fn subdirectories(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        if e.file_type().map_err(|e| DataError::io(dir, e))?.is_dir() {
            v.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    let num = |s: &String| s.parse::<f64>().ok().filter(|x| x.is_finite());
    if v.iter().all(|s| num(s).is_some()) {
        v.sort_by(|a, b| num(a).unwrap_or(0.0).total_cmp(&num(b).unwrap_or(0.0)));
    } else {
        v.sort();
    }
    Ok(v)
}

/// Decodes an image, naming the file when it is corrupt.
pub fn open(path: &Path) -> Result<DynamicImage, DataError> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let mut reader = reader;
    reader.no_limits();
    reader
        .decode()
        .map_err(|e| DataError::new(path, format!("cannot decode the image: {e}")))
}

crate::choice! {
    /// Output format of written images.
    pub enum Format {
        Png = "png",
        Jpeg = "jpeg",
        Tiff = "tiff",
        /// As the input file.
        Same = "same",
    }
}

impl Format {
    /// The file name an image written in this format gets.
    pub fn rename(self, rel: &Path) -> PathBuf {
        match self {
            Format::Same => rel.to_path_buf(),
            Format::Png => rel.with_extension("png"),
            Format::Jpeg => rel.with_extension("jpg"),
            Format::Tiff => rel.with_extension("tif"),
        }
    }
}

/// Writes an image by the extension of `path`; JPEG at `quality`, PNG with
/// fast compression. 16-bit images become 8-bit for JPEG.
pub fn save(img: &DynamicImage, path: &Path, quality: u8) -> Result<(), DataError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let fmt = ImageFormat::from_path(path).map_err(|e| DataError::new(path, e.to_string()))?;
    let file = std::fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    let mut w = BufWriter::new(file);
    let err = |e: image::ImageError| DataError::new(path, format!("cannot write the image: {e}"));
    match fmt {
        ImageFormat::Jpeg => {
            let img = match img {
                DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => img.clone(),
                DynamicImage::ImageLuma16(_)
                | DynamicImage::ImageLumaA8(_)
                | DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLuma8(img.to_luma8()),
                _ => DynamicImage::ImageRgb8(img.to_rgb8()),
            };
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, quality);
            img.write_with_encoder(enc).map_err(err)?;
        }
        ImageFormat::Png => {
            let enc = image::codecs::png::PngEncoder::new_with_quality(
                &mut w,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            );
            img.write_with_encoder(enc).map_err(err)?;
        }
        _ => img.write_to(&mut w, fmt).map_err(err)?,
    }
    std::io::Write::flush(&mut w).map_err(|e| DataError::io(path, e))?;
    Ok(())
}

/// Run-length encoding of a mask as Kaggle's masks: pixels numbered from 1
/// down each column, then across; `start length` pairs. `mask` is row-major.
pub fn rle(mask: &[bool], width: u32, height: u32) -> String {
    let mut out = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for x in 0..width {
        for y in 0..height {
            let n = x as u64 * height as u64 + y as u64 + 1;
            if mask[(y * width + x) as usize] {
                run = Some(match run {
                    Some((start, len)) => (start, len + 1),
                    None => (n, 1),
                });
            } else if let Some((start, len)) = run.take() {
                out.push(format!("{start} {len}"));
            }
        }
    }
    if let Some((start, len)) = run {
        out.push(format!("{start} {len}"));
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_runs_down_columns() {
        // 2x2: top-left and bottom-left set: one run of 2 from pixel 1.
        assert_eq!(rle(&[true, false, true, false], 2, 2), "1 2");
        assert_eq!(rle(&[false, true, false, true], 2, 2), "3 2");
        assert_eq!(rle(&[false; 4], 2, 2), "");
        // 3 wide, 1 high: columns of one pixel each.
        assert_eq!(rle(&[true, true, false], 3, 1), "1 2");
    }
}
