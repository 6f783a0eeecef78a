//! Makes sure the dashboard's chart library (from the npm registry, see
//! `dashboard/package.json`) is installed: the binary embeds it, so the
//! dashboard works offline.

use std::path::Path;
use std::process::Command;

fn main() {
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboard");
    let chart = dashboard.join("node_modules/chart.js/dist/chart.umd.min.js");
    println!("cargo::rerun-if-changed={}", chart.display());
    println!("cargo::rerun-if-changed={}", dashboard.join("package-lock.json").display());
    if chart.exists() {
        return;
    }
    let installed = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--omit=dev"])
        .current_dir(&dashboard)
        .status()
        .is_ok_and(|s| s.success());
    if !installed || !chart.exists() {
        panic!(
            "the dashboard's chart library is missing: run `npm ci` in {} (needs Node.js and npm)",
            dashboard.display()
        );
    }
}
