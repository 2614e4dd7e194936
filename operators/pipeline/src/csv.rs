//! CSV with a header row, read as events: each row becomes one JSON object keyed by the
//! header, which then goes through the same decoder as any published event.
//!
//! Rows are read one at a time from any reader, so a large file is never held in memory
//! (only its longest row is). A row that cannot become an event (a cell count that differs
//! from the header's, bytes that are not UTF-8) is refused with its line, and reading goes
//! on with the next row; only an unusable header stops the whole input.
//!
//! Cells are typed as a person reading the file would: an integer, then a finite float,
//! then `true`/`false`, else a string; an empty cell is left out (a missing value). The
//! schema decides the rest (an integer sent for a float field is accepted, `"007"` sent for
//! a string field is not: quote-free CSV cannot say which was meant, so a schema that wants
//! such codes as strings should name them so, e.g. `code: { type: string }` and send `A007`).

use std::collections::VecDeque;
use std::io::Read;

use crate::rejection::{RejectKind, Rejection};

/// Why the input as a whole cannot be read as CSV events.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CsvError {
    #[error("empty CSV: expected a header row naming the fields")]
    NoHeader,
    #[error("CSV header, column {column}: expected a field name, found an empty cell")]
    EmptyName { column: usize },
    #[error("CSV header: field `{name}` is named twice (columns {first} and {second})")]
    DuplicateName {
        name: String,
        first: usize,
        second: usize,
    },
    #[error("CSV header: {0}")]
    Header(String),
}

/// One row of a CSV input: its line (1-based, the header is line 1) and its event as JSON,
/// or why it was refused.
#[derive(Debug, PartialEq)]
pub struct CsvRow {
    pub line: u64,
    pub event: Result<Vec<u8>, Rejection>,
}

impl CsvRow {
    /// What a dead letter of this row holds: its event when it became one, else the row's
    /// cells written back as one CSV line (so it can be read, fixed and resent).
    pub fn payload(&self, cells: &[Vec<u8>]) -> Vec<u8> {
        match &self.event {
            Ok(event) => event.clone(),
            Err(_) => {
                let mut w = ::csv::WriterBuilder::new()
                    .terminator(::csv::Terminator::Any(b'\n'))
                    .from_writer(Vec::new());
                let _ = w.write_record(cells);
                w.into_inner().unwrap_or_default()
            }
        }
    }
}

/// The rows of a CSV input, in order.
pub struct CsvEvents<R> {
    reader: ::csv::Reader<Lines<R>>,
    header: Vec<String>,
    record: ::csv::ByteRecord,
    done: bool,
}

impl<R: Read> CsvEvents<R> {
    /// Reads the header row; the rows follow through the iterator.
    pub fn new(input: R) -> Result<CsvEvents<R>, CsvError> {
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(false)
            // A row of the wrong width is refused by itself, not as a reader error.
            .flexible(true)
            .from_reader(Lines::new(input));
        let mut first = ::csv::ByteRecord::new();
        match reader.read_byte_record(&mut first) {
            Ok(true) => {}
            Ok(false) => return Err(CsvError::NoHeader),
            Err(e) => return Err(CsvError::Header(e.to_string())),
        }
        let mut header: Vec<String> = Vec::with_capacity(first.len());
        for (i, cell) in first.iter().enumerate() {
            let column = i + 1;
            let name = std::str::from_utf8(cell)
                .map_err(|_| CsvError::Header(format!("column {column} is not UTF-8")))?;
            // A byte-order mark a spreadsheet wrote is not part of the first name.
            let name = name.trim_start_matches('\u{feff}').trim();
            if name.is_empty() {
                return Err(CsvError::EmptyName { column });
            }
            if let Some(first) = header.iter().position(|h| h == name) {
                return Err(CsvError::DuplicateName {
                    name: name.to_string(),
                    first: first + 1,
                    second: column,
                });
            }
            header.push(name.to_string());
        }
        Ok(CsvEvents {
            reader,
            header,
            record: ::csv::ByteRecord::new(),
            done: false,
        })
    }

    /// The cells of the row last returned, as read (for [`CsvRow::payload`]).
    pub fn cells(&self) -> Vec<Vec<u8>> {
        self.record.iter().map(<[u8]>::to_vec).collect()
    }

