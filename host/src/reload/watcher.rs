//! The file watcher: polls pipeline.toml and the plugin files it names, and
//! asks for a reload once a change has settled.
//!
//! Polling, not change notifications, so that editors that save by rename,
//! half-copied files and Kubernetes ConfigMap symlink swaps all work: a file
//! is fingerprinted by its length, modification time, inode and change
//! time, and a change is reloaded once the file has stayed the same for
//! [`SETTLE`].

use super::{Request, Trigger};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// How often the watched files are checked. Default 100 ms: a change is
/// noticed quickly, at the cost of a few `stat` calls.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a changed file must stay unchanged before it is reloaded, so
/// that a file being copied is read once, complete. Default 200 ms.
pub const SETTLE: Duration = Duration::from_millis(200);
/// Polls the watched files and asks for a reload once a change has settled.
pub async fn watch(watched: Arc<Mutex<Vec<PathBuf>>>, requests: mpsc::Sender<Request>) {
    let mut seen: Vec<(PathBuf, Option<Fingerprint>)> = Vec::new();
    let mut changed_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let files = watched.lock().expect("watched lock").clone();
        let now: Vec<(PathBuf, Option<Fingerprint>)> =
            files.into_iter().map(|f| (f.clone(), fingerprint(&f))).collect();
        // A file that joins the list is not a change (it was just loaded);
        // a file on both lists that differs is.
        let changed = now.iter().any(|(path, print)| seen.iter().any(|(p, old)| p == path && old != print));
        seen = now;
        if changed {
            changed_at = Some(Instant::now());
            continue;
        }
        if changed_at.is_some_and(|at| at.elapsed() >= SETTLE) {
            changed_at = None;
            if requests.send(Request { trigger: Trigger::Watch, reply: None }).await.is_err() {
                return;
            }
        }
    }
}

/// What tells a file's versions apart without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    changed: i64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
        changed: m.ctime_nsec() + m.ctime() * 1_000_000_000,
    })
}
