//! Source address (403): the client address, as the TCP peer or the trusted
//! proxies report it, against `allowedSourceRanges`.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use hookline_api::validated::SourceFilter;

use crate::Rejection;

/// Refuses a `client` outside the allowed ranges, or one whose address could
/// not be known ([`client_ip`] gave none); with no ranges set, any passes.
pub fn check_source(filter: &SourceFilter, client: Option<IpAddr>) -> Result<(), Rejection> {
    match client {
        _ if filter.allowed.is_empty() => Ok(()),
        Some(ip) if filter.allows(ip) => Ok(()),
        Some(ip) => Err(Rejection::Forbidden(ip.to_string())),
        None => Err(Rejection::Forbidden("unknown".into())),
    }
}

/// The client address: the TCP peer, or with `trusted_proxy_hops` = N the
/// N-th `X-Forwarded-For` entry from the right (what the outermost trusted
/// proxy saw). Too few entries means the proxies were bypassed: unknown.
pub fn client_ip(
    filter: &SourceFilter,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Option<IpAddr> {
    let hops = filter.trusted_proxy_hops;
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    let entry = entries.get(entries.len().checked_sub(hops)?)?;
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| {
            entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(hops: usize) -> SourceFilter {
        SourceFilter {
            allowed: vec!["203.0.113.0/24".parse().expect("cidr")],
            trusted_proxy_hops: hops,
        }
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().expect("value"));
        headers
    }

    #[test]
    fn without_trusted_hops_the_peer_is_the_client() {
        let peer = Some("198.51.100.1".parse().expect("ip"));
        assert_eq!(client_ip(&filter(0), &forwarded("203.0.113.9"), peer), peer);
    }

    #[test]
    fn trusted_hops_count_from_the_right() {
        let headers = forwarded("10.0.0.1, 203.0.113.9, 192.0.2.7");
        assert_eq!(
            client_ip(&filter(1), &headers, None),
            Some("192.0.2.7".parse().expect("ip"))
        );
        assert_eq!(
            client_ip(&filter(2), &headers, None),
            Some("203.0.113.9".parse().expect("ip"))
        );
        assert_eq!(client_ip(&filter(4), &headers, None), None);
    }

    #[test]
    fn an_unknown_client_passes_only_when_no_range_is_set() {
        assert!(matches!(
            check_source(&filter(1), None),
            Err(Rejection::Forbidden(_))
        ));
        assert!(check_source(&SourceFilter::default(), None).is_ok());
    }
}
