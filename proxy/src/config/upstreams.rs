//! `[upstreams.NAME]`: the origins requests are proxied to; `officer` is
//! the one profile lookups and passthrough use, `[[enrich]]` routes name the
//! others.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{file_must_exist, Problem};
use crate::units::Dur;

/// The name of the upstream that profile lookups and passthrough go to.
pub const OFFICER: &str = "officer";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, `http://` or `https://`; a path here is prefixed to every request path.
    pub url: String,
    /// Time allowed until the upstream's response head arrives; then 504.
    #[serde(default = "defaults::upstream_timeout")]
    pub timeout: Dur,
    /// Time allowed to open a connection; then 502.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
    /// Extra PEM CA bundle trusted for this upstream, beside the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Speak HTTP/2 with prior knowledge to a plaintext upstream.
    #[serde(default)]
    pub h2c: bool,
    /// Idle keep-alive connections kept per upstream host.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle: usize,
    /// How long an idle pooled connection is kept.
    #[serde(default = "defaults::pool_idle_timeout")]
    pub pool_idle_timeout: Dur,
}

/// Splits an upstream base URL into scheme, authority and path prefix.
pub fn parse_base_url(
    url: &str,
) -> Result<(http::uri::Scheme, http::uri::Authority, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a scheme (http:// or https://)"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("{url:?}: scheme must be http or https"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a host"))?;
    if uri.query().is_some() {
        return Err(format!("{url:?}: a base URL cannot carry a query"));
    }
    let path = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, path))
}

mod defaults {
    use crate::units::Dur;
    pub fn upstream_timeout() -> Dur {
        Dur::secs(2)
    }
    pub fn connect_timeout() -> Dur {
        Dur::secs(1)
    }
    pub fn pool_max_idle() -> usize {
        256
    }
    pub fn pool_idle_timeout() -> Dur {
        Dur::secs(90)
    }
}

/// Problems in every `[upstreams.NAME]` table, and a missing `officer`.
pub(super) fn validate_upstreams(upstreams: &BTreeMap<String, UpstreamConfig>) -> Vec<Problem> {
    let mut out = Vec::new();
    if !upstreams.contains_key(OFFICER) {
        out.push(Problem::new(
            "upstreams.officer",
            "is required: it is the Officer API that profile-edge fronts",
        ));
    }
    for (name, up) in upstreams {
        out.extend(up.validate(name));
    }
    out
}

impl UpstreamConfig {
    /// Problems under `upstreams.{name}.*`.
    pub fn validate(&self, name: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let key = |k: &str| format!("upstreams.{name}.{k}");
        if let Err(reason) = parse_base_url(&self.url) {
            out.push(Problem::new(key("url"), reason));
        }
        if self.timeout.get().is_zero() {
            out.push(Problem::new(key("timeout"), "must be more than 0"));
        }
        if self.connect_timeout.get().is_zero() {
            out.push(Problem::new(key("connect_timeout"), "must be more than 0"));
        }
        if let Some(ca) = &self.ca_file {
            file_must_exist(&mut out, &key("ca_file"), ca);
        }
        if self.h2c && self.url.starts_with("https:") {
            out.push(Problem::new(
                key("h2c"),
                "applies to http:// upstreams only; https negotiates HTTP/2 by ALPN",
            ));
        }
        out
    }
}
