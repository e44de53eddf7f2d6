//! The main listener's request path, top to bottom: limits that apply to
//! every request, then the route (profile lookup, batch, enrich, or
//! passthrough to the Officer), then metrics. Every error becomes the JSON
//! body of SPEC section 4 here.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::body::Body;
use crate::error::ProxyError;
use crate::headers;
use crate::passthrough;
use crate::server::{ConnInfo, Handler};
use crate::state::{Runtime, State};

/// Which part of the product answers a request; also the `route` label of
/// `profile_edge_request_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Passthrough,
}

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Passthrough => "passthrough",
        }
    }

    fn classify(_req: &Request<Incoming>, _rt: &Runtime) -> Route {
        Route::Passthrough
    }
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
        let limit = rt.config.server.max_header_size.as_usize();
        let size = headers::head_size(req.headers());
        if size > limit {
            return Err(ProxyError::HeadersTooLarge(format!(
                "request headers are {size} bytes; server.max_header_size is {limit}"
            )));
        }
        match route {
            Route::Passthrough => {
                passthrough::forward(req, conn, &rt.officer, &self.state.metrics, "passthrough")
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
            .request_duration
            .with_label_values(&[route.label()])
            .observe(started.elapsed().as_secs_f64());
        resp
    }
}
