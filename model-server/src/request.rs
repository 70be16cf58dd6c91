//! The `POST /v1/score` body: `{"features": [{"name", "unit"}, …], "rows": [[…], …]}`.
//!
//! Rows are parsed straight into one flat `Vec<f32>` (the layout [`Model::score`] takes), with
//! every value checked on the way: JSON has no NaN or infinity, so a value that is `null`, not
//! a number, or too large for `float32` is refused with its position (`rows[i][j]`). Row
//! lengths are checked against the model once its feature list is known to match.
//!
//! [`Model::score`]: crate::scorer::Model::score

use std::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::scorer::Feature;

/// A parsed score request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub features: Vec<Feature>,
    pub rows: Rows,
}

/// The rows of a request, row-major in one buffer.
#[derive(Debug, Default)]
pub struct Rows {
    pub values: Vec<f32>,
    lengths: Vec<usize>,
}

impl Rows {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Checks that every row has `width` values; names the first that has not.
    pub fn check_width(&self, width: usize) -> Result<(), String> {
        match self.lengths.iter().position(|&n| n != width) {
            None => Ok(()),
            Some(i) => Err(format!(
                "rows[{i}] has {} values; each row needs {width}, one per feature",
                self.lengths[i]
            )),
        }
    }
}

/// The 200 answer of `POST /v1/score`.
#[derive(Debug, Serialize)]
pub struct ScoreResponse<'a> {
    pub model_version: &'a str,
    pub latency_ms: &'a [f32],
    pub p_fail: &'a [f32],
}

/// Parses a score request, with a message fit for a 400 on failure.
pub fn parse(body: &[u8]) -> Result<ScoreRequest, String> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("body is not a score request: {e}"),
        _ => format!("body is not valid JSON: {e}"),
    })
}

impl<'de> Deserialize<'de> for Rows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rows, D::Error> {
        d.deserialize_seq(RowsVisitor)
    }
}

struct RowsVisitor;

impl<'de> Visitor<'de> for RowsVisitor {
    type Value = Rows;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`rows` to be an array of rows (arrays of numbers)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows, A::Error> {
        let mut rows = Rows::default();
        if let Some(n) = seq.size_hint() {
            rows.lengths.reserve(n);
        }
        let mut row = 0;
        while seq.next_element_seed(RowSeed { rows: &mut rows, row })?.is_some() {
            row += 1;
        }
        Ok(rows)
    }
}

struct RowSeed<'a> {
    rows: &'a mut Rows,
    row: usize,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "rows[{}] to be an array of numbers", self.row)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut column = 0;
        while let Some(v) = seq.next_element_seed(Cell { row: self.row, column })? {
            self.rows.values.push(v);
            column += 1;
        }
        self.rows.lengths.push(column);
        Ok(())
    }
}

struct Cell {
    row: usize,
    column: usize,
}

impl Cell {
    fn finite<E: de::Error>(&self, v: f64) -> Result<f32, E> {
        let x = v as f32;
        if x.is_finite() {
            Ok(x)
        } else {
            Err(E::custom(format!(
                "rows[{}][{}] = {v:e} is out of range for float32",
                self.row, self.column
            )))
        }
    }
}

impl<'de> DeserializeSeed<'de> for Cell {
    type Value = f32;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f32, D::Error> {
        d.deserialize_f64(self)
    }
}

impl<'de> Visitor<'de> for Cell {
    type Value = f32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "rows[{}][{}] to be a finite number", self.row, self.column)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f32, E> {
        self.finite(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f32, E> {
        self.finite(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f32, E> {
        self.finite(v as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_flatten_in_order() {
        let r = parse(br#"{"features": [{"name": "a", "unit": "ms"}], "rows": [[1, 2.5], [-3]]}"#).expect("parse");
        assert_eq!(r.rows.values, vec![1.0, 2.5, -3.0]);
        assert_eq!(r.rows.len(), 2);
        assert!(r
            .rows
            .check_width(2)
            .expect_err("len")
            .starts_with("rows[1] has 1 values"));
    }

    #[test]
    fn bad_values_are_located() {
        for (body, want) in [
            (
                r#"{"features": [], "rows": [[1, null]]}"#,
                "rows[0][1] to be a finite number",
            ),
            (
                r#"{"features": [], "rows": [[1], ["x"]]}"#,
                "rows[1][0] to be a finite number",
            ),
            (
                r#"{"features": [], "rows": [[1e39]]}"#,
                "rows[0][0] = 1e39 is out of range for float32",
            ),
            (r#"{"features": [], "rows": [1]}"#, "rows[0] to be an array"),
            (r#"{"features": [], "rows": [[NaN]]}"#, "not valid JSON"),
            (r#"{"features": [], "rows": [], "x": 1}"#, "unknown field `x`"),
            (r#"{"features": []}"#, "missing field `rows`"),
        ] {
            let e = parse(body.as_bytes()).expect_err(body);
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
