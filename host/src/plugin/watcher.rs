//! Watches the plugin directory (`notify`) and reports which event types'
//! files changed, debounced: a burst of writes to `NAME.wasm`/`NAME.toml` is
//! reported once, after the directory has been quiet for the debounce time.

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// Keeps the OS watch alive; dropping it stops the reports.
pub struct DirWatcher {
    _watcher: RecommendedWatcher,
}

/// Starts watching `dir`. The receiver yields the names (file stems) of the
/// types whose `*.wasm` or `*.toml` changed, once per quiet period.
pub fn watch(
    dir: &Path,
    debounce: Duration,
) -> anyhow::Result<(DirWatcher, mpsc::Receiver<BTreeSet<String>>)> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<String>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if changes_content(&event.kind) => {
                for name in event.paths.iter().filter_map(|p| type_name(p)) {
                    let _ = raw_tx.send(name);
                }
            }
            Ok(_read) => {}
            Err(error) => tracing::warn!(%error, "plugin directory watch error"),
        })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;

    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(first) = raw_rx.recv().await {
            let mut names = BTreeSet::from([first]);
            // Wait for the burst to end: a file still being written keeps
            // producing events.
            loop {
                match tokio::time::timeout(debounce, raw_rx.recv()).await {
                    Ok(Some(name)) => {
                        names.insert(name);
                    }
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            if tx.send(names).await.is_err() {
                return;
            }
        }
    });
    Ok((DirWatcher { _watcher: watcher }, rx))
}

/// Whether an event can change what a file holds. Reading a file (opening,
/// reading, closing it unwritten) cannot: a host reads its plugin files
/// when it checks them, and two replicas sharing a directory would
/// otherwise wake each other for ever.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// `NAME` for `NAME.wasm` and `NAME.toml`; hidden and other files are ignored.
fn type_name(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?;
    if ext != "wasm" && ext != "toml" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.starts_with('.')).then(|| stem.to_string())
}

#[cfg(test)]
mod tests {
    use super::{changes_content, type_name};
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
    use std::path::Path;

    #[test]
    fn reading_a_file_is_not_a_change_and_writing_one_is() {
        for read in [
            AccessKind::Open(AccessMode::Read),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
            AccessKind::Any,
        ] {
            assert!(!changes_content(&EventKind::Access(read)), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(changes_content(&change), "{change:?}");
        }
    }

    #[test]
    fn only_wasm_and_toml_files_name_a_type() {
        assert_eq!(
            type_name(Path::new("/p/birthday.wasm")).as_deref(),
            Some("birthday")
        );
        assert_eq!(
            type_name(Path::new("/p/birthday.toml")).as_deref(),
            Some("birthday")
        );
        assert_eq!(type_name(Path::new("/p/birthday.wasm.part")), None);
        assert_eq!(type_name(Path::new("/p/.birthday.wasm")), None);
        assert_eq!(type_name(Path::new("/p/README.md")), None);
    }
}
