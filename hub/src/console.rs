//! The fleet and privacy console (docs/console.md): a page served by the admin listener,
//! framework-free, compiled into the binary. The page holds no data of its own: it signs in
//! with an operator token (kept in the tab's `sessionStorage` only) and calls the admin API,
//! which checks the token and the role on every call — the page only hides what the role cannot
//! use. Strict CSP: nothing but this origin's own script, style and API.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../static/console/index.html");
const SCRIPT: &str = include_str!("../static/console/console.js");
const STYLE: &str = include_str!("../static/console/console.css");

/// The console's Content-Security-Policy: own script and style, calls to this origin only, no
/// framing, no plugins, no inline anything.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// `GET /console` and its script and style.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
