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
