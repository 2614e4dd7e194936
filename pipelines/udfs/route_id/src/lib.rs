//! `route_id(file_name)`: the route a transferred file belongs to, read from its name.
//!
//! Files are named `<route>-<sequence>.<extension>` in lowercase (`sftp-bank-a-0042.csv`
//! belongs to route `SFTP-BANK-A`). A name without a numeric sequence is a broken upstream
//! contract: the function panics, as strict user code does, and Anom dead-letters that event.

use arroyo_udf_plugin::udf;

#[udf]
fn route_id(file_name: &str) -> String {
    let stem = file_name
        .rsplit_once('.')
        .map_or(file_name, |(stem, _extension)| stem);
    let (route, sequence) = stem
        .rsplit_once('-')
        .expect("a file name is <route>-<sequence>.<extension>");
    assert!(
        !sequence.is_empty() && sequence.bytes().all(|b| b.is_ascii_digit()),
        "`{sequence}` is not a numeric sequence"
    );
    route.to_ascii_uppercase()
}
