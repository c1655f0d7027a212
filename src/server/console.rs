//! The web console (`GET /ui/`): three files built into the binary (`console/`), served
//! gzip-compressed to browsers that take it, with an ETag and a Content-Security-Policy that
//! lets the page load nothing but its own files and talk to nothing but this server. The
//! console itself is a client of the HTTP API; `GET /v1/whoami` tells it what the token it
//! holds may do, so that it shows only that (the server refuses the rest all the same).
//!
//! These routes sit outside the API's authorization: the files hold no data, and whoami
//! answers `authenticated: false` rather than `401` (so that the console can ask for a
//! token without an error in the browser's log).

use std::io::Write;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::AppState;
use crate::auth::{Grant, Principal};

/// One file of the console, with its compressed form and its ETag (made once).
struct Asset {
    content_type: &'static str,
    raw: &'static [u8],
    packed: OnceLock<(bytes::Bytes, String)>,
}

impl Asset {
    const fn new(content_type: &'static str, raw: &'static str) -> Self {
        Asset {
            content_type,
            raw: raw.as_bytes(),
            packed: OnceLock::new(),
        }
    }

    /// The compressed form and the ETag, made at the first call ([`routes`] makes them at
    /// start-up, off the request path).
    fn packed(&self) -> &(bytes::Bytes, String) {
        self.packed.get_or_init(|| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(self.raw).expect("compressing into memory");
            let gzipped = gz.finish().expect("compressing into memory");
            let etag = format!("\"{:08x}\"", crc32c::crc32c(self.raw));
            (bytes::Bytes::from(gzipped), etag)
        })
    }

    fn serve(&self, headers: &HeaderMap) -> Response {
        let (gzipped, etag) = self.packed();
        let mut resp = if headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == etag.as_bytes())
        {
            StatusCode::NOT_MODIFIED.into_response()
        } else if accepts_gzip(headers) {
            let mut r = gzipped.clone().into_response();
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            r
        } else {
            self.raw.into_response()
        };
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Ok(v) = HeaderValue::from_str(etag) {
            h.insert(header::ETAG, v);
        }
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        // Revalidated each load (a 304 when unchanged): a new server version shows at once.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        secure(resp)
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.trim().split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// The headers that keep the page to itself: nothing from other hosts, no inline script,
/// no framing, no sniffing.
fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

static INDEX: Asset = Asset::new(
    "text/html; charset=utf-8",
    include_str!("console/index.html"),
);
static SCRIPT: Asset = Asset::new(
    "text/javascript; charset=utf-8",
    include_str!("console/app.js"),
);
static STYLE: Asset = Asset::new("text/css; charset=utf-8", include_str!("console/app.css"));

/// What `GET /v1/whoami` answers.
#[derive(Debug, Serialize)]
pub struct WhoAmI {
    /// Tokens are configured: requests need one.
    pub tokens: bool,
    /// The request carried a valid token (always true without tokens).
    pub authenticated: bool,
    /// The token's name (`null` without tokens or without a valid token).
    pub name: Option<String>,
    /// What the token may do (empty without a valid token; without tokens, everything).
    pub grants: Vec<Grant>,
    /// The server is a node of a cluster (`GET /v1/cluster` describes it).
    pub cluster: bool,
}

async fn whoami(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let tokens = !state.tokens().is_empty();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let (authenticated, name, grants) = match state.tokens().authenticate(bearer) {
        Some(Principal::Token { name, grants }) => (true, Some(name), grants),
        Some(Principal::Anyone) => (true, None, Vec::new()),
        None => (false, None, Vec::new()),
    };
    let mut resp = Json(WhoAmI {
        tokens,
        authenticated,
        name,
        grants,
        cluster: state.in_cluster(),
    })
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The console's routes.
pub fn routes() -> Router<AppState> {
    for asset in [&INDEX, &SCRIPT, &STYLE] {
        asset.packed();
    }
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|h: HeaderMap| async move { INDEX.serve(&h) }))
        .route(
            "/ui/index.html",
            get(|h: HeaderMap| async move { INDEX.serve(&h) }),
        )
        .route(
            "/ui/app.js",
            get(|h: HeaderMap| async move { SCRIPT.serve(&h) }),
        )
        .route(
            "/ui/app.css",
            get(|h: HeaderMap| async move { STYLE.serve(&h) }),
        )
        .route("/v1/whoami", get(whoami))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_sent_only_to_those_that_take_it() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&h)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, GZIP;q=0.5"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br, deflate"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_compressed_files_unpack_to_the_files() {
        for asset in [&INDEX, &SCRIPT, &STYLE] {
            let (gz, etag) = asset.packed();
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out)
                .unwrap();
            assert_eq!(out, asset.raw);
            assert!(gz.len() < asset.raw.len(), "compression made it larger");
            assert_eq!(etag.len(), 10);
        }
    }
}
