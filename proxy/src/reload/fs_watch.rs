//! Directory watching for hot reload, shared by the config file and the
//! plugin files. Watching the directory (not the file) is what makes
//! editors' atomic renames and Kubernetes' ConfigMap symlink swaps visible.
//! Events are debounced; the callback decides whether anything changed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::lifecycle::Tasks;

/// Quiet time after the last event before the callback runs: editors and
/// ConfigMap updates touch several paths in a burst.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches `dirs` and runs `on_change` on a task named `what` after each
/// burst of events. Watching stops when the returned watcher is dropped or
/// on the drain.
pub fn watch_dirs<F, Fut>(
    dirs: &[PathBuf],
    what: &'static str,
    tasks: &Tasks,
    on_change: F,
) -> notify::Result<RecommendedWatcher>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // A full channel already holds a wake-up; dropping this one is fine.
            Ok(e) if !e.kind.is_access() => {
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(what, error = %e, "file watcher error"),
        })?;
    for dir in dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        tracing::info!(what, dir = %dir.display(), "watching for changes");
    }
    tasks.spawn(what, move |drain| async move {
        loop {
            tokio::select! {
                event = rx.recv() => if event.is_none() { return },
                _ = drain.wait() => return,
            }
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            if drain.is_draining() {
                return;
            }
            on_change().await;
        }
    });
    Ok(watcher)
}

/// The directory to watch for a file: its parent, `.` for a bare name.
pub fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_file_name_watches_working_directory() {
        assert_eq!(dir_of(Path::new("edge.toml")), PathBuf::from("."));
        assert_eq!(
            dir_of(Path::new("config/edge.toml")),
            PathBuf::from("config")
        );
    }
}
