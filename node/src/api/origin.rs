//! Requests a web page made, from a page other than the node's own: refused.
//!
//! A browser sends requests to any address a page names, with the user's network: a
//! page from anywhere could post a transfer to a node on loopback (which needs no key),
//! or, by pointing its own DNS name at 127.0.0.1, read the node's API as its own
//! origin. So on a node without API keys, a request a browser made (it says so with
//! `Origin` or `Sec-Fetch-Site`) is refused when it comes from another origin, or is
//! addressed to the node by a name other than an IP address or `localhost` (which a
//! rebinding page cannot forge). Clients that are not browsers (curl, the SDKs, a
//! reverse proxy) send neither header and are not affected, whatever name they use. With
//! API keys every request must carry one, which a page cannot make a browser attach by
//! itself, so nothing more is checked.

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
    let browser = origin.is_some() || request.headers().contains_key("sec-fetch-site");
    if state.keys.is_some() || !browser {
        return next.run(request).await;
    }
    if let Some(why) = refusal(host.as_deref(), origin) {
        return super::error(StatusCode::FORBIDDEN, why);
    }
    next.run(request).await
}

/// Why a browser's request with these headers is refused by a node without keys.
fn refusal(host: Option<&str>, origin: Option<&str>) -> Option<String> {
    if let (Some(origin), Some(host)) = (origin, host) {
        let own = |scheme: &str| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"));
        if !own("http") && !own("https") {
            return Some(format!(
                "a page from {origin} may not use this node's API (only the node's own pages may, unless the node has API keys)"
            ));
        }
    }
    match host {
        Some(host) if !addressed_by_ip(host) => Some(format!(
            "a page may reach this node's API as {host:?} only if the node has API keys (--api-keys): use its IP address, or localhost"
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
        // The node's own page.
        let own = Some("http://127.0.0.1:7434");
        assert_eq!(refusal(Some("127.0.0.1:7434"), own), None);
        assert_eq!(
            refusal(Some("127.0.0.1:7434"), None),
            None,
            "same-origin GET"
        );
        assert_eq!(
            refusal(Some("localhost:7434"), Some("http://LOCALHOST:7434")),
            None
        );
        assert_eq!(refusal(Some("[::1]:7434"), Some("http://[::1]:7434")), None);
        // A page from elsewhere posting a transfer.
        let other = refusal(Some("127.0.0.1:7434"), Some("https://evil.example"));
        assert!(other.unwrap().contains("evil.example"));
        // A page whose own name was pointed at the node (DNS rebinding).
        assert!(refusal(Some("evil.example:7434"), Some("http://evil.example:7434")).is_some());
        assert!(refusal(Some("evil.example:7434"), None).is_some());
    }
}
