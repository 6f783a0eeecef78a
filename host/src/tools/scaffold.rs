//! `sluice new`: a plugin project that builds to a component and passes its
//! own test out of the box, in Rust, Python or JavaScript. Every language
//! gets the same stage (it tags JSON objects and rejects anything else), a
//! Makefile with `build` and `test`, and a README.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// What to create.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name: lowercase letters, digits and dashes.
    pub name: String,
    /// The language.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// Where to create the project. Default: a directory called NAME.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Rust only: a sluice-sdk crate directory to depend on (say, the
    /// plugins/sdk of a Sluice source tree). Default: a copy of the SDK this
    /// sluice was built with, in the project's sluice-sdk/.
    #[arg(long, env = "SLUICE_SDK")]
    pub sdk: Option<PathBuf>,
}

/// A plugin language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with sluice-sdk, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// The WIT worlds plugins are built against, written to `wit/plugin.wit`
/// with the packages they use in `wit/deps/`: Rust plugins (through the
/// SDK) 0.6.0, which exchanges typed values in binary, reads a batch's
/// lookup rows in one call and passes batches as tables of bytes; Python and JavaScript
/// ones 0.2.0 (0.1.0 and keyed state), whose values are JSON.
const WIT_0_6: &str = include_str!("../../../wit/plugin@0.6.0/plugin.wit");
const WIT_0_4: &str = include_str!("../../../wit/plugin@0.4.0/plugin.wit");
const WIT_0_3: &str = include_str!("../../../wit/plugin@0.3.0/plugin.wit");
const WIT_0_2: &str = include_str!("../../../wit/plugin@0.2.0/plugin.wit");
const WIT_0_1: &str = include_str!("../../../wit/plugin@0.1.0/plugin.wit");

/// The SDK's source, copied into a Rust project unless `--sdk` is given.
const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const SDK_STATE: &str = include_str!("../../../plugins/sdk/src/state.rs");
const SDK_VALUES: &str = include_str!("../../../plugins/sdk/src/values.rs");
const SDK_LOOKUPS: &str = include_str!("../../../plugins/sdk/src/lookups.rs");
const SDK_PACKED: &str = include_str!("../../../plugins/sdk/src/packed.rs");
const SDK_MANIFEST: &str = include_str!("../../templates/rust/sluice-sdk/Cargo.toml");
/// Where the SDK finds the WIT world: in the source tree, and in the copy.
const SDK_WIT_IN_TREE: &str = r#"path: "../../wit/plugin@0.6.0""#;
const SDK_WIT_IN_COPY: &str = r#"path: "wit""#;

fn templates(lang: Lang) -> &'static [(&'static str, &'static str)] {
    macro_rules! files {
        ($lang:literal: $($path:literal),* $(,)?) => {
            &[$(($path, include_str!(concat!("../../templates/", $lang, "/", $path)))),*]
        };
    }
    match lang {
        Lang::Rust => {
            files!("rust": "Cargo.toml", "src/lib.rs", "Makefile", "README.md", "test/input.jsonl", "test/expected.jsonl")
        }
        Lang::Python => files!("python": "app.py", "Makefile", "README.md", "test/input.jsonl", "test/expected.jsonl"),
        Lang::Js => {
            files!("js": "stage.js", "package.json", "Makefile", "README.md", "test/input.jsonl", "test/expected.jsonl")
        }
    }
}

