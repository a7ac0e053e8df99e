//! Per-app settings from the project itself, so that what a developer would otherwise pass as
//! flags on every build lives with the code: the `kiln` object in package.json, or a
//! `kiln.toml` beside it (one or the other, not both). Flags override them.
//!
//! ```json
//! "kiln": {
//!   "runtime": "app",
//!   "base": "registry.example.com/node:22",
//!   "start": "node dist/main",
//!   "buildScript": "build:prod",
//!   "buildTimeoutSecs": 600,
//!   "env": { "LOG_LEVEL": "info" },
//!   "allowScripts": ["core-js"]
//! }
//! ```
//!
//! `kiln.toml` holds the same settings with kebab-case names (as Cargo.toml and buildpacks'
//! project.toml): `runtime`, `base`, `start`, `build-script`, `build-timeout-secs`,
//! `allow-scripts`, and an `[env]` table. `buildScript` is a script name, or `false` for no
//! build step.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::{BuildError, Result};

/// The project config file that may stand beside package.json.
pub const CONFIG_FILE: &str = "kiln.toml";

/// Parses `kiln.toml`: its top-level kebab-case names are the package.json object's
/// camelCase ones (the `[env]` table's keys are kept as they are).
fn from_toml(text: &str) -> std::result::Result<ProjectConfig, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut object = serde_json::Map::new();
    for (key, value) in table {
        let mut camel = String::new();
        let mut upper = false;
        for c in key.chars() {
            match c {
                '-' => upper = true,
                c if upper => {
                    camel.extend(c.to_uppercase());
                    upper = false;
                }
                c => camel.push(c),
            }
        }
        if key.contains('_') || key.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("unknown setting `{key}` (settings are kebab-case)"));
        }
        let value = serde_json::to_value(value).map_err(|e| e.to_string())?;
        object.insert(camel, value);
    }
    serde_json::from_value(Value::Object(object)).map_err(|e| {
        // Name settings the way the file does.
        let text = e.to_string();
        match text.split_once("unknown field `") {
            Some((_, rest)) => {
                let name = rest.split('`').next().unwrap_or_default();
                format!("unknown setting `{}`", kebab(name))
            }
            None => text,
        }
    })
}

fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The build step to run, as chosen by a flag or the project config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BuildScript {
    /// The `build` script when package.json has one.
    #[default]
    Auto,
    /// This script, which must exist.
    Named(String),
    /// No build step.
    Off,
}

/// The `kiln` object of package.json.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectConfig {
    /// Runtime name (`faas`, `sma`, `app`).
    pub runtime: Option<String>,
    /// Base image (`REF` or `oci:DIR:TAG`), when no `--base` is given.
    pub base: Option<String>,
    /// Start command of an `app` image, instead of `scripts.start`.
    pub start: Option<String>,
    /// Build script name, or `false`.
    pub build_script: Option<BuildScriptSetting>,
    /// Time limit of the build script, in seconds.
    pub build_timeout_secs: Option<u64>,
    /// Environment of the image.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Dependencies whose install scripts run (in the sandbox); all others are skipped.
    #[serde(default)]
    pub allow_scripts: Vec<String>,
}

/// `buildScript`: a name, or `false`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum BuildScriptSetting {
    /// A script name.
    Name(String),
    /// `false` turns the build step off (`true` means the default).
    Enabled(bool),
}

