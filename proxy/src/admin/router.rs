//! The admin listener (README "Admin listener"): health, readiness, metrics and the
//! mutating endpoints, which need `Authorization: Bearer <token>` when a
//! token is configured. It runs on its own address so that it can stay on
//! loopback while the main listener faces clients.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::http::body::{full, json_response, Body};
use crate::http::error::ProxyError;
use crate::http::server::{ConnInfo, Handler};
use crate::reload::{self, ReloadOutcome};
use crate::state::State;

const PURGE_PREFIX: &str = "/admin/cache/users/";

pub struct AdminRouter {
    state: Arc<State>,
}

impl AdminRouter {
    pub fn new(state: Arc<State>) -> AdminRouter {
        AdminRouter { state }
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
        crate::http::headers::check_target(&req)?;
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => {
                Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
            }
            (Method::GET, "/readyz") => {
                if self.state.is_ready() {
                    Ok(json_response(StatusCode::OK, &json!({"status": "ready"})))
                } else {
                    Err(ProxyError::Unavailable(
                        "not ready: starting or draining".into(),
                    ))
                }
            }
            (Method::GET, "/metrics") => {
                let mut resp = Response::new(full(Bytes::from(self.state.metrics.render())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(resp)
            }
            (Method::POST, "/admin/reload") => {
                self.authorize(&req)?;
                let result = reload::reload_config(&self.state, true).await;
                reload::log_outcome(&result, "admin");
                match result {
                    Ok(ReloadOutcome::Applied {
                        needs_restart,
                        warnings,
                    }) => Ok(json_response(
                        StatusCode::OK,
                        &json!({"status": "reloaded", "needs_restart": needs_restart, "warnings": warnings}),
                    )),
                    Ok(ReloadOutcome::Unchanged) => Ok(json_response(
                        StatusCode::OK,
                        &json!({"status": "unchanged"}),
                    )),
                    Err(e) => {
                        let problems: Vec<_> = e
                            .problems
                            .iter()
                            .map(|p| json!({"key": p.key, "reason": p.reason}))
                            .collect();
                        Ok(json_response(
                            StatusCode::BAD_REQUEST,
                            &json!({
                                "error": "config_rejected",
                                "detail": format!("{e}; the running config stays"),
                                "problems": problems,
                            }),
                        ))
                    }
                }
            }
            (Method::GET, "/admin/stats") => {
                let mut stats = self.state.profiles.stats();
                stats["ready"] = json!(self.state.is_ready());
                stats["plugins"] = self.state.plugins.versions();
                stats["backplane"] = self.state.invalidations.stats();
                stats["change_streams"] = self.state.streams.stats();
                stats["post_snapshots"] = self.state.posts.stats();
                stats["warm_up"] = self.state.warm_up.stats();
                stats["notifications"] = self.state.notifications.stats();
                Ok(json_response(StatusCode::OK, &stats))
            }
            (Method::GET, "/admin/plugins") => {
                Ok(json_response(StatusCode::OK, &self.state.plugins.list()))
            }
            (Method::POST, "/admin/events") => {
                self.authorize(&req)?;
                let body = self.read_body(req).await?;
                let done = crate::admin::events::handle(&self.state, &body).await?;
                Ok(json_response(StatusCode::OK, &done))
            }
            (Method::POST, "/admin/notifications") => {
                self.authorize(&req)?;
                let body = self.read_body(req).await?;
                let done = crate::admin::notify::handle(&self.state, &body).await?;
                Ok(json_response(StatusCode::OK, &done))
            }
            (Method::POST, "/admin/warm") => {
                // Token first: an unauthorized request reads no body and
                // loads nothing.
                self.authorize(&req)?;
                let body = self.read_body(req).await?;
                let done = crate::admin::warm::handle(&self.state, &body).await?;
                Ok(json_response(StatusCode::OK, &done))
            }
            (Method::DELETE, p) if p.starts_with(PURGE_PREFIX) => {
                self.authorize(&req)?;
                let id = self
                    .state
                    .profiles
                    .check_path_id("id", &p[PURGE_PREFIX.len()..])
                    .map_err(crate::routes::profile::id_error)?;
                self.state.invalidations.invalidate(&id, "admin").await;
                Ok(json_response(StatusCode::OK, &json!({"invalidated": id})))
            }
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/admin/reload" | "/admin/stats"
                | "/admin/plugins" | "/admin/events" | "/admin/warm",
            ) => Err(ProxyError::MethodNotAllowed(format!(
                "{} is not allowed on {path}",
                req.method()
            ))),
            _ => Err(ProxyError::NotFound(format!("no admin endpoint at {path}"))),
        }
    }

    /// A request body within the main listener's limits
    /// (`server.max_body_size`, `server.body_read_timeout`).
    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, ProxyError> {
        let server = &self.state.runtime().config.server;
        let (limit, timeout) = (
            server.max_body_size.as_usize(),
            server.body_read_timeout.get(),
        );
        crate::http::body::read_limited(req, limit, timeout).await
    }

    /// Checks the bearer token of a mutating request, when one is configured.
    fn authorize(&self, req: &Request<Incoming>) -> Result<(), ProxyError> {
        let rt = self.state.runtime();
        let Some(expected) = rt.admin_token.as_deref() else {
            return Ok(());
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(ProxyError::Unauthorized("the bearer token is wrong".into())),
            None => Err(ProxyError::Unauthorized(
                "this endpoint needs Authorization: Bearer <admin token>".into(),
            )),
        }
    }
}

impl Handler for AdminRouter {
    async fn handle(&self, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        self.dispatch(req).await.unwrap_or_else(|e| {
            if let ProxyError::RequestTimeout(_) = e {
                self.state.metrics.client_timeout("body");
            }
            e.into_response()
        })
    }
}

/// Compares without an early exit so that response timing does not reveal
/// how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
