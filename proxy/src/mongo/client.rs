//! A MongoDB client made at its first use: parsing a `mongodb+srv://`
//! string resolves DNS and a server may be down at start-up, and neither
//! should stop the proxy from starting. Each user (the snapshot tier, a
//! change stream, the post snapshot writer) holds its own, so that a slow
//! stream cannot take the tier's connections.

use std::time::Duration;

use mongodb::error::{Error, ErrorKind};
use mongodb::options::ClientOptions;
use mongodb::Client;
use tokio::sync::OnceCell;

pub struct LazyClient {
    uri: String,
    connect_timeout: Duration,
    cell: OnceCell<Client>,
}

impl LazyClient {
    pub fn new(uri: &str, connect_timeout: Duration) -> LazyClient {
        LazyClient {
            uri: uri.to_string(),
            connect_timeout,
            cell: OnceCell::new(),
        }
    }

    /// The client, made now if this is the first call (a failed attempt is
    /// not remembered: the next call tries again).
    pub async fn get(&self) -> Result<&Client, mongodb::error::Error> {
        self.cell
            .get_or_try_init(|| async {
                let mut opts = ClientOptions::parse(&self.uri).await?;
                opts.app_name = Some("profile-edge".into());
                opts.connect_timeout = Some(self.connect_timeout);
                // Without this a call waits 30 s for a server that is down.
                opts.server_selection_timeout = Some(self.connect_timeout);
                Client::with_options(opts)
            })
            .await
    }

    /// Closes the client if one was made, so that the driver's background
    /// tasks end now rather than whenever the last handle is dropped.
    pub async fn shutdown(&self) {
        if let Some(c) = self.cell.get() {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, c.clone().shutdown()).await;
        }
    }
}

/// How long a shutdown waits for operations in flight on the client.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// A server error as its code and message (the driver's own text carries
/// the whole raw reply).
pub fn describe(e: &Error) -> String {
    match &*e.kind {
        ErrorKind::Command(c) => format!("{} ({}): {}", c.code_name, c.code, c.message),
        // The driver's text of a selection failure lists the whole topology.
        ErrorKind::ServerSelection { .. } => "no server could be reached in time".to_string(),
        _ => e.to_string().chars().take(300).collect(),
    }
}
