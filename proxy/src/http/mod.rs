//! The HTTP edges of the proxy: listeners and connection limits (`server`),
//! body helpers, header rules, the error type every route answers with,
//! TLS, and the pooled clients to upstreams.

pub mod body;
pub mod error;
pub mod headers;
pub mod server;
pub mod tls;
pub mod upstream;
