//! A WASI command: a valid component of the `wasi:cli/command` world, not of
//! the `sluice:plugin` transform world. Tests load it as a plugin to check
//! that the host refuses it by name.

fn main() {
    println!("not a Sluice plugin");
}
