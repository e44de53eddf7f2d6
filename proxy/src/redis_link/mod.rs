//! Connections to Redis for the shared tier, the backplane and the
//! notifications relay, whatever the deployment: one server or a Redis
//! Cluster, plain or TLS (rustls with the aws-lc provider the rest of the
//! binary uses), with AUTH. `Target` is built once from an `Endpoint`;
//! `Link` is a connection that speaks like any other (`ConnectionLike`),
//! so the callers' commands, pipelines and scripts do not care which it is.
//! On a cluster the library routes by key and follows MOVED/ASK;
//! `topology` is the proxy's own view of which node serves a slot (for
//! per-node breakers), `slot` the hash that decides it.

pub mod endpoint;
pub mod slot;
pub mod topology;

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value,
};

pub use endpoint::{redact, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot read the CA file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("environment variable {0} (password_env) is not set")]
    PasswordEnv(String),
    #[error("{url}: {detail}")]
    Url { url: String, detail: String },
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

impl LinkError {
    /// The config key to name for this error, under `section`
    /// (`tiers.redis`, `backplane`) that described a cluster or not.
    pub fn key(&self, section: &str, cluster: bool) -> String {
        let field = match self {
            LinkError::CaFile { .. } => "tls_ca_file",
            LinkError::PasswordEnv(_) => "password_env",
            _ if cluster => "nodes",
            _ => "url",
        };
        format!("{section}.{field}")
    }
}

/// A configured Redis, ready to hand out connections.
#[derive(Clone)]
// Built once per tier or backplane start and never moved on a request
// path, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Standalone(redis::Client),
    Cluster(ClusterClient),
}

