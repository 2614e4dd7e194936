//! CSV rows read as events (`anom_pipeline::csv`), then decoded against the fuzz schema as any
//! published event is.

use anom_pipeline::csv::{cell_value, CsvEvents};
use anom_pipeline::event::Format;
use arbitrary::Arbitrary;

/// Arbitrary bytes as a CSV body: rows come with increasing lines; an event is a JSON object
/// whose keys are header names; a refusal says why; each event then decodes like any other.
pub fn bytes(data: &[u8]) {
    let Ok(rows) = CsvEvents::new(data) else {
        return;
    };
    let header = rows.header().to_vec();
    let mut last = 1;
    for row in rows {
        assert!(
            row.line > last,
            "line {} after line {last} in {:?}",
            row.line,
            String::from_utf8_lossy(data)
        );
        last = row.line;
        match row.event {
            Ok(event) => {
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&event).expect("a CSV event is a JSON object");
                assert!(object.keys().all(|k| header.contains(k)), "{object:?}");
                crate::event::check(&event, Format::Json);
            }
            Err(r) => assert!(!r.reason.trim().is_empty(), "a refusal without a reason"),
        }
    }
}

/// Line breaks as an editor shows them (and the csv reader splits rows): `\n`, `\r\n`, `\r`.
fn breaks(b: &[u8]) -> u64 {
    let count = |x: u8| b.iter().filter(|c| **c == x).count();
    (count(b'\n') + count(b'\r') - b.windows(2).filter(|w| w == b"\r\n").count()) as u64
}

/// A table written by a real CSV writer (quoting what needs it).
#[derive(Debug, Arbitrary)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub crlf: bool,
}

/// Written, then read back: every row comes back with the line it was written on, as the
/// object of its non-empty cells, each read as `cell_value` reads it; a row of another
/// width than the header is refused, and the rows after it still come back.
pub fn structured(t: Table) {
    let mut header: Vec<String> = Vec::new();
    for h in t.header.into_iter().take(16) {
        let h = h.trim_start_matches('\u{feff}').trim().to_string();
        if !h.is_empty() && !header.contains(&h) {
            header.push(h);
        }
    }
    if header.is_empty() {
        return;
    }
    let terminator = if t.crlf {
        csv::Terminator::CRLF
    } else {
        csv::Terminator::Any(b'\n')
    };
    let mut out = csv::WriterBuilder::new()
        .flexible(true)
        .terminator(terminator)
        .from_writer(Vec::new());
    out.write_record(&header).expect("header");
    // The line each written row starts on: 2, then after every line break written so far.
    let mut expected = Vec::new();
    for row in t.rows.iter().take(64) {
        // An empty record is written as an empty line, which readers skip: not a row.
        if row.is_empty() || (row.len() == 1 && row[0].is_empty()) {
            continue;
        }
        out.flush().expect("flush");
        let line = 1 + breaks(out.get_ref());
        out.write_record(row).expect("row");
        expected.push((line, row));
    }
    let written = out.into_inner().expect("written");
    let got: Vec<_> = CsvEvents::new(written.as_slice())
        .expect("a written header reads back")
        .collect();
    assert_eq!(got.len(), expected.len(), "rows of {written:?}");
    for (row, (line, cells)) in got.iter().zip(&expected) {
        assert_eq!(row.line, *line, "line of {cells:?} in {written:?}");
        if cells.len() != header.len() {
            assert!(
                row.event.is_err(),
                "a row of {} cells accepted",
                cells.len()
            );
            continue;
        }
        let want: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .zip(cells.iter())
            .filter(|(_, c)| !c.is_empty())
            .map(|(h, c)| (h.clone(), cell_value(c)))
            .collect();
        let event = row.event.as_ref().expect("a row of the header's width");
        let have: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(event).expect("json");
        assert_eq!(have, want, "{written:?}");
    }
}
