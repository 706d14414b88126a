//! Checkpoints as safetensors: the model's variables under their timm names,
//! optimizer state under `optim.<name>.<i>`, EMA weights under
//! `ema.<name>`, and a JSON header (`__metadata__.podium`) saying what the
//! model is and where training stood. Written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::data::{DataError, write_atomic};

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
mod tests {
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
