//! The compiled-code cache: in memory per engine, on disk across restarts,
//! keyed by the plugin's bytes, and never trusted when it is damaged.

mod support;

use sluice::engine::{CodeOrigin, Engine};

#[test]
fn compiled_code_is_cached_in_memory_and_on_disk_by_content() {
    let cache = std::env::temp_dir().join(format!("sluice-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let plugin = support::repo_root().join("plugins/dist/categorize.wasm");
    let load = |engine: &Engine| engine.load(&plugin).unwrap().origin;

    let engine = Engine::with_cache(Some(cache.clone())).unwrap();
    assert_eq!(load(&engine), CodeOrigin::Compiled);
    assert_eq!(load(&engine), CodeOrigin::MemoryCache, "an unchanged plugin is not recompiled");
    assert_eq!(load(&Engine::with_cache(Some(cache.clone())).unwrap()), CodeOrigin::DiskCache, "nor after a restart");

    // Other bytes at the same path are compiled.
    let copy = cache.join("categorize.wasm");
    let mut bytes = std::fs::read(&plugin).unwrap();
    std::fs::write(&copy, &bytes).unwrap();
    assert_eq!(engine.load(&copy).unwrap().origin, CodeOrigin::MemoryCache, "same bytes, other path");
    bytes.extend_from_slice(&[0, 5, 4, b'n', b'o', b't', b'e']); // a custom section: new bytes, same code
    std::fs::write(&copy, &bytes).unwrap();
    let changed = engine.load(&copy).unwrap();
    assert_eq!(changed.origin, CodeOrigin::Compiled);
    assert_ne!(changed.sha256, engine.load(&plugin).unwrap().sha256);

    // A damaged cache entry is ignored and rewritten.
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            std::fs::write(&path, b"not compiled code").unwrap();
        }
    }
    assert_eq!(load(&Engine::with_cache(Some(cache.clone())).unwrap()), CodeOrigin::Compiled);
    assert_eq!(load(&Engine::with_cache(Some(cache.clone())).unwrap()), CodeOrigin::DiskCache);

    // No cache directory: compiled every time a new engine loads it.
    assert_eq!(load(&Engine::with_cache(None).unwrap()), CodeOrigin::Compiled);
    std::fs::remove_dir_all(&cache).unwrap();
}

/// Loading compiled code runs it natively: a cache folder or entry that
/// another user could have written is never read.
#[test]
fn a_cache_that_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let plugin = support::repo_root().join("plugins/dist/categorize.wasm");
    let load = |cache: &std::path::Path| Engine::with_cache(Some(cache.to_path_buf())).unwrap().load(&plugin).unwrap();

    let open = std::env::temp_dir().join(format!("sluice-cache-open-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&open);
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(load(&open).origin, CodeOrigin::Compiled);
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0, "nothing written to a world-writable folder");

    // A private folder is used; an entry in it that others may write is not.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(load(&open).origin, CodeOrigin::Compiled);
    assert_eq!(load(&open).origin, CodeOrigin::DiskCache);
    for entry in std::fs::read_dir(&open).unwrap() {
        std::fs::set_permissions(entry.unwrap().path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    assert_eq!(load(&open).origin, CodeOrigin::Compiled, "a group- or world-writable entry is compiled anew");
    std::fs::remove_dir_all(&open).unwrap();
}
