//! The console: a read-only web page at `/` on the API port that shows
//! what the node holds (feeds and their heads, peers and their backlog,
//! recent events, each saga's timeline drawn as a diagram), refreshed every
//! two seconds (`docs/API.md`, "Console").
//!
//! The page is three files under `src/api/console/`, compiled into the
//! binary with `include_str!`: no build step, nothing fetched from
//! anywhere but this node. Its script reads the same `/v1` endpoints any
//! client reads (so it sees exactly what they allow) and builds the page
//! with DOM calls only: every string from the node (payloads, types, feed
//! names) becomes a text node, never markup.
//!
//! Each file is served with [`CONTENT_SECURITY_POLICY`]: scripts, styles
//! and requests from this origin only, no inline script, no frames, no
//! forms. Escaping is the first defence against a hostile payload, the
//! policy the second.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::server::ApiState;

/// The page (`GET /`).
pub const INDEX_HTML: &str = include_str!("console/index.html");
/// Its script (`GET /console/console.js`).
pub const SCRIPT_JS: &str = include_str!("console/console.js");
/// Its style sheet (`GET /console/console.css`).
pub const STYLE_CSS: &str = include_str!("console/console.css");

/// The path of the script, as `index.html` names it.
pub const SCRIPT_PATH: &str = "/console/console.js";
/// The path of the style sheet, as `index.html` names it.
pub const STYLE_PATH: &str = "/console/console.css";

/// The Content-Security-Policy of every console file: only this origin's
/// script, style and `fetch` (`connect-src`), no inline script or event
/// handler attribute, no images but inline SVG built by the script, no
/// plugins, frames, forms or `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The console's routes, outside authentication: the files hold no data;
/// the data comes from `/v1` with the browser's credentials.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(index))
        .route(SCRIPT_PATH, get(script))
        .route(STYLE_PATH, get(style))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// One console file with the headers that keep it from being framed,
/// sniffed into another type, cached stale across upgrades, or leaking
/// the node's address as a referrer.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_script_and_style_from_the_served_paths_and_runs_no_inline_script() {
        assert!(INDEX_HTML.contains(&format!("<script src=\"{SCRIPT_PATH}\"")));
        assert!(INDEX_HTML.contains(&format!("href=\"{STYLE_PATH}\"")));
        // One <script> element, with a src: an inline one would be refused
        // by the policy and the page would stay empty.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        // No inline event handler attribute (` onload=`, ` onclick=`...).
        for (at, _) in INDEX_HTML.match_indices(" on") {
            let name: String = INDEX_HTML[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                !INDEX_HTML[at + 1 + name.len()..].starts_with('='),
                "inline handler {name}"
            );
        }
    }

    #[test]
    fn the_script_never_parses_strings_as_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT_JS.contains(sink), "console.js uses {sink}");
        }
    }
}
