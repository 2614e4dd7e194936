//! The web console, served at `/`: three files compiled into the binary (`coordinator/console/`),
//! so a coordinator serves it with nothing to install and nothing fetched at run time. It is
//! a client of the HTTP API like any other (see docs/console.md).

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The files change with the binary: a browser asks again rather than keep an old one.
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::HeaderName::from_static("content-security-policy"),
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{file}`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "console.js" => file("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => file("text/css; charset=utf-8", STYLE),
        _ => Problem::new(
            StatusCode::NOT_FOUND,
            format!("no console file `{name}` (there are console.js and console.css)"),
        )
        .into_response(),
    }
}
