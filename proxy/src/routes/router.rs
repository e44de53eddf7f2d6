//! The main listener's request path, top to bottom: limits that apply to
//! every request, then the route (profile lookup, batch, or passthrough to
//! the Officer), then metrics. Every error becomes its JSON body here
//! (README "Errors the proxy produces").

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::http::body::Body;
use crate::http::error::ProxyError;
use crate::http::headers;
use crate::http::server::{ConnInfo, Handler};
use crate::routes::enrich;
use crate::routes::passthrough;
use crate::routes::{batch, notifications, profile};
use crate::state::{Runtime, State};

/// Which part of the product answers a request; `label()` is the `route`
/// label of `profile_edge_request_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Profile,
    Batch,
    /// An `[[enrich]]` route, by its index in the config.
    Enrich(usize),
    Passthrough,
    /// `GET {notifications.path}`.
    Notifications,
}

impl Route {
    pub fn label(self) -> &'static str {
        crate::metrics::ROUTES[self.index()]
    }

    fn index(self) -> usize {
        match self {
            Route::Profile => 0,
            Route::Batch => 1,
            Route::Enrich(_) => 2,
            Route::Passthrough => 3,
            Route::Notifications => 4,
        }
    }

    /// GET on `{user_path}` without a query is a profile lookup; POST on
    /// `{batch_path}` is a batch; a path under an `[[enrich]]` prefix is
    /// enriched; everything else passes through to the Officer.
    fn classify(req: &Request<Incoming>, rt: &Runtime) -> Route {
        let path = req.uri().path();
        if let Some(i) = rt
            .config
            .enrich
            .iter()
            .position(|r| path.starts_with(&r.path_prefix))
        {
            return Route::Enrich(i);
        }
        if req.method() == Method::GET
            && rt
                .config
                .notifications
                .as_ref()
                .is_some_and(|n| n.path == path)
        {
            return Route::Notifications;
        }
        let batch_path = rt.config.profiles.batch_path.as_str();
        if req.method() == Method::POST && path == batch_path {
            Route::Batch
        } else if req.method() == Method::GET
            && req.uri().query().is_none()
            && path != batch_path
            && profile_id(path, &rt.user_prefix).is_some()
        {
            Route::Profile
        } else {
            Route::Passthrough
        }
    }
}

/// The `{id}` segment of a profile path.
fn profile_id<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

pub struct MainRouter {
    state: Arc<State>,
}

impl MainRouter {
    pub fn new(state: Arc<State>) -> MainRouter {
        MainRouter { state }
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        rt: &Runtime,
        route: Route,
    ) -> Result<Response<Body>, ProxyError> {
        headers::check_target(&req)?;
        let limit = rt.config.server.max_header_size.as_usize();
        let size = headers::head_size(req.headers());
        if size > limit {
            return Err(ProxyError::HeadersTooLarge(format!(
                "request headers are {size} bytes; server.max_header_size is {limit}"
            )));
        }
        let state = &self.state;
        match route {
            Route::Profile => {
                let id = profile_id(req.uri().path(), &rt.user_prefix).unwrap_or_default();
                profile::get_profile(&state.profiles, &state.metrics, &state.warm_up, id).await
            }
            Route::Batch => {
                let server = &rt.config.server;
                let (max_body, timeout) = (
                    server.max_body_size.as_usize(),
                    server.body_read_timeout.get(),
                );
                batch::batch(
                    req,
                    &state.profiles,
                    &state.metrics,
                    &state.warm_up,
                    max_body,
                    timeout,
                )
                .await
            }
            Route::Enrich(i) => match rt.config.enrich.get(i) {
                Some(route) => enrich::handle(req, conn, rt, route, state).await,
                None => Err(ProxyError::Internal("enrich route vanished".into())),
            },
            Route::Notifications => notifications::handle(req, state).await,
            Route::Passthrough => {
                let idle = rt.config.server.body_read_timeout.get();
                passthrough::forward(
                    req,
                    conn,
                    &rt.officer,
                    &state.metrics,
                    Some("passthrough"),
                    idle,
                )
                .await
            }
        }
    }
}

impl Handler for MainRouter {
    async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        // One runtime for the whole request: a reload mid-request does not
        // mix two configs.
        let rt = self.state.runtime();
        let route = Route::classify(&req, &rt);
        let span = tracing::debug_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            route = route.label(),
            peer = %conn.peer,
        );
        let result = self
            .dispatch(req, conn, &rt, route)
            .instrument(span.clone())
            .await;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                if let ProxyError::RequestTimeout(_) = e {
                    self.state.metrics.client_timeout("body");
                }
                span.in_scope(|| {
                    if e.status().is_server_error() {
                        tracing::warn!(status = e.status().as_u16(), error = %e, "request failed");
                    } else {
                        tracing::debug!(status = e.status().as_u16(), error = %e, "request refused");
                    }
                });
                e.into_response()
            }
        };
        self.state
            .metrics
            .observe_route(route.index(), started.elapsed().as_secs_f64());
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::profile_id;

    #[test]
    fn profile_id_is_one_segment_under_the_prefix() {
        assert_eq!(profile_id("/api/users/abc", "/api/users"), Some("abc"));
        assert_eq!(profile_id("/api/users/abc/followers", "/api/users"), None);
        assert_eq!(profile_id("/api/users/", "/api/users"), None);
        assert_eq!(profile_id("/api/usersx/abc", "/api/users"), None);
        assert_eq!(profile_id("/other/abc", "/api/users"), None);
    }
}
