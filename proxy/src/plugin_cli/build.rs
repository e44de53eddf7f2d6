//! `profile-edge plugin build [DIR]`: `cargo build --release --target
//! wasm32-wasip2` in DIR, with cargo's diagnostics on stderr as usual, and
//! the path of every component it produced on stdout (read from cargo's
//! JSON messages, so the target directory and crate names need no guessing).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::CliError;

const TARGET: &str = "wasm32-wasip2";

pub fn run(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(CliError::Usage(format!(
            "{}: no Cargo.toml here; pass the folder of a policy crate (profile-edge plugin new makes one)",
            dir.display()
        )));
    }
    target_installed(dir)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(["build", "--release", "--target", TARGET])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::Build(format!("cannot run cargo: {e}")))?;
    let mut wasm = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.map_err(|e| CliError::Build(format!("reading cargo's output: {e}")))?;
            wasm.extend(components(&line));
        }
    }
    let status = child
        .wait()
        .map_err(|e| CliError::Build(format!("waiting for cargo: {e}")))?;
    if !status.success() {
        return Err(CliError::Build(format!(
            "cargo build failed in {} (its errors are above)",
            dir.display()
        )));
    }
    if wasm.is_empty() {
        return Err(CliError::Build(format!(
            "{}: built no component; a policy crate has `crate-type = [\"cdylib\"]` under [lib]",
            dir.display()
        )));
    }
    Ok(wasm)
}

/// The `.wasm` files of one cargo JSON message about a cdylib.
fn components(line: &str) -> Vec<PathBuf> {
    let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    let cdylib = msg["target"]["kind"]
        .as_array()
        .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
    if msg["reason"] != "compiler-artifact" || !cdylib {
        return Vec::new();
    }
    msg["filenames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
        .filter(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
        .collect()
}

/// Without the target's standard library, rustc fails with "can't find
/// crate for `core`"; say what to do instead.
fn target_installed(dir: &Path) -> Result<(), CliError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| CliError::Build(format!("cannot run rustc: {e}")))?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || libdir.is_empty() || !Path::new(&libdir).is_dir() {
        return Err(CliError::Build(format!(
            "the {TARGET} target is not installed for this toolchain: run `rustup target add {TARGET}`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_the_wasm_files_of_cdylib_artifacts() {
        let cdylib = r#"{"reason":"compiler-artifact","target":{"kind":["cdylib"]},"filenames":["/t/wasm32-wasip2/release/my_feed.wasm"]}"#;
        assert_eq!(
            components(cdylib),
            [PathBuf::from("/t/wasm32-wasip2/release/my_feed.wasm")]
        );
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"]},"filenames":["/t/libserde.rlib"]}"#;
        assert!(components(lib).is_empty());
        assert!(components("not json").is_empty());
        assert!(components(r#"{"reason":"build-finished","success":true}"#).is_empty());
    }
}