impl Target {
    /// Builds the client: reads the CA file and the password variable now,
    /// so a mistake is reported at start-up or reload, not on first use.
    /// Connects to nothing.
    pub fn open(ep: &Endpoint) -> Result<Target, LinkError> {
        let certs = match &ep.ca_file {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| LinkError::CaFile {
                    path: crate::config::resolved(path),
                    detail: e.to_string(),
                })?),
            }),
            None => None,
        };
        let password = match &ep.password_env {
            Some(var) => Some(std::env::var(var).map_err(|_| LinkError::PasswordEnv(var.clone()))?),
            None => None,
        };
        let bad_url = |url: &str, e: redis::RedisError| LinkError::Url {
            url: redact(url),
            detail: e.to_string(),
        };
        let mut infos = Vec::with_capacity(ep.urls.len());
        for url in &ep.urls {
            let mut info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| bad_url(url, e))?;
            let mut settings = info.redis_settings().clone();
            if let (Some(user), None) = (&ep.username, settings.username()) {
                settings = settings.set_username(user);
            }
            if let (Some(pw), None) = (&password, settings.password()) {
                settings = settings.set_password(pw);
            }
            info = info.set_redis_settings(settings);
            infos.push(info);
        }
        if ep.cluster {
            let mut b = ClusterClientBuilder::new(infos)
                .connection_timeout(ep.connect_timeout)
                // Redirects (MOVED/ASK) and a refresh after a failover are
                // retries; more than a few only keep a request waiting
                // past the tier's own timeout.
                .retries(3)
                .min_retry_wait(5)
                .max_retry_wait(100);
            if let Some(certs) = certs {
                b = b.certs(certs);
            }
            let first = ep.urls.first().map_or("", String::as_str);
            b.build()
                .map(Target::Cluster)
                .map_err(|e| bad_url(first, e))
        } else {
            let url = ep.urls.first().map_or("", String::as_str);
            let info = infos.into_iter().next().ok_or_else(|| LinkError::Url {
                url: String::new(),
                detail: "no URL".into(),
            })?;
            match certs {
                Some(certs) => redis::Client::build_with_tls(info, certs),
                None => redis::Client::open(info),
            }
            .map(Target::Standalone)
            .map_err(|e| bad_url(url, e))
        }
    }

    /// The connection every caller shares (it multiplexes), made on first
    /// use and remade after a failure: Redis may be down now.
    pub fn shared(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Link, redis::RedisError> {
        self.shared_with(connect_timeout, response_timeout, Some(response_timeout))
    }

    /// Like `shared`, for a caller that bounds every call itself (the
    /// tier's guard): a standalone connection then keeps no response timer
    /// of its own, so a call pays for one timeout, not two. A cluster
    /// connection keeps the library's, which also decides its retries and
    /// slot-map refreshes per node.
    pub fn shared_bounded_by_caller(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Link, redis::RedisError> {
        self.shared_with(connect_timeout, response_timeout, None)
    }

    /// `standalone_timeout` is the standalone connection's own response
    /// timeout (none: the caller's); a cluster always has `response_timeout`.
    fn shared_with(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
        standalone_timeout: Option<Duration>,
    ) -> Result<Link, redis::RedisError> {
        match self {
            Target::Standalone(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(standalone_timeout)
                    // The breaker decides when to try again; the manager
                    // should not keep a request waiting through a long
                    // retry ladder.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(100));
                ConnectionManager::new_lazy_with_config(client.clone(), cfg).map(Link::Managed)
            }
            Target::Cluster(client) => Ok(Link::Cluster(
                client.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(connect_timeout)
                        .set_response_timeout(response_timeout),
                ),
            )),
        }
    }

    /// A connection of its own, for blocking reads (`XREAD BLOCK`) that
    /// would hold up everyone else's commands on a shared one. Connects
    /// now; `response_timeout` must cover a whole block.
    pub async fn dedicated(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Link, String> {
        let connect = async {
            match self {
                Target::Standalone(client) => client
                    .get_multiplexed_async_connection_with_config(
                        &AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(connect_timeout))
                            .set_response_timeout(Some(response_timeout)),
                    )
                    .await
                    .map(Link::Direct),
                Target::Cluster(client) => client
                    .get_async_connection_with_config(
                        ClusterConfig::new()
                            .set_connection_timeout(connect_timeout)
                            .set_response_timeout(response_timeout),
                    )
                    .await
                    .map(Link::Cluster),
            }
        };
        // A cluster connection reads the topology from the seeds first;
        // bound the whole of it, not each socket.
        match tokio::time::timeout(connect_timeout * 4, connect).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no connection within {:?}", connect_timeout * 4)),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

/// A connection to a standalone Redis or to a cluster.
#[derive(Clone)]
pub enum Link {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Link {
    /// Runs a command that names no key (`INFO`, `CLIENT SETNAME`) on the
    /// node that serves `key`: on a cluster, where the stream a reader
    /// follows lives. Standalone: the one server.
    pub async fn on_node_of<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        key: &str,
    ) -> redis::RedisResult<T> {
        match self {
            Link::Cluster(c) => {
                let route = Route::new(slot::slot(key.as_bytes()), SlotAddr::Master);
                routed(c, cmd, SingleNodeRoutingInfo::SpecificNode(route)).await
            }
            other => cmd.query_async(other).await,
        }
    }

    /// Runs a command on one node by address (`host:port`); a cluster's
    /// full scan visits each primary this way. Standalone: the server.
    pub async fn on_node<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        node: &str,
    ) -> redis::RedisResult<T> {
        match self {
            Link::Cluster(c) => {
                let (host, port) = node.rsplit_once(':').unwrap_or((node, "6379"));
                let node = SingleNodeRoutingInfo::ByAddress {
                    host: host.to_string(),
                    port: port.parse().unwrap_or(6379),
                };
                routed(c, cmd, node).await
            }
            other => cmd.query_async(other).await,
        }
    }
}

/// `cmd` on the one cluster node `node` names, its reply read as `T`.
async fn routed<T: redis::FromRedisValue>(
    c: &mut ClusterConnection,
    cmd: &Cmd,
    node: SingleNodeRoutingInfo,
) -> redis::RedisResult<T> {
    let v = c
        .route_command(cmd.clone(), RoutingInfo::SingleNode(node))
        .await?;
    redis::from_redis_value(v).map_err(Into::into)
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Managed(c) => c.req_packed_command(cmd),
            Link::Direct(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Link::Direct(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Managed(c) => c.get_db(),
            Link::Direct(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}
