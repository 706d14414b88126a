//! Mask overlap, as the Kaggle segmentation competitions score it: per
//! image and class, Dice 2|P ∩ T| / (|P| + |T|) and IoU |P ∩ T| / |P ∪ T|,
//! both 1 when prediction and truth are empty; averaged over images and
//! classes.

/// Pixel counts of one image and class: both, predicted, true.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overlap {
    pub both: u64,
    pub pred: u64,
    pub truth: u64,
}

impl Overlap {
    /// Counts over paired pixels.
    pub fn of(pairs: impl Iterator<Item = (bool, bool)>) -> Overlap {
        let mut o = Overlap::default();
        for (p, t) in pairs {
            o.both += u64::from(p && t);
            o.pred += u64::from(p);
            o.truth += u64::from(t);
        }
        o
    }

    pub fn dice(&self) -> f64 {
        if self.pred + self.truth == 0 {
            return 1.0;
        }
        2.0 * self.both as f64 / (self.pred + self.truth) as f64
    }

    pub fn iou(&self) -> f64 {
        let union = self.pred + self.truth - self.both;
        if union == 0 {
            return 1.0;
        }
        self.both as f64 / union as f64
    }
}

/// Mean Dice and IoU over every (image, class) count.
pub fn mean_dice_iou(counts: &[Overlap]) -> (f64, f64) {
    let n = counts.len().max(1) as f64;
    (
        counts.iter().map(Overlap::dice).sum::<f64>() / n,
        counts.iter().map(Overlap::iou).sum::<f64>() / n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_and_iou_of_counts() {
        let o =
            Overlap::of([(true, true), (true, false), (false, true), (false, false)].into_iter());
        assert_eq!(
            o,
            Overlap {
                both: 1,
                pred: 2,
                truth: 2
            }
        );
        assert_eq!(o.dice(), 0.5);
        assert_eq!(o.iou(), 1.0 / 3.0);
        let empty = Overlap::default();
        assert_eq!((empty.dice(), empty.iou()), (1.0, 1.0));
        assert_eq!(mean_dice_iou(&[o, empty]), (0.75, 2.0 / 3.0));
    }
}
