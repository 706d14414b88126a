//! Checkpoints as safetensors: the model's variables under their timm names,
//! optimizer state under `optim.<name>.<i>`, EMA weights under
//! `ema.<name>`, and a JSON header (`__metadata__.podium`) saying what the
//! model is and where training stood. Written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::detect::fcos::Config as DetectorConfig;
use super::models::{Arch, Task};
use super::predict::Activation;
use crate::data::{DataError, write_atomic};

/// The version of [`Meta`] this podium writes and reads. Bump it when a
/// field changes meaning or is added without a default.
pub const FORMAT: u32 = 1;

/// What a `train` checkpoint says of its model and of how far training
/// went: the header `__metadata__.podium`, as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// The podium version that wrote it.
    pub podium: String,
    pub arch: Arch,
    pub task: Task,
    /// Class names in head order (for regress, none).
    pub classes: Vec<String>,
    /// The label column's name.
    pub value_column: String,
    /// The side images are resized to.
    pub image_size: u32,
    /// Per-channel normalization of inputs.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// How logits become predictions.
    pub activation: Activation,
    /// Epochs done when written.
    pub epoch: usize,
    /// Optimizer steps done when written.
    pub steps: u64,
    /// Validation metrics of that epoch (`null`: not a number).
    #[serde(default)]
    pub metrics: BTreeMap<String, Option<f64>>,
    /// Tasks detect and instance: the neck's and head's sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<DetectorConfig>,
    /// Tasks detect and instance: the COCO category id of each class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub category_ids: Vec<i64>,
    /// Task segment: the U-Net decoder's last width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_width: Option<usize>,
    /// Task segment: trained on windows at native resolution, to predict
    /// over tiles overlapping by this fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_overlap: Option<f64>,
    /// Task instance: convolutions of the mask head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_convs: Option<usize>,
}

impl Meta {
    /// The header of a checkpoint `load` read from `path`: an error naming
    /// the file for one podium did not write, or of another format.
    pub fn read(path: &Path, header: serde_json::Value) -> Result<Meta, DataError> {
        if header.is_null() {
            return Err(DataError::new(
                path,
                "not a podium checkpoint: it has no podium header (weights from elsewhere go in `pretrained`)",
            ));
        }
        let format = header.get("format").and_then(serde_json::Value::as_u64);
        if format != Some(u64::from(FORMAT)) {
            let by = header
                .get("podium")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown");
            let format = format.map_or("with no number".to_string(), |f| f.to_string());
            return Err(DataError::new(
                path,
                format!(
                    "checkpoint format {format} (written by podium {by}); podium {} reads format {FORMAT}: train it again, or use the podium that wrote it",
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        serde_json::from_value(header)
            .map_err(|e| DataError::new(path, format!("not a podium checkpoint: {e}")))
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a checkpoint header serializes")
    }
}

/// Writes `tensors` and `meta` to `path` (temporary file, then rename).
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    meta: &serde_json::Value,
) -> Result<(), DataError> {
    let info: HashMap<String, String> = [("podium".to_string(), meta.to_string())].into();
    let bytes = safetensors::serialize(tensors.iter(), Some(info))
        .map_err(|e| DataError::new(path, format!("cannot write the checkpoint: {e}")))?;
    write_atomic(path, &bytes)
}

/// The tensors of a safetensors file, and its podium header (`Null` for a
/// file podium did not write, such as a converted timm `state_dict`).
pub fn load(
    path: &Path,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, serde_json::Value), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::new(path, e.to_string()))?;
    let bad =
        |e: &dyn std::fmt::Display| DataError::new(path, format!("not a safetensors file: {e}"));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e))?;
    let meta = match header.metadata().as_ref().and_then(|m| m.get("podium")) {
        Some(s) => serde_json::from_str(s).map_err(|e| bad(&e))?,
        None => serde_json::Value::Null,
    };
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| bad(&e))?;
    Ok((tensors.into_iter().collect(), meta))
}

/// A `train` checkpoint: its tensors and its typed header.
pub fn load_trained(
    path: &Path,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, Meta), DataError> {
    let (tensors, header) = load(path, device)?;
    Ok((tensors, Meta::read(path, header)?))
}

/// The tensors under `prefix.`, with the prefix taken off.
pub fn section(tensors: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    let p = format!("{prefix}.");
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&p).map(|k| (k.to_string(), v.clone())))
        .collect()
}

/// The model's own tensors: every name outside the `optim.` and `ema.` sections.
pub fn model_tensors(tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("optim.") && !k.starts_with("ema."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_tensors_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        let mut t = BTreeMap::new();
        t.insert(
            "fc.weight".to_string(),
            Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap(),
        );
        t.insert(
            "optim.fc.weight.0".to_string(),
            Tensor::new(&[0.5f32], &Device::Cpu).unwrap(),
        );
        let meta = serde_json::json!({"arch": "simple_cnn", "epoch": 3});
        save(&p, &t, &meta).unwrap();
        let (back, m) = load(&p, &Device::Cpu).unwrap();
        assert_eq!(m, meta);
        let w: Vec<Vec<f32>> = back["fc.weight"].to_vec2().unwrap();
        assert_eq!(w, [[1., 2.], [3., 4.]]);
        assert_eq!(model_tensors(&back).len(), 1);
        assert_eq!(section(&back, "optim").len(), 1);
    }

    /// A simple_cnn classifier's header, two classes (other modules' tests too).
    pub(crate) fn meta() -> Meta {
        Meta {
            format: FORMAT,
            podium: "0.1.0".into(),
            arch: Arch::SimpleCnn,
            task: Task::Classify,
            classes: vec!["a".into(), "b".into()],
            value_column: "label".into(),
            image_size: 32,
            mean: [0.5; 3],
            std: [0.25; 3],
            activation: Activation::Softmax,
            epoch: 3,
            steps: 30,
            metrics: [
                ("accuracy".to_string(), Some(0.5)),
                ("qwk".to_string(), None),
            ]
            .into(),
            detector: None,
            category_ids: Vec::new(),
            decoder_width: None,
            tile_overlap: None,
            mask_convs: None,
        }
    }

    #[test]
    fn a_typed_header_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        let t: BTreeMap<String, Tensor> =
            [("w".to_string(), Tensor::new(&[1f32], &Device::Cpu).unwrap())].into();
        save(&p, &t, &meta().to_json()).unwrap();
        let (_, m) = load_trained(&p, &Device::Cpu).unwrap();
        assert_eq!(m, meta());
    }

    #[test]
    fn a_checkpoint_of_another_format_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.safetensors");
        let t: BTreeMap<String, Tensor> =
            [("w".to_string(), Tensor::new(&[1f32], &Device::Cpu).unwrap())].into();
        let mut m = meta().to_json();
        m["format"] = serde_json::json!(FORMAT + 1);
        m["podium"] = serde_json::json!("9.9.9");
        save(&p, &t, &m).unwrap();
        let e = load_trained(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("old.safetensors")
                && e.contains(&format!("checkpoint format {}", FORMAT + 1))
                && e.contains("written by podium 9.9.9"),
            "{e}"
        );
        // A safetensors file podium did not write (no header) names itself.
        save(&p, &t, &serde_json::Value::Null).unwrap();
        let e = load_trained(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a podium checkpoint"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, b"hello").unwrap();
        let e = load(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("x.safetensors") && e.contains("not a safetensors file"),
            "{e}"
        );
    }
}