    /// The field names of the header row, in column order.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    fn event(&self, line: u64) -> Result<Vec<u8>, Rejection> {
        if self.record.len() != self.header.len() {
            return Err(Rejection::new(
                RejectKind::Decode,
                format!(
                    "CSV line {line}: expected {} cells (as the header), found {}",
                    self.header.len(),
                    self.record.len()
                ),
            ));
        }
        let mut object = serde_json::Map::with_capacity(self.header.len());
        for (i, (name, cell)) in self.header.iter().zip(self.record.iter()).enumerate() {
            let cell = std::str::from_utf8(cell).map_err(|e| {
                Rejection::new(
                    RejectKind::Decode,
                    format!(
                        "CSV line {line}, column {} (`{name}`): expected UTF-8 text, found an \
                         invalid byte at offset {}",
                        i + 1,
                        e.valid_up_to()
                    ),
                )
            })?;
            if !cell.is_empty() {
                object.insert(name.clone(), cell_value(cell));
            }
        }
        Ok(serde_json::to_vec(&object).expect("a JSON map of plain values serializes"))
    }
}

impl<R: Read> Iterator for CsvEvents<R> {
    type Item = CsvRow;

    fn next(&mut self) -> Option<CsvRow> {
        if self.done {
            return None;
        }
        // The csv reader's own line numbers count from before the blank lines it skips and
        // count `\r\n` oddly; a row starts at the first content after the previous one.
        let from = self.reader.position().byte();
        let read = self.reader.read_byte_record(&mut self.record);
        let line = self.reader.get_mut().line_from(from);
        match read {
            Ok(false) => {
                self.done = true;
                None
            }
            Ok(true) => Some(CsvRow {
                line,
                event: self.event(line),
            }),
            Err(e) => {
                // Only an I/O error reaches here (flexible widths and bytes are read raw);
                // what follows it cannot be trusted.
                self.done = true;
                Some(CsvRow {
                    line,
                    event: Err(Rejection::new(
                        RejectKind::Decode,
                        format!("CSV line {line}: {e}"),
                    )),
                })
            }
        }
    }
}

/// A reader that notes where each line's content starts (its first byte that is not a line
/// break) and on which line, for as long as it may be asked about (the csv reader reads
/// ahead by one buffer, so only that much is kept). Line breaks are counted as the csv
/// reader splits rows: `\n`, `\r\n` or a lone `\r`.
struct Lines<R> {
    inner: R,
    read: u64,
    /// (offset, line) of the content starts not asked about yet.
    starts: VecDeque<(u64, u64)>,
    line: u64,
    at_start: bool,
    /// The last byte was a `\r`: a break alone, or the start of `\r\n`.
    cr: bool,
}

impl<R> Lines<R> {
    fn new(inner: R) -> Lines<R> {
        Lines {
            inner,
            read: 0,
            starts: VecDeque::new(),
            line: 1,
            at_start: true,
            cr: false,
        }
    }

    /// The line of the first content at or after `offset`; offsets asked about never
    /// decrease.
    fn line_from(&mut self, offset: u64) -> u64 {
        while self.starts.front().is_some_and(|&(o, _)| o < offset) {
            self.starts.pop_front();
        }
        self.starts.front().map_or(self.line, |&(_, line)| line)
    }
}

