//! Tables: CSV with a header row; the first column is the row id (named
//! `id` in podium's own files; a competition's `Id` or `id_code` works too).

use rustc_hash::FxHashMap as HashMap;
use std::path::{Path, PathBuf};

use super::{DataError, read_nonempty, write_atomic};

/// A CSV table held as text cells; numeric views parse on demand, naming
/// the line of a bad cell.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub path: PathBuf,
    /// Header, the id column first.
    pub columns: Vec<String>,
    pub ids: Vec<String>,
    /// Cells after the id, row by row.
    pub rows: Vec<Vec<String>>,
    /// The file line of each row (1-based), for errors.
    pub lines: Vec<usize>,
}

impl Table {
    /// An empty table with these value columns, `id` first.
    pub fn new(columns: &[&str]) -> Table {
        let mut cols = vec!["id".to_string()];
        cols.extend(columns.iter().map(|c| c.to_string()));
        Table {
            path: PathBuf::new(),
            columns: cols,
            ids: Vec::new(),
            rows: Vec::new(),
            lines: Vec::new(),
        }
    }

    pub fn read(path: &Path) -> Result<Table, DataError> {
        let bytes = read_nonempty(path)?;
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(&bytes[..]);
        let csv_err = |e: csv::Error| {
            let line = e.position().map(|p| p.line() as usize);
            let msg = match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => {
                    format!("row has {len} fields, the header has {expected_len}")
                }
                csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".to_string(),
                _ => e.to_string(),
            };
            DataError {
                path: path.to_path_buf(),
                line,
                message: msg,
            }
        };
        let header = rdr.headers().map_err(csv_err)?.clone();
        let columns: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
        if columns.is_empty() || columns[0].is_empty() {
            return Err(DataError::at(path, 1, "the header row has no id column"));
        }
        let mut seen = HashMap::default();
        for c in &columns {
            if seen.insert(c.as_str(), ()).is_some() {
                return Err(DataError::at(
                    path,
                    1,
                    format!("column `{c}` appears twice"),
                ));
            }
        }
        let mut t = Table {
            path: path.to_path_buf(),
            columns,
            ids: Vec::new(),
            rows: Vec::new(),
            lines: Vec::new(),
        };
        for rec in rdr.records() {
            let rec = rec.map_err(csv_err)?;
            let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
            let mut it = rec.iter();
            let id = it.next().unwrap_or("").to_string();
            if id.is_empty() {
                return Err(DataError::at(path, line, "empty id"));
            }
            let row: Vec<String> = it.map(str::to_string).collect();
            if let Some((c, tok)) = non_finite_cell(&row) {
                return Err(DataError::at(
                    path,
                    line,
                    format!(
                        "`{tok}` in column `{}` (id {id}) is not a finite number; \
                         a missing or undefined value must be removed or filled in",
                        t.columns[c + 1]
                    ),
                ));
            }
            t.ids.push(id);
            t.rows.push(row);
            t.lines.push(line);
        }
        if t.ids.is_empty() {
            return Err(DataError::new(path, "no rows after the header"));
        }
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Value columns (all but the id).
    pub fn value_columns(&self) -> &[String] {
        &self.columns[1..]
    }

