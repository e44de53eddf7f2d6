//! Wires the components from a config, binds the listeners, and owns the
//! shutdown order: stop accepting, mark not ready, drain in-flight requests
//! (bounded by `server.shutdown_timeout`), then stop the admin listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::admin::router::AdminRouter;
use crate::config::{Config, ConfigError};
use crate::http::server::{Handler, LimitsSource, Listener, TlsSource};
use crate::reload;
use crate::routes::router::MainRouter;
use crate::state::{Runtime, State};

/// Admin connections are few (probes, scrapes, operators).
const ADMIN_MAX_CONNECTIONS: usize = 256;
/// How long background tasks get to stop on their own before they are
/// aborted; loads in flight are already bounded by upstream timeouts.
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] notify::Error),
}

/// A running proxy. Dropping it without `shutdown` aborts nothing by
/// itself; call `shutdown` for a drain.
pub struct App {
    state: Arc<State>,
    main_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    stop_main: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    main_drain: Arc<GracefulShutdown>,
    admin_drain: Arc<GracefulShutdown>,
    main_tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl App {
    /// Loads `path`, starts the proxy, and watches the file for changes.
    pub async fn start_from_file(path: &Path) -> Result<App, StartError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![crate::config::Problem::new(
                "(file)",
                format!("cannot read: {e}"),
            )],
        })?;
        let config = Config::parse(&text, &file)?;
        let runtime = Runtime::build(config, &file)?;
        let state = Arc::new(State::new(runtime, Some(path.to_path_buf()))?);
        reload::remember_initial(&state, &text).await;
        let mut app = App::start_with_state(state.clone()).await?;
        app._watcher = Some(reload::watch(state, path)?);
        Ok(app)
    }

    /// Starts the proxy from a config held in memory (tests, the demo);
    /// there is no file to reload.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let runtime = Runtime::build(config, "(in-memory config)")?;
        App::start_with_state(Arc::new(State::new(runtime, None::<PathBuf>)?)).await
    }

    async fn start_with_state(state: Arc<State>) -> Result<App, StartError> {
        let rt = state.runtime();
        // Plugins load before the listeners open: ready means they serve.
        let problems = state.plugins.apply(&rt.config, None).await;
        if !problems.is_empty() {
            return Err(StartError::Config(ConfigError {
                file: "(plugins)".into(),
                problems: problems
                    .into_iter()
                    .map(|(name, reason)| {
                        crate::config::Problem::new(
                            format!("plugins.{name}.path"),
                            reason.to_string(),
                        )
                    })
                    .collect(),
            }));
        }
        // Watchers apply changes through the policies loaded above.
        state.streams.start(&state);
        state.notifications.start(&state);
        let server = &rt.config.server;
        let (stop_main, stop_main_rx) = watch::channel(false);
        let (stop_admin, stop_admin_rx) = watch::channel(false);
        let main_drain = Arc::new(GracefulShutdown::new());
        let admin_drain = Arc::new(GracefulShutdown::new());
        let connections = Arc::new(Semaphore::new(server.max_connections));
        let limits: LimitsSource = {
            let st = state.clone();
            Arc::new(move || st.runtime().conn_limits())
        };
        let tls_source: Option<TlsSource> = rt.tls.clone().map(|initial| {
            let st = state.clone();
            // A reload that drops [server.tls] needs a restart to turn a TLS
            // listener into a plaintext one; until then the last good
            // certificate keeps serving.
            Arc::new(move || Some(st.runtime().tls.clone().unwrap_or_else(|| initial.clone())))
                as TlsSource
        });
        let tls_extra = server.tls.as_ref().and_then(|t| t.listen);
        let main_router = Arc::new(MainRouter::new(state.clone()));
        let mut main_tasks = Vec::new();

        let main_listener = bind("server.listen", server.listen).await?;
        let main_addr = local_addr("server.listen", &main_listener)?;
        let main_tls = if tls_extra.is_none() {
            tls_source.clone()
        } else {
            None
        };
        main_tasks.push(spawn_listener(
            Listener {
                name: "main",
                listener: main_listener,
                handler: main_router.clone(),
                tls: main_tls,
                limits: limits.clone(),
                connections: connections.clone(),
                metrics: Some(state.metrics.clone()),
            },
            &stop_main_rx,
            &main_drain,
        ));

        let mut tls_addr = None;
        if let (Some(addr), Some(tls)) = (tls_extra, tls_source) {
            let l = bind("server.tls.listen", addr).await?;
            tls_addr = Some(local_addr("server.tls.listen", &l)?);
            main_tasks.push(spawn_listener(
                Listener {
                    name: "tls",
                    listener: l,
                    handler: main_router,
                    tls: Some(tls),
                    limits: limits.clone(),
                    connections,
                    metrics: Some(state.metrics.clone()),
                },
                &stop_main_rx,
                &main_drain,
            ));
        }

        let admin_listener = bind("admin.listen", rt.config.admin.listen).await?;
        let admin_addr = local_addr("admin.listen", &admin_listener)?;
        if rt.admin_token.is_none() && !admin_addr.ip().is_loopback() {
            tracing::warn!(%admin_addr, "admin listener is not on loopback and has no token: \
                anyone who reaches it can reload config and purge caches");
        }
        let admin_task = spawn_listener(
            Listener {
                name: "admin",
                listener: admin_listener,
                handler: Arc::new(AdminRouter::new(state.clone())),
                tls: None,
                limits,
                connections: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
                metrics: None,
            },
            &stop_admin_rx,
            &admin_drain,
        );

        state.set_ready(true);
        tracing::info!(%main_addr, tls = rt.tls.is_some(), ?tls_addr, %admin_addr,
            officer = %rt.officer.authority(), "profile-edge listening");
        Ok(App {
            state,
            main_addr,
            tls_addr,
            admin_addr,
            stop_main,
            stop_admin,
            main_drain,
            admin_drain,
            main_tasks,
            admin_task,
            _watcher: None,
        })
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The main listener's bound address (resolves port 0).
    pub fn main_addr(&self) -> SocketAddr {
        self.main_addr
    }

    /// The extra TLS listener's address, when `server.tls.listen` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Drains and stops: no new connections, readiness off, in-flight
    /// requests finish (up to `server.shutdown_timeout`), then the
    /// background tasks stop (watchers, batcher, retries), then the admin
    /// listener closes. No task of this app outlives the call.
    pub async fn shutdown(mut self) {
        self.state.set_ready(false);
        let _ = self.stop_main.send(true);
        // Streams never end by themselves: end them, so the drain below
        // waits only for real requests.
        self.state.notifications.close();
        let timeout = self.state.runtime().config.server.shutdown_timeout.get();
        tracing::info!(
            open_connections = self.main_drain.count(),
            ?timeout,
            "draining"
        );
        drain(self.main_tasks, self.main_drain, timeout).await;
        // No request is left to wait on a load or a reload: stop watching,
        // then drain the background tasks.
        self._watcher = None;
        self.state.plugins.stop_watching();
        self.state.tasks.shutdown(BACKGROUND_GRACE).await;
        let _ = self.stop_admin.send(true);
        drain(
            vec![self.admin_task],
            self.admin_drain,
            Duration::from_secs(1),
        )
        .await;
        tracing::info!("stopped");
    }
}

/// Waits for the accept loops to let go of the drain handle, then for the
/// connections they started, at most `timeout`.
async fn drain(tasks: Vec<JoinHandle<()>>, drain: Arc<GracefulShutdown>, timeout: Duration) {
    for t in tasks {
        let _ = t.await;
    }
    match Arc::try_unwrap(drain) {
        Ok(drain) => {
            if tokio::time::timeout(timeout, drain.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    ?timeout,
                    "drain timed out; closing the remaining connections"
                );
            }
        }
        Err(_) => tracing::warn!("drain handle still shared; not waiting for connections"),
    }
}

fn spawn_listener<H: Handler>(
    listener: Listener<H>,
    stop: &watch::Receiver<bool>,
    drain: &Arc<GracefulShutdown>,
) -> JoinHandle<()> {
    tokio::spawn(listener.run(stop.clone(), drain.clone()))
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}

fn local_addr(key: &'static str, l: &TcpListener) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind {
        key,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// Resolves when the process gets SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the proxy");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