impl<R: Read> Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, b) in buf[..n].iter().enumerate() {
            let was_cr = std::mem::take(&mut self.cr);
            match b {
                b'\n' if was_cr => {}
                b'\n' => {
                    self.line += 1;
                    self.at_start = true;
                }
                b'\r' => {
                    self.line += 1;
                    self.at_start = true;
                    self.cr = true;
                }
                _ if self.at_start => {
                    self.starts.push_back((self.read + i as u64, self.line));
                    self.at_start = false;
                }
                _ => {}
            }
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// A cell as the JSON value it reads as: integer, finite float, boolean, else string.
pub fn cell_value(cell: &str) -> serde_json::Value {
    if let Ok(i) = cell.parse::<i64>() {
        return i.into();
    }
    if let Ok(f) = cell.parse::<f64>() {
        if f.is_finite() {
            return f.into();
        }
    }
    match cell {
        "true" => true.into(),
        "false" => false.into(),
        _ => cell.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<(u64, Result<String, String>)> {
        CsvEvents::new(text.as_bytes())
            .unwrap()
            .map(|r| {
                (
                    r.line,
                    r.event
                        .map(|e| String::from_utf8(e).unwrap())
                        .map_err(|r| r.reason),
                )
            })
            .collect()
    }

    #[test]
    fn rows_become_typed_objects_keyed_by_the_header() {
        let got = rows("user,amount,n,ok,note\nann,12.5,3,true,\"a, b\"\nbob,,-2,false,x\n");
        assert_eq!(
            got,
            vec![
                (
                    2,
                    Ok(r#"{"amount":12.5,"n":3,"note":"a, b","ok":true,"user":"ann"}"#.into())
                ),
                (
                    3,
                    Ok(r#"{"n":-2,"note":"x","ok":false,"user":"bob"}"#.into())
                ),
            ]
        );
    }

    #[test]
    fn a_row_of_the_wrong_width_is_refused_with_its_line_and_reading_goes_on() {
        let got = rows("a,b\n1,2\n\n1,2,3\n4\n5,6\n");
        assert_eq!(got[0], (2, Ok(r#"{"a":1,"b":2}"#.into())));
        assert_eq!(
            got[1],
            (
                4,
                Err("CSV line 4: expected 2 cells (as the header), found 3".into())
            )
        );
        assert_eq!(got[2].0, 5);
        assert!(got[2].1.is_err());
        assert_eq!(got[3], (6, Ok(r#"{"a":5,"b":6}"#.into())));
    }

    #[test]
    fn a_quoted_cell_spanning_lines_keeps_the_line_where_its_row_started() {
        let got = rows("a,b\n\"x\ny\",1\n\n\nz,2");
        assert_eq!(got[0], (2, Ok(r#"{"a":"x\ny","b":1}"#.into())));
        assert_eq!(got[1], (6, Ok(r#"{"a":"z","b":2}"#.into())));
        let crlf = rows("a,b\r\n1,2\r\n\r\n3,4\r\n");
        assert_eq!(crlf[0].0, 2);
        assert_eq!(crlf[1].0, 4);
        // Old Mac line ends, and a quoted `\r\n`: each a line, as the reader splits rows.
        let cr = rows("a,b\r1,2\r\r\"x\r\ny\",3\r4,5");
        assert_eq!(cr.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 4, 6]);
    }

    #[test]
    fn invalid_utf8_in_a_cell_is_refused_with_its_column() {
        let input: &[u8] = b"a,b\nok,\xff\xfe\n";
        let got: Vec<_> = CsvEvents::new(input).unwrap().collect();
        let reason = got[0].event.as_ref().unwrap_err().reason.clone();
        assert_eq!(
            reason,
            "CSV line 2, column 2 (`b`): expected UTF-8 text, found an invalid byte at offset 0"
        );
    }

    #[test]
    fn an_unusable_header_stops_the_input_with_what_is_wrong() {
        let err = |t: &str| CsvEvents::new(t.as_bytes()).err().unwrap().to_string();
        assert_eq!(
            err(""),
            "empty CSV: expected a header row naming the fields"
        );
        assert_eq!(
            err("a,,b\n"),
            "CSV header, column 2: expected a field name, found an empty cell"
        );
        assert_eq!(
            err("a,b,a\n"),
            "CSV header: field `a` is named twice (columns 1 and 3)"
        );
        let bom = CsvEvents::new("\u{feff}user,n\nx,1\n".as_bytes()).unwrap();
        assert_eq!(bom.header(), ["user", "n"]);
    }

    #[test]
    fn cells_read_as_a_person_would() {
        assert_eq!(cell_value("7"), serde_json::json!(7));
        assert_eq!(cell_value("-0.5"), serde_json::json!(-0.5));
        assert_eq!(cell_value("NaN"), serde_json::json!("NaN"));
        assert_eq!(cell_value("inf"), serde_json::json!("inf"));
        assert_eq!(cell_value("True"), serde_json::json!("True"));
        assert_eq!(cell_value("false"), serde_json::json!(false));
    }
}