    /// Index of a value column.
    pub fn col(&self, name: &str) -> Result<usize, DataError> {
        self.value_columns()
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| {
                DataError::at(
                    &self.path,
                    1,
                    format!(
                        "no column `{name}`; columns: {}",
                        self.value_columns().join(", ")
                    ),
                )
            })
    }

    /// The cells of one value column.
    pub fn strs(&self, col: usize) -> impl Iterator<Item = &str> {
        self.rows.iter().map(move |r| r[col].as_str())
    }

    /// One value column as finite numbers.
    pub fn floats(&self, col: usize) -> Result<Vec<f64>, DataError> {
        (0..self.len()).map(|r| self.float(r, col)).collect()
    }

    /// One cell as a finite number.
    pub fn float(&self, row: usize, col: usize) -> Result<f64, DataError> {
        let s = self.rows[row][col].trim();
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            Ok(_) => Err(self.cell_error(row, col, "is not a finite number")),
            Err(_) => Err(self.cell_error(row, col, "is not a number")),
        }
    }

    /// Several value columns as a row-major matrix of finite numbers.
    pub fn matrix(&self, cols: &[usize]) -> Result<Vec<f64>, DataError> {
        let mut out = Vec::with_capacity(self.len() * cols.len());
        for r in 0..self.len() {
            for &c in cols {
                out.push(self.float(r, c)?);
            }
        }
        Ok(out)
    }

    /// All value columns as a row-major matrix.
    pub fn all_floats(&self) -> Result<Vec<f64>, DataError> {
        let cols: Vec<usize> = (0..self.value_columns().len()).collect();
        self.matrix(&cols)
    }

    pub fn cell_error(&self, row: usize, col: usize, what: &str) -> DataError {
        DataError::at(
            &self.path,
            self.lines[row],
            format!(
                "`{}` in column `{}` (id {}) {what}",
                self.rows[row][col],
                self.columns[col + 1],
                self.ids[row]
            ),
        )
    }

    /// Row index by id; a repeated id is an error.
    pub fn index(&self) -> Result<HashMap<&str, usize>, DataError> {
        let mut m = HashMap::with_capacity_and_hasher(self.len(), Default::default());
        for (i, id) in self.ids.iter().enumerate() {
            if m.insert(id.as_str(), i).is_some() {
                return Err(DataError::at(
                    &self.path,
                    self.lines[i],
                    format!("id `{id}` appears twice"),
                ));
            }
        }
        Ok(m)
    }

    pub fn push(&mut self, id: impl Into<String>, row: Vec<String>) {
        debug_assert_eq!(row.len() + 1, self.columns.len());
        self.ids.push(id.into());
        self.rows.push(row);
        self.lines.push(0);
    }

    pub fn to_csv(&self) -> Vec<u8> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&self.columns).expect("write to memory");
        for (id, row) in self.ids.iter().zip(&self.rows) {
            w.write_record(std::iter::once(id).chain(row))
                .expect("write to memory");
        }
        w.into_inner().expect("write to memory")
    }

    /// Writes the table; a cell holding `NaN` or `inf` is an error naming
    /// the row, and nothing is written.
    pub fn write(&self, path: &Path) -> Result<(), DataError> {
        for (r, row) in self.rows.iter().enumerate() {
            if let Some((c, tok)) = non_finite_cell(row) {
                return Err(DataError::at(
                    path,
                    r + 2,
                    format!(
                        "`{tok}` in column `{}` (id {}) is not a finite number; not written",
                        self.columns[c + 1],
                        self.ids[r]
                    ),
                ));
            }
        }
        write_atomic(path, &self.to_csv())
    }
}

/// The first value cell of a row that holds a non-finite number (`NaN`,
/// `inf`, `-Infinity`, alone or in a space-separated list), with the word.
/// Such cells are errors in every column: a label of `nan` is a missing
/// value, not a class.
fn non_finite_cell(row: &[String]) -> Option<(usize, &str)> {
    row.iter().enumerate().find_map(|(c, cell)| {
        cell.split_whitespace()
            .find(|tok| {
                let t = tok.trim_start_matches(['+', '-']);
                t.starts_with(['n', 'N', 'i', 'I'])
                    && tok.parse::<f64>().is_ok_and(|x| !x.is_finite())
            })
            .map(|tok| (c, tok))
    })
}

/// Formats a number for a table: the shortest text that reads back as the
/// same f64.
pub fn fmt_f64(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_and_writes_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.csv", "id,p0,p1\na,0.25,0.75\n\"b,c\",1,0\n");
        let t = Table::read(&p).unwrap();
        assert_eq!(t.ids, ["a", "b,c"]);
        assert_eq!(t.floats(1).unwrap(), [0.75, 0.0]);
        assert_eq!(t.lines, [2, 3]);
        let back = dir.path().join("b.csv");
        t.write(&back).unwrap();
        assert_eq!(Table::read(&back).unwrap().rows, t.rows);
    }

    #[test]
    fn bad_tables_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("", "empty file"),
            ("id,p\n", "no rows after the header"),
            ("id,p\na,1\nb\n", ":3: row has 1 fields, the header has 2"),
            ("id,p,p\na,1,2\n", ":1: column `p` appears twice"),
            ("id,p\na,1\na,2\n", ":3: id `a` appears twice"),
            (
                "id,p\na,1\nb,NaN\n",
                ":3: `NaN` in column `p` (id b) is not a finite number",
            ),
            (
                "id,p\na,x\n",
                ":2: `x` in column `p` (id a) is not a number",
            ),
        ];
        for (text, want) in cases {
            let p = write(dir.path(), "t.csv", text);
            let err = Table::read(&p)
                .and_then(|t| {
                    t.index()?;
                    t.floats(t.col("p")?)
                })
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&p.display().to_string()), "{err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
