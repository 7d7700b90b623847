//! What `keel` prints: aligned tables, label/value reports, stdout writes that report a closed
//! pipe as an error (so the caller can stop quietly), and progress bars on stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{HumanCount, ProgressBar, ProgressState, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use crate::error::CliError;

/// Progress bar of a job of known size: bar, count, rate, time left.
const BAR_TEMPLATE: &str = "{bar:30} {human_pos}/{human_len} {msg} {rate} eta {eta}";

/// Progress of a job of unknown size (a timed run): spinner, count, rate, time spent.
const SPINNER_TEMPLATE: &str = "{spinner} {human_pos} {msg} {rate} {elapsed}";

/// How often a spinner redraws on its own.
const SPINNER_TICK_MS: u64 = 100;

/// How a table column lines up its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A table of text cells printed with aligned columns under upper-case headers.
#[derive(Debug)]
pub(crate) struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers and alignments.
    pub(crate) fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; it must have one cell per column.
    pub(crate) fn push(&mut self, row: Vec<String>) {
        assert_eq!(
            row.len(),
            self.columns.len(),
            "a table row has one cell per column"
        );
        self.rows.push(row);
    }

    /// The table as text: two spaces between columns, no trailing spaces, a final newline.
    pub(crate) fn render(&self) -> String {
        let headers: Vec<String> = self
            .columns
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|column| {
                std::iter::once(&headers)
                    .chain(&self.rows)
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&self.columns)
                .zip(&widths)
                .map(|((cell, (_, align)), width)| match align {
                    Align::Left => format!("{cell:<width$}"),
                    Align::Right => format!("{cell:>width$}"),
                })
                .collect();
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        text
    }
}

/// Label/value lines with the values lined up: `events      1000`.
pub(crate) fn render_pairs(pairs: &[(String, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(label, value)| format!("{label:<width$}  {value}\n"))
        .collect()
}

/// A JSON value as a table cell: strings unquoted, `null` or missing as `-`, arrays and
/// objects as compact JSON.
pub(crate) fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// A typed value as a table cell, as [`cell`] shows its JSON: `key`, `open`, `2.0`, `-` for
/// none.
pub(crate) fn plain(value: &impl Serialize) -> String {
    cell(serde_json::to_value(value).ok().as_ref())
}

/// `1 event`, `2 events`: a count and its noun, plural unless the count is 1.
/// A measured value for people: at most four decimals, without trailing zeros (`10.6381`,
/// `5`, `0.05`).
pub(crate) fn figure(value: f64) -> String {
    let text = format!("{value:.4}");
    match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => text,
    }
}

pub(crate) fn count_of(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut scaled = bytes as f64 / 1024.0;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    format!("{scaled:.1} {}", UNITS[unit])
}

/// Writes `text` to stdout and flushes. A reader that went away (`| head`) surfaces as an
/// [`CliError::Io`] that [`CliError::is_broken_pipe`] recognises.
pub(crate) fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| CliError::io("write to stdout", error))
}

/// A server answer's JSON body as received, as one output line.
pub(crate) fn json_line(body: &[u8]) -> String {
    format!("{}\n", String::from_utf8_lossy(body).trim_end())
}

/// Writes a server answer's JSON body to stdout as received, on its own line.
pub(crate) fn write_json_body(body: &[u8]) -> Result<(), CliError> {
    write_stdout(&json_line(body))
}

/// A progress bar on stderr counting `unit`s (a spinner when `length` is unknown); hidden when
/// stderr is not a terminal, so logs and pipes stay clean.
pub(crate) fn progress_bar(length: Option<u64>, unit: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match length {
        Some(length) => ProgressBar::new(length).with_style(style(BAR_TEMPLATE)),
        None => {
            let spinner = ProgressBar::new_spinner().with_style(style(SPINNER_TEMPLATE));
            spinner.enable_steady_tick(Duration::from_millis(SPINNER_TICK_MS));
            spinner
        }
    };
    bar.with_message(unit)
}

/// The style for `template`, with `{rate}`: units per second, whole (indicatif's `{per_sec}`
/// shows four decimals).
fn style(template: &str) -> ProgressStyle {
    let rate = |state: &ProgressState, out: &mut dyn std::fmt::Write| {
        // A failed write only blanks the rate in this frame.
        let _ = write!(out, "{}/s", HumanCount(state.per_sec() as u64));
    };
    ProgressStyle::with_template(template)
        .expect("the templates are constants checked by a test")
        .with_key("rate", rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_text_left_and_numbers_right() {
        // Goal: readable columns; no trailing spaces. Method: render a small table.
        let mut table = Table::new(&[("NAME", Align::Left), ("PARTITIONS", Align::Right)]);
        table.push(vec!["orders".to_owned(), "8".to_owned()]);
        table.push(vec!["a-much-longer-name".to_owned(), "128".to_owned()]);
        assert_eq!(
            table.render(),
            "NAME                PARTITIONS\n\
             orders                       8\n\
             a-much-longer-name         128\n"
        );
    }

    #[test]
    fn pairs_line_up_values() {
        let pairs = [
            ("events".to_owned(), "10".to_owned()),
            ("p99.9".to_owned(), "1".to_owned()),
        ];
        assert_eq!(render_pairs(&pairs), "events  10\np99.9   1\n");
    }

    #[test]
    fn cells_show_json_plainly() {
        let value = serde_json::json!({"s": "7d", "n": 3, "z": null, "o": {"a": 1}});
        let cells: Vec<String> = ["s", "n", "z", "o", "missing"]
            .iter()
            .map(|key| cell(value.get(key)))
            .collect();
        assert_eq!(cells, ["7d", "3", "-", r#"{"a":1}"#, "-"]);
    }

    #[test]
    fn counts_use_the_plural_unless_one() {
        assert_eq!(
            [0, 1, 2].map(|count| count_of(count, "event")),
            ["0 events", "1 event", "2 events"]
        );
    }

    #[test]
    fn bytes_scale_to_binary_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (12 << 20, "12.0 MiB"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(human_bytes(bytes), expected);
        }
    }

    #[test]
    fn progress_templates_parse() {
        for template in [BAR_TEMPLATE, SPINNER_TEMPLATE] {
            ProgressStyle::with_template(template).unwrap();
        }
    }
}
