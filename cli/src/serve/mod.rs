//! `keel serve`: the web dashboard, server-rendered, on [`keel::admin::Admin`].
//!
//! Pages: queues (counts, pause and resume), jobs by state, queue and kind with
//! paging, a job with its attempts as a timeline, the leader, periodic
//! schedules, and `/metrics` in Prometheus text. List pages refresh every
//! [`REFRESH_SECS`] seconds (`?refresh=off` stops it).
//!
//! Safety, in order of the request's path through [`router`]:
//! * it listens on 127.0.0.1 unless told otherwise, and anywhere else only
//!   with `--auth USER:PASSWORD` (HTTP Basic, checked on every request);
//! * every change is a `POST` from a confirmation page carrying a per-process
//!   random token; a `POST` without it, or one a browser marks as cross-site
//!   (`Sec-Fetch-Site`, `Origin`), is refused;
//! * `--read-only` renders no action and refuses every `POST`;
//! * every value shown goes through maud's escaping, so a payload of
//!   `<script>` is text; the page loads nothing from elsewhere and its
//!   `Content-Security-Policy` forbids scripts.

mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use keel::admin::Admin;
use metrics_exporter_prometheus::PrometheusHandle;

/// Seconds between refreshes of a list page.
pub const REFRESH_SECS: u32 = 5;

/// How `keel serve` was asked to run.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// `USER:PASSWORD` every request must present (HTTP Basic).
    pub auth: Option<String>,
    /// Show, never change.
    pub read_only: bool,
}

impl ServeOptions {
    /// Refuse a setting that would expose the dashboard: any address but
    /// loopback needs `--auth`, and a credential must have both halves.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(auth) = &self.auth {
            match auth.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => {}
                _ => return Err("--auth must be USER:PASSWORD, both non-empty".into()),
            }
        }
        if !self.listen.ip().is_loopback() && self.auth.is_none() {
            return Err(format!(
                "--listen {} is reachable from other machines: add --auth USER:PASSWORD, \
                 or listen on 127.0.0.1",
                self.listen
            ));
        }
        Ok(())
    }
}

/// What every handler shares.
pub(crate) struct App {
    pub admin: Admin,
    pub read_only: bool,
    /// The token every form carries; random per process.
    pub csrf: String,
    /// `Basic base64(user:password)`, when auth is on.
    pub basic: Option<String>,
    pub metrics: PrometheusHandle,
}

/// The dashboard's routes over `admin`.
pub fn router(admin: Admin, options: &ServeOptions, metrics: PrometheusHandle) -> Router {
    let app = Arc::new(App {
        admin,
        read_only: options.read_only,
        csrf: random_token(),
        basic: options.auth.as_ref().map(|a| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        }),
        metrics,
    });
    Router::new()
        .route("/", get(pages::queues))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/confirm/{action}", get(pages::confirm))
        .route("/jobs/{id}/{action}", post(pages::act_on_job))
        .route("/queues/{name}/{action}", post(pages::act_on_queue))
        .route("/leader", get(pages::leader))
        .route("/periodic", get(pages::periodic))
        .route("/metrics", get(pages::metrics))
        .route("/style.css", get(pages::style))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Serve until Ctrl-C.
pub async fn serve(admin: Admin, options: ServeOptions) -> Result<(), String> {
    options.validate()?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let mode = if options.read_only {
        " (read-only)"
    } else {
        ""
    };
    println!("keel dashboard on http://{addr}/{mode}");
    axum::serve(listener, router(admin, &options, metrics))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server failed: {e}"))
}

fn random_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    // The token must be unguessable, not reproducible: the OS's randomness.
    #[allow(clippy::disallowed_methods, reason = "a secret, not a simulated draw")]
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal without a timing signal of where two secrets first differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Authentication, cross-site and read-only checks, and the security
/// headers every response carries.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(expected) = &app.basic {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same_secret(given, expected) {
            let mut response =
                (StatusCode::UNAUTHORIZED, "sign in to the keel dashboard\n").into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"keel\", charset=\"UTF-8\""),
            );
            return response;
        }
    }
    if request.method() == axum::http::Method::POST {
        if app.read_only {
            return (StatusCode::FORBIDDEN, "this dashboard is read-only\n").into_response();
        }
        if is_cross_site(request.headers()) {
            return (StatusCode::FORBIDDEN, "cross-site request refused\n").into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Whether a browser says this request came from another site: by
/// `Sec-Fetch-Site`, or an `Origin` whose host is not this `Host`.
fn is_cross_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return true;
        }
    }
    match (text("origin"), text("host")) {
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            origin_host != host
        }
        _ => false,
    }
}

/// A plain-text error page body.
pub(crate) fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(listen: &str, auth: Option<&str>) -> ServeOptions {
        ServeOptions {
            listen: listen.parse().expect("address"),
            auth: auth.map(str::to_owned),
            read_only: false,
        }
    }

    #[test]
    fn only_loopback_may_listen_without_a_password() {
        assert!(options("127.0.0.1:8080", None).validate().is_ok());
        assert!(options("[::1]:8080", None).validate().is_ok());
        let err = options("0.0.0.0:8080", None).validate().expect_err("open");
        assert!(err.contains("add --auth"), "{err}");
        assert!(options("0.0.0.0:8080", Some("ops:s3cret"))
            .validate()
            .is_ok());
        assert!(options("127.0.0.1:8080", Some("ops:")).validate().is_err());
        assert!(options("127.0.0.1:8080", Some("nocolon"))
            .validate()
            .is_err());
    }

    #[test]
    fn a_request_from_another_site_is_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(!is_cross_site(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(!is_cross_site(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(is_cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(is_cross_site(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ])));
        assert!(is_cross_site(&headers(&[("origin", "null")])));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }
}
