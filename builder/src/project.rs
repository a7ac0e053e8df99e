//! Per-app settings from the project itself: the `kiln` object in package.json, so that what a
//! developer would otherwise pass as flags on every build lives with the code. Flags override
//! it.
//!
//! ```json
//! "kiln": {
//!   "runtime": "app",
//!   "start": "node dist/main",
//!   "buildScript": "build:prod",
//!   "buildTimeoutSecs": 600,
//!   "env": { "LOG_LEVEL": "info" },
//!   "allowScripts": ["core-js"]
//! }
//! ```
//!
//! `buildScript` is a script name, or `false` for no build step.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::{BuildError, Result};

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
    /// The `kiln` object of `package` (package.json of `source`), or the defaults.
    pub fn read(source: &Path, package: &Value) -> Result<ProjectConfig> {
        let Some(value) = package.get("kiln") else {
            return Ok(ProjectConfig::default());
        };
        serde_json::from_value(value.clone()).map_err(|e| BuildError::PackageJson {
            path: source.join("package.json"),
            problem: format!("\"kiln\": {e}"),
        })
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
