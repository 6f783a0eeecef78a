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
    /// Rust only: the sluice-sdk crate to depend on. Default: the one in the
    /// source tree this sluice was built from.
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

/// The WIT world every plugin is built against.
const WIT: &str = include_str!("../../wit/plugin@0.1.0/plugin.wit");

fn templates(lang: Lang) -> &'static [(&'static str, &'static str)] {
    macro_rules! files {
        ($lang:literal: $($path:literal),* $(,)?) => {
            &[$(($path, include_str!(concat!("../templates/", $lang, "/", $path)))),*]
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
    let sdk = match args.lang {
        Lang::Rust => sdk_path(args.sdk.as_deref())?.display().to_string(),
        _ => String::new(),
    };
    let crate_name = name.replace('-', "_");
    for (path, text) in templates(args.lang) {
        let text = text.replace("{{name}}", name).replace("{{crate}}", &crate_name).replace("{{sdk}}", &sdk);
        write(&dir.join(path), &text)?;
    }
    if args.lang != Lang::Rust {
        write(&dir.join("wit/plugin.wit"), WIT)?;
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

/// The sluice-sdk crate directory, absolute.
fn sdk_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
    let path = given.map(Path::to_path_buf).unwrap_or(built_from);
    if !path.join("Cargo.toml").is_file() {
        bail!(
            "no sluice-sdk crate at {}: pass --sdk (or set SLUICE_SDK) to the plugins/sdk directory of a Sluice source tree",
            path.display()
        );
    }
    Ok(std::fs::canonicalize(&path)?)
}
