//! Plain-text output for people: aligned tables, key/value blocks, "12 s ago".

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A table whose columns are as wide as their widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| one_line(&c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// How many rows the table has.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines: columns two spaces apart, no trailing blanks.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - width(cell)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let key_width = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| {
            let pad = " ".repeat(key_width - width(k));
            let line = format!("{k}{pad}  {}", one_line(v));
            format!("{}\n", line.trim_end())
        })
        .collect()
}

/// Characters on screen, counting each `char` as one column.
fn width(text: &str) -> usize {
    text.chars().count()
}

/// A cell never breaks the table: control characters become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// How long ago `then` was, seen from `now`: `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    // A registry clock slightly ahead of ours is not "in the future" to an operator.
    let secs = (now - then).num_seconds().max(0);
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7_200 => format!("{} min ago", secs / 60),
        7_200..172_800 => format!("{} h ago", secs / 3_600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// A JSON time (epoch seconds or an RFC 3339 string) as a UTC time.
pub fn time_of(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::Number(n) => {
            let micros = (n.as_f64()? * 1e6).round() as i64;
            DateTime::from_timestamp_micros(micros)
        }
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        _ => None,
    }
}

/// A JSON value as a cell: strings bare, null as `-`, anything else as compact JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["NAME", "STATUS"]);
        t.row(vec!["Josephine-user_123".into(), "active".into()]);
        t.row(vec!["é".into(), "registered".into()]);
        assert_eq!(
            t.render(),
            "NAME                STATUS\n\
             Josephine-user_123  active\n\
             é                   registered\n"
        );
    }

    #[test]
    fn cells_stay_on_one_line() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x\ny".into()]);
        assert_eq!(t.render(), "A    B\nx y\n");
    }

    #[test]
    fn key_values_align() {
        assert_eq!(
            key_values(&[("name", "w".into()), ("last heartbeat", "never".into())]),
            "name            w\nlast heartbeat  never\n"
        );
    }

    #[test]
    fn ages() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let at = |secs: i64| DateTime::from_timestamp(1_000_000 - secs, 0).unwrap();
        assert_eq!(ago(at(12), now), "12 s ago");
        assert_eq!(ago(at(-3), now), "0 s ago");
        assert_eq!(ago(at(119), now), "119 s ago");
        assert_eq!(ago(at(600), now), "10 min ago");
        assert_eq!(ago(at(3 * 3600), now), "3 h ago");
        assert_eq!(ago(at(5 * 86_400), now), "5 d ago");
    }

    #[test]
    fn times_from_json() {
        let epoch = time_of(&serde_json::json!(1796322443.709157)).unwrap();
        let iso = time_of(&serde_json::json!("2026-12-03T18:27:23.709Z")).unwrap();
        assert_eq!(epoch.timestamp(), iso.timestamp());
        assert!(time_of(&Value::Null).is_none());
    }
}