impl ProjectConfig {
    /// The settings of the app in `source` whose package.json is `package`: its `kiln`
    /// object, or its `kiln.toml`, or the defaults.
    pub fn read(source: &Path, package: &Value) -> Result<ProjectConfig> {
        let toml_path = source.join(CONFIG_FILE);
        let toml = match std::fs::read_to_string(&toml_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(kiln_layers::Error::io("read", &toml_path)(e).into()),
        };
        match (package.get("kiln"), toml) {
            (None, None) => Ok(ProjectConfig::default()),
            (Some(value), None) => {
                serde_json::from_value(value.clone()).map_err(|e| BuildError::PackageJson {
                    path: source.join("package.json"),
                    problem: format!("\"kiln\": {e}"),
                })
            }
            (None, Some(text)) => from_toml(&text).map_err(|problem| BuildError::ProjectConfig {
                path: toml_path,
                problem,
            }),
            (Some(_), Some(_)) => Err(BuildError::ProjectConfig {
                path: toml_path,
                problem: "package.json has a \"kiln\" object too: keep the settings in one place"
                    .into(),
            }),
        }
    }

    /// The settings of the app in `source`, reading its package.json.
    pub fn load(source: &Path) -> Result<ProjectConfig> {
        ProjectConfig::read(source, &crate::npm::read(source)?.package)
    }

    /// Time limit of every script kiln runs for this app (build script, install scripts).
    pub fn script_timeout(&self) -> std::time::Duration {
        self.build_timeout_secs.map_or(
            crate::build_step::DEFAULT_TIMEOUT,
            std::time::Duration::from_secs,
        )
    }

    /// The build script setting, `flag` first.
    pub fn build_script(&self, flag: &BuildScript) -> BuildScript {
        if *flag != BuildScript::Auto {
            return flag.clone();
        }
        match &self.build_script {
            Some(BuildScriptSetting::Name(name)) => BuildScript::Named(name.clone()),
            Some(BuildScriptSetting::Enabled(false)) => BuildScript::Off,
            _ => BuildScript::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_kiln_object_and_flags_win() {
        let pkg =
            json!({"kiln": {"start": "node dist/main", "buildScript": false, "env": {"A": "1"}}});
        let config = ProjectConfig::read(Path::new("/src"), &pkg).unwrap();
        assert_eq!(config.start.as_deref(), Some("node dist/main"));
        assert_eq!(config.build_script(&BuildScript::Auto), BuildScript::Off);
        assert_eq!(
            config.build_script(&BuildScript::Named("x".into())),
            BuildScript::Named("x".into())
        );
        assert_eq!(config.env["A"], "1");
    }

    #[test]
    fn reads_kiln_toml_with_kebab_case_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "base = \"oci:/b:node\"\nbuild-script = \"build:prod\"\nbuild-timeout-secs = 30\nallow-scripts = [\"sharp\"]\n[env]\nLOG_LEVEL = \"debug\"\n",
        )
        .unwrap();
        let config = ProjectConfig::read(dir.path(), &json!({})).unwrap();
        assert_eq!(config.base.as_deref(), Some("oci:/b:node"));
        assert_eq!(
            config.build_script(&BuildScript::Auto),
            BuildScript::Named("build:prod".into())
        );
        assert_eq!(config.script_timeout().as_secs(), 30);
        assert_eq!(config.allow_scripts, ["sharp"]);
        assert_eq!(config.env["LOG_LEVEL"], "debug");

        std::fs::write(dir.path().join(CONFIG_FILE), "build_script = false\n").unwrap();
        let err = ProjectConfig::read(dir.path(), &json!({}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kiln.toml") && err.contains("build_script"),
            "{err}"
        );
        std::fs::write(dir.path().join(CONFIG_FILE), "strat = \"node x\"\n").unwrap();
        let err = ProjectConfig::read(dir.path(), &json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting `strat`"), "{err}");
        std::fs::write(dir.path().join(CONFIG_FILE), "start = \"node x\"\n").unwrap();
        let err = ProjectConfig::read(dir.path(), &json!({"kiln": {"start": "node y"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("one place"), "{err}");
    }

    #[test]
    fn an_unknown_setting_is_an_error_naming_it() {
        let pkg = json!({"kiln": {"strat": "node x"}});
        let err = ProjectConfig::read(Path::new("/src"), &pkg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("strat") && err.contains("package.json"),
            "{err}"
        );
    }
}
