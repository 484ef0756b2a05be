//! Requests a web page made, from a page other than the node's own: refused.
//!
//! A browser sends requests to any address a page names, with the user's network: a
//! page from anywhere could post a transfer to a node on loopback (which needs no key),
//! or, by pointing its own DNS name at 127.0.0.1, read the node's API as its own
//! origin. So a request that says it comes from another origin (`Origin`) is refused,
//! and a node without API keys answers only requests addressed to it by IP address or
//! `localhost` (`Host`), which a rebinding page cannot forge. Clients that are not
//! browsers send neither header and are not affected.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::ApiState;

/// Middleware: refuses cross-origin and rebound requests (see the module doc).
pub async fn same_origin(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if let Some(why) = refusal(host.as_deref(), origin, state.keys.is_some()) {
        return super::error(StatusCode::FORBIDDEN, why);
    }
    next.run(request).await
}

/// Why a request with these headers is refused, if it is.
fn refusal(host: Option<&str>, origin: Option<&str>, keys: bool) -> Option<String> {
    if let (Some(origin), Some(host)) = (origin, host) {
        if origin != format!("http://{host}") && origin != format!("https://{host}") {
            return Some(format!(
                "a page from {origin} may not use this node's API (only the node's own pages may)"
            ));
        }
    }
    match host {
        Some(host) if !keys && !addressed_by_ip(host) => Some(format!(
            "this node's API answers {host:?} only with API keys (--api-keys): use its IP address, or localhost"
        )),
        _ => None,
    }
}

/// Whether a `Host` header names an IP address or localhost (with or without a port).
fn addressed_by_ip(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // [::1]:7434, 127.0.0.1:7434, localhost:7434
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_origins_and_rebound_names_are_refused() {
        // Clients that are not browsers, and the node's own page.
        assert_eq!(refusal(Some("127.0.0.1:7434"), None, false), None);
        assert_eq!(refusal(None, None, false), None);
        let own = Some("http://127.0.0.1:7434");
        assert_eq!(refusal(Some("127.0.0.1:7434"), own, false), None);
        assert_eq!(
            refusal(Some("localhost:7434"), Some("http://localhost:7434"), false),
            None
        );
        assert_eq!(
            refusal(Some("[::1]:7434"), Some("http://[::1]:7434"), false),
            None
        );
        // A page from elsewhere posting a transfer.
        let other = refusal(Some("127.0.0.1:7434"), Some("https://evil.example"), false);
        assert!(other.unwrap().contains("evil.example"));
        // A page whose own name was pointed at the node (DNS rebinding).
        let rebound = Some("http://evil.example:7434");
        assert!(refusal(Some("evil.example:7434"), rebound, false).is_some());
        // With keys, a name is fine (a page cannot send the key by itself).
        assert_eq!(refusal(Some("node.example:7434"), None, true), None);
    }
}