/// Creates the project and prints what to do next.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        bail!("plugin name `{name}`: use lowercase letters, digits and dashes, starting with a letter");
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let sdk = match (args.lang, &args.sdk) {
        (Lang::Rust, Some(given)) => sdk_path(given)?.display().to_string(),
        (Lang::Rust, None) => {
            write_sdk(&dir.join("sluice-sdk"))?;
            "sluice-sdk".to_string()
        }
        _ => String::new(),
    };
    let crate_name = name.replace('-', "_");
    for (path, text) in templates(args.lang) {
        let text = text.replace("{{name}}", name).replace("{{crate}}", &crate_name).replace("{{sdk}}", &sdk);
        write(&dir.join(path), &text)?;
    }
    if args.lang != Lang::Rust {
        write_wit(&dir, WIT_0_2)?;
    }
    println!("created {} ({:?} plugin `{name}`); next:", dir.display(), args.lang);
    println!("  cd {}", dir.display());
    println!("  make test");
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A given sluice-sdk crate directory, absolute.
fn sdk_path(given: &Path) -> anyhow::Result<PathBuf> {
    if !given.join("Cargo.toml").is_file() {
        bail!(
            "no sluice-sdk crate at {} (no Cargo.toml): --sdk (or SLUICE_SDK) names the plugins/sdk directory of a Sluice source tree",
            given.display()
        );
    }
    Ok(std::fs::canonicalize(given)?)
}

/// Writes the SDK this sluice was built with into `dir`: a crate of its own
/// that needs nothing but crates.io, with the WIT world beside it.
fn write_sdk(dir: &Path) -> anyhow::Result<()> {
    write(&dir.join("Cargo.toml"), &SDK_MANIFEST.replace("{{version}}", env!("CARGO_PKG_VERSION")))?;
    write(&dir.join("src/lib.rs"), &sdk_source())?;
    write(&dir.join("src/state.rs"), SDK_STATE)?;
    write(&dir.join("src/values.rs"), SDK_VALUES)?;
    write(&dir.join("src/lookups.rs"), SDK_LOOKUPS)?;
    write(&dir.join("src/packed.rs"), SDK_PACKED)?;
    write_wit(dir, WIT_0_6)
}

/// The WIT world `world` in `dir/wit`, with the packages it may use in
/// `wit/deps`.
fn write_wit(dir: &Path, world: &str) -> anyhow::Result<()> {
    write(&dir.join("wit/plugin.wit"), world)?;
    if world == WIT_0_6 {
        write(&dir.join("wit/deps/plugin@0.4.0/plugin.wit"), WIT_0_4)?;
        write(&dir.join("wit/deps/plugin@0.3.0/plugin.wit"), WIT_0_3)?;
        write(&dir.join("wit/deps/plugin@0.2.0/plugin.wit"), WIT_0_2)?;
    }
    write(&dir.join("wit/deps/plugin@0.1.0/plugin.wit"), WIT_0_1)
}

/// The SDK's source with the WIT path of the copy.
fn sdk_source() -> String {
    SDK_LIB.replacen(SDK_WIT_IN_TREE, SDK_WIT_IN_COPY, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_copy_finds_its_wit_world() {
        assert_eq!(SDK_LIB.matches(SDK_WIT_IN_TREE).count(), 1, "the SDK names its WIT path once");
        let copy = sdk_source();
        assert!(copy.contains(SDK_WIT_IN_COPY) && !copy.contains(SDK_WIT_IN_TREE));
    }

    /// The copy's dependencies are the workspace's, so the SDK builds the
    /// same in both places.
    #[test]
    fn the_sdk_copy_depends_on_what_the_workspace_does() {
        let table = |text: &str, key: &str| -> toml::Table {
            let doc: toml::Table = text.parse().unwrap();
            let mut at = &doc;
            for part in key.split('.') {
                at = at[part].as_table().unwrap();
            }
            at.clone()
        };
        let workspace = table(include_str!("../../../Cargo.toml"), "workspace.dependencies");
        let sdk = table(include_str!("../../../plugins/sdk/Cargo.toml"), "dependencies");
        let copy = table(SDK_MANIFEST, "dependencies");
        assert_eq!(copy.keys().collect::<Vec<_>>(), sdk.keys().collect::<Vec<_>>());
        for (name, spec) in &copy {
            assert_eq!(spec, &workspace[name], "{name}");
        }
    }
}
