//! A pipeline of its own for a test: a temporary folder with a copy of the
//! plugins and of pipeline.toml, which the test edits while a host runs it.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A temporary pipeline folder, removed on drop.
pub struct Workdir {
    pub dir: PathBuf,
}

impl Workdir {
    /// A folder with `plugins/` holding every built plugin and fixture, and
    /// `pipeline.toml` holding `pipeline`.
    pub fn new(name: &str, pipeline: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        for entry in std::fs::read_dir(super::repo_root().join("plugins/dist")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join("plugins").join(entry.file_name())).unwrap();
        }
        let workdir = Self { dir };
        workdir.write_pipeline(pipeline);
        workdir
    }

    /// The repository's pipeline.toml, with categorize's fallback category
    /// left to the plugin (`Other`, or `Uncategorized` in its second version)
    /// so that the version that categorized an order shows in its items.
    pub fn default_pipeline() -> String {
        let text = std::fs::read_to_string(super::repo_root().join("pipeline.toml")).unwrap();
        assert!(text.contains("default = \"Other\"\n"));
        text.replace("default = \"Other\"\n", "")
    }

    pub fn pipeline(&self) -> PathBuf {
        self.dir.join("pipeline.toml")
    }

    pub fn plugin(&self, name: &str) -> PathBuf {
        self.dir.join("plugins").join(name)
    }

    /// Replaces pipeline.toml as editors do: write a new file, rename it over.
    pub fn write_pipeline(&self, text: &str) {
        replace(&self.pipeline(), text.as_bytes());
    }

    /// The plugins folder, for `SLUICE_PLUGIN_DIR`.
    pub fn plugin_dir(&self) -> String {
        self.dir.join("plugins").display().to_string()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over.
pub fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The hex sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A built plugin's bytes.
pub fn dist(name: &str) -> Vec<u8> {
    std::fs::read(super::repo_root().join("plugins/dist").join(name)).unwrap()
}
