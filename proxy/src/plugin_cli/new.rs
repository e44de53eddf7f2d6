//! `profile-edge plugin new NAME --world enrich|invalidate [--dir PARENT]`:
//! writes a policy crate that builds as it is. Inside a plugins workspace
//! (a `Cargo.toml` with `[workspace]` and `wit/policy.wit` beside it, like
//! this repository's `plugins/`) the crate joins it and binds to its WIT;
//! anywhere else it stands alone, with its own copy of the WIT this binary
//! was built with, so it always matches the proxy that will run it.

use std::path::{Path, PathBuf};

use super::CliError;
use crate::plugin::calls::World;

/// The contract, as this binary's host implements it.
const WIT: &str = include_str!("../../../plugins/wit/policy.wit");
/// Where the release settings of a standalone crate come from, so that it is
/// built like the policies this repository ships.
const PLUGINS_MANIFEST: &str = include_str!("../../../plugins/Cargo.toml");
/// The wit-bindgen a standalone crate asks for (a unit test checks it is the
/// plugins workspace's).
const WIT_BINDGEN: &str = "0.57";
const SERDE_JSON: &str = "1";

const CARGO_TOML: &str = include_str!("templates/Cargo.toml.in");
const STANDALONE_TOML: &str = include_str!("templates/standalone.toml.in");
const HOST_RS: &str = include_str!("templates/host.rs");
const ENRICH_RS: &str = include_str!("templates/enrich.rs");
const INVALIDATE_RS: &str = include_str!("templates/invalidate.rs");
const README_MD: &str = include_str!("templates/README.md.in");
const GITIGNORE: &str = include_str!("templates/gitignore.in");

/// What `plugin new` made, for its report.
pub struct Created {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// The `.wasm` a release build writes, relative to the target directory.
    pub wasm: String,
    /// Set when the crate joined a workspace whose `members` may not list it.
    pub members_hint: Option<String>,
}

/// The workspace keys a member can inherit, read from its `Cargo.toml`.
struct Workspace {
    package: Vec<String>,
    dependencies: Vec<String>,
    /// Whether `members` surely covers a new folder (a `*` glob at the top).
    globbed: bool,
}

pub fn run(name: &str, world: World, parent: &Path) -> Result<Created, CliError> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .map_err(|e| CliError::io(&dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(CliError::Usage(format!(
                "{} already exists and is not empty; pick another NAME or --dir",
                dir.display()
            )));
        }
    }
    let workspace = workspace_of(parent)?;
    let file_name = format!("{}.wasm", name.replace('-', "_"));
    let (world_key, world_title, used_from, run_flags, lib) = match world {
        World::Enrich => (
            "enrich-policy",
            "enrichment",
            "an `[[enrich]]` route",
            " --body feed.json",
            ENRICH_RS,
        ),
        World::Invalidate => (
            "invalidate-policy",
            "invalidation",
            "`[invalidation]`",
            " --event event.json",
            INVALIDATE_RS,
        ),
    };
    let wit_path = if workspace.is_some() { "../wit" } else { "wit" };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{wit_path}}", wit_path)
            .replace(
                "{{wit_dir}}",
                if workspace.is_some() {
                    "../wit/"
                } else {
                    "wit/"
                },
            )
            .replace("{{world}}", world_key)
            .replace("{{world_title}}", world_title)
            .replace("{{used_from}}", used_from)
            .replace("{{run_flags}}", run_flags)
            .replace("{{file_name}}", &file_name)
            .replace("{{package}}", wit_package())
    };
    let mut cargo = fill(CARGO_TOML);
    let (package_keys, dependencies) = match &workspace {
        Some(ws) => (ws.package.join("\n"), ws.dependencies.join("\n")),
        None => (
            "version = \"0.1.0\"\nedition = \"2021\"\npublish = false".to_string(),
            format!("wit-bindgen = \"{WIT_BINDGEN}\"\nserde_json = \"{SERDE_JSON}\""),
        ),
    };
    cargo = cargo
        .replace("{{package_keys}}", &package_keys)
        .replace("{{dependencies}}", &dependencies);
    let wasm_path = if workspace.is_some() {
        format!("../target/wasm32-wasip2/release/{file_name}")
    } else {
        format!("target/wasm32-wasip2/release/{file_name}")
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        (PathBuf::from("src/lib.rs"), fill(lib)),
        (PathBuf::from("src/host.rs"), HOST_RS.to_string()),
        (
            PathBuf::from("README.md"),
            fill(README_MD).replace("{{wasm_path}}", &wasm_path),
        ),
    ];
    if workspace.is_none() {
        cargo.push_str(&STANDALONE_TOML.replace("{{profile_release}}", &profile_release()));
        files.push((PathBuf::from("wit/policy.wit"), WIT.to_string()));
        files.push((PathBuf::from(".gitignore"), GITIGNORE.to_string()));
    }
    files.insert(0, (PathBuf::from("Cargo.toml"), cargo));

    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(&rel);
        if let Some(up) = path.parent() {
            std::fs::create_dir_all(up).map_err(|e| CliError::io(up, e))?;
        }
        std::fs::write(&path, text).map_err(|e| CliError::io(&path, e))?;
        written.push(rel);
    }
    let members_hint = match &workspace {
        Some(ws) if !ws.globbed => Some(format!(
            "add \"{name}\" to `members` in {}",
            parent.join("Cargo.toml").display()
        )),
        _ => None,
    };
    Ok(Created {
        dir,
        files: written,
        wasm: format!("wasm32-wasip2/release/{file_name}"),
        members_hint,
    })
}

