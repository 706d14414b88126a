//! The `metrics.json` file format: a JSON object `{"<metric>": number}` (the
//! scores themselves are computed in [`crate::metrics`]).

use std::collections::BTreeMap;
use std::path::Path;

use super::{DataError, read_nonempty, write_atomic};

pub type Metrics = BTreeMap<String, f64>;

pub fn read(path: &Path) -> Result<Metrics, DataError> {
    let bytes = read_nonempty(path)?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| DataError::at(path, e.line(), e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| DataError::new(path, "expected a JSON object of metrics"))?;
    obj.iter()
        .map(|(k, v)| {
            v.as_f64()
                .map(|x| (k.clone(), x))
                .ok_or_else(|| DataError::new(path, format!("metric `{k}` is not a number")))
        })
        .collect()
}

/// Writes metrics; one that is not a finite number (JSON would say `null`)
/// is an error naming it, and nothing is written.
pub fn write(path: &Path, m: &Metrics) -> Result<(), DataError> {
    if let Some((k, v)) = m.iter().find(|(_, v)| !v.is_finite()) {
        return Err(DataError::new(
            path,
            format!("metric `{k}` is {v}, not a finite number; not written"),
        ));
    }
    let mut text = serde_json::to_string_pretty(m).expect("metrics serialize");
    text.push('\n');
    write_atomic(path, text.as_bytes())
}
