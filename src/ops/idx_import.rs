//! `idx_import`: turns an IDX image file and its label file (the MNIST and
//! Fashion-MNIST format, gzipped or not) into a directory of PNGs named by
//! id and a labels table, the shape every other op takes.
//!
//! ```toml
//! [inputs.train_idx]
//! path = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
//!
//! [inputs.train_labels_idx]
//! path = "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz"
//!
//! [stages.train_set]
//! op = "idx_import"
//! images = "${inputs.train_idx}"
//! labels = "${inputs.train_labels_idx}"
//! prefix = "train"
//! ```
//!
//! Outputs `images/` (`<prefix>_00000.png` …, 8-bit grey) and `labels.csv`
//! (`id,label`).

use std::io::Read;
use std::path::Path;

use rayon::prelude::*;

use std::path::PathBuf;

use super::{Op, OpContext, OpError};
use crate::data::DataError;
use crate::data::table::Table;

pub struct IdxImport;

crate::params! {
    /// The parameters of `idx_import`.
    pub struct Args {
        /// an IDX file of 8-bit images (magic `0x00000803`), gzipped or not
        images: PathBuf,
        /// the IDX file of their 8-bit labels (`0x00000801`), as many as images
        labels: PathBuf,
        /// ids are `<prefix>_<index>`, the index zero-padded to five digits
        prefix: String = "img",
        /// import only the first this-many images; 0: all
        limit: usize = 0,
    }
}

/// The bytes of a file, gunzipped when it starts with gzip's magic.
fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::new(path, format!("cannot gunzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX file's dimensions and data (8-bit only).
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, usize), DataError> {
    let bad = |m: &str| DataError::new(path, format!("not an 8-bit IDX file: {m}"));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("no IDX magic"));
    }
    if bytes[2] != 0x08 {
        return Err(bad(&format!(
            "element type 0x{:02x}, not unsigned bytes",
            bytes[2]
        )));
    }
    let rank = usize::from(bytes[3]);
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(bad("truncated header"));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() != header + n {
        return Err(bad(&format!(
            "{} data bytes for dimensions {dims:?}, which need {n}",
            bytes.len() - header
        )));
    }
    Ok((dims, header))
}

impl Op for IdxImport {
    type Params = Args;
    const NAME: &'static str = "idx_import";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Convert IDX images and labels (MNIST, Fashion-MNIST) into PNGs and a labels table.";
    const INPUTS: &'static [&'static str] = &["images", "labels"];

    fn outputs(&self, _: &Args) -> Vec<String> {
        vec!["images".into(), "labels.csv".into()]
    }

    fn run(&self, a: Args, cx: &mut OpContext) -> Result<(), OpError> {
        let (ip, lp) = (a.images, a.labels);
        let ib = read(&ip)?;
        let lb = read(&lp)?;
        let (idims, ih) = parse_idx(&ip, &ib)?;
        let (ldims, lh) = parse_idx(&lp, &lb)?;
        if idims.len() != 3 || ldims.len() != 1 {
            return Err(DataError::new(
                &ip,
                format!(
                    "expected images [n, rows, cols] and labels [n]; got {idims:?} and {ldims:?}"
                ),
            )
            .into());
        }
        if idims[0] != ldims[0] {
            return Err(DataError::new(
                &lp,
                format!(
                    "{} labels for {} images in {}",
                    ldims[0],
                    idims[0],
                    ip.display()
                ),
            )
            .into());
        }
        let limit = a.limit;
        let n = if limit > 0 {
            idims[0].min(limit)
        } else {
            idims[0]
        };
        let (h, w) = (idims[1], idims[2]);
        let prefix = a.prefix;
        let dir = cx.out_dir.join("images");
        std::fs::create_dir_all(&dir).map_err(|e| OpError::io(&dir, e))?;
        let id = |i: usize| format!("{prefix}_{i:05}");
        cx.pool()?.install(|| {
            (0..n).into_par_iter().try_for_each(|i| {
                let px = ib[ih + i * h * w..ih + (i + 1) * h * w].to_vec();
                let img = image::GrayImage::from_raw(w as u32, h as u32, px).expect("sized");
                crate::data::images::save(
                    &image::DynamicImage::ImageLuma8(img),
                    &dir.join(format!("{}.png", id(i))),
                    95,
                )
            })
        })?;
        let mut t = Table::new(&["label"]);
        for i in 0..n {
            t.push(id(i), vec![lb[lh + i].to_string()]);
        }
        t.write(&cx.out_dir.join("labels.csv"))?;
        cx.log(format!("{n} images of {w}×{h} from {}", ip.display()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_headers_are_checked() {
        let p = Path::new("x.idx");
        let mut ok = vec![0, 0, 8, 1, 0, 0, 0, 2];
        ok.extend([7, 9]);
        assert_eq!(parse_idx(p, &ok).unwrap(), (vec![2], 8));
        let e = parse_idx(p, &ok[..9]).unwrap_err().to_string();
        assert!(e.contains("1 data bytes for dimensions [2]"), "{e}");
        let e = parse_idx(p, &[0, 0, 0x0d, 1]).unwrap_err().to_string();
        assert!(e.contains("element type 0x0d"), "{e}");
    }
}