/// `profile-edge:policy@X.Y.Z`, as the embedded WIT declares it.
fn wit_package() -> &'static str {
    WIT.lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map_or("profile-edge:policy", |p| p.trim_end_matches(';').trim())
}

/// A crate name cargo accepts and that is not a path: ASCII letters,
/// digits, `-` and `_`, starting with a letter.
fn check_name(name: &str) -> Result<(), CliError> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "NAME {name:?} is not a valid crate name: use letters, digits, `-` and `_`, starting with a letter (e.g. author-card)"
        )))
    }
}

/// `parent` as a plugins workspace, or `None` when the crate must stand alone.
fn workspace_of(parent: &Path) -> Result<Option<Workspace>, CliError> {
    let manifest = parent.join("Cargo.toml");
    if !manifest.is_file() || !parent.join("wit/policy.wit").is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&manifest).map_err(|e| CliError::io(&manifest, e))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| CliError::Usage(format!("{}: {e}", manifest.display())))?;
    let Some(ws) = doc.get("workspace").and_then(toml::Value::as_table) else {
        return Ok(None);
    };
    let inherited = |section: &str, key: &str| {
        ws.get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(key))
    };
    let key = |k: &str, own: &str| {
        if inherited("package", k) {
            format!("{k}.workspace = true")
        } else {
            format!("{k} = {own}")
        }
    };
    let mut package = vec![
        key("version", "\"0.1.0\""),
        key("edition", "\"2021\""),
        key("publish", "false"),
    ];
    if inherited("package", "license") {
        package.push("license.workspace = true".into());
    }
    let dep = |k: &str, version: &str| {
        if inherited("dependencies", k) {
            format!("{k}.workspace = true")
        } else {
            format!("{k} = \"{version}\"")
        }
    };
    let globbed = ws
        .get("members")
        .and_then(toml::Value::as_array)
        .is_some_and(|m| {
            m.iter()
                .filter_map(toml::Value::as_str)
                .any(|p| !p.contains('/') && p.contains('*'))
        });
    Ok(Some(Workspace {
        package,
        dependencies: vec![
            dep("wit-bindgen", WIT_BINDGEN),
            dep("serde_json", SERDE_JSON),
        ],
        globbed,
    }))
}

/// The `[profile.release]` section of `plugins/Cargo.toml`, comments and all.
fn profile_release() -> String {
    let Some(start) = PLUGINS_MANIFEST.find("[profile.release]") else {
        return String::new();
    };
    let rest = &PLUGINS_MANIFEST[start..];
    let end = rest[1..].find("\n[").map_or(rest.len(), |i| i + 1);
    rest[..end].trim_end().to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_crate_names_are_refused() {
        for bad in ["", "1feed", "my feed", "../x", "a/b", "feed.wasm", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["feed", "author-card", "a_b2"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn standalone_release_settings_are_the_plugins_workspace_ones() {
        let section = profile_release();
        let parsed: toml::Table = section.parse().expect("valid TOML");
        let release = &parsed["profile"]["release"];
        assert_eq!(release["lto"], toml::Value::Boolean(true));
        assert_eq!(release["panic"], toml::Value::String("abort".into()));
    }

    #[test]
    fn the_package_is_read_from_the_wit() {
        assert!(
            wit_package().starts_with("profile-edge:policy@"),
            "{}",
            wit_package()
        );
    }

    #[test]
    fn standalone_wit_bindgen_is_the_plugins_workspace_one() {
        let manifest: toml::Table = PLUGINS_MANIFEST.parse().expect("valid TOML");
        let ws = &manifest["workspace"]["dependencies"];
        assert_eq!(ws["wit-bindgen"].as_str(), Some(WIT_BINDGEN));
    }
}
