//! # runnel-config: settings declared once, and the process's telemetry
//!
//! A program's settings are one [`settings!`] invocation: each entry is a doc comment, a name,
//! a type, the type a flag parses, and a default. From it come
//! - the settings struct (serde, `deny_unknown_fields`, every field defaulted), read from a TOML
//!   file ([`from_file`]);
//! - the table of [`Setting`]s (name, doc, parser), from which the binaries build their flags
//!   and `RUNNEL_*` environment variables (feature `clap`: [`flags::Flags`]) and the docs are
//!   checked (`documented_keys`);
//! - nothing else: the struct knows no command line, so a library (the broker) carries no
//!   argument parser.
//!
//! A flag beats the environment, which beats the file, which beats the default. [`apply`]
//! lays given values over a loaded struct; each value is parsed by its setting's parser first,
//! so a bad value is refused naming the setting.
//!
//! [`telemetry`]: logging and the Prometheus recorder every process installs.

pub mod telemetry;

#[cfg(feature = "clap")]
pub mod flags;

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One setting of a [`settings!`] struct.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The config-file key (the field name); the flag is `--` + it with dashes.
    pub name: &'static str,
    /// Its documentation (the doc comment).
    pub doc: &'static str,
    /// Parses one flag or environment value into the setting's serialized form (one element
    /// of the list when `repeated`).
    pub parse: fn(&str) -> Result<serde_json::Value, String>,
    /// The setting is a list: each flag given adds one element.
    pub repeated: bool,
}

/// A settings struct made by [`settings!`].
pub trait Settings: Serialize + DeserializeOwned + Default {
    /// Every setting, in declaration order.
    fn settings() -> &'static [Setting];
}

/// A setting with a bad value: the field and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {field}: {rule}")]
pub struct ConfigError {
    /// The setting (or `file` when the file could not be read).
    pub field: String,
    /// What it must be, and what it was.
    pub rule: String,
}

impl ConfigError {
    /// An error naming `field`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// Reads a TOML settings file; unknown keys are an error that names them.
pub fn from_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "file",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    toml::from_str(&text)
        .map_err(|e| ConfigError::new("file", format!("config file {}: {e}", path.display())))
}

/// Lays `given` (setting name → the values given for it, in order) over `cfg`. A value is
/// parsed by its setting's parser; a repeated setting takes the list of values, any other the
/// last one.
pub fn apply<T: Settings>(cfg: &mut T, given: &[(&str, Vec<String>)]) -> Result<(), ConfigError> {
    if given.is_empty() {
        return Ok(());
    }
    let mut tree = serde_json::to_value(&*cfg).expect("settings serialize");
    let serde_json::Value::Object(map) = &mut tree else {
        unreachable!("a settings struct serializes to an object")
    };
    for (name, values) in given {
        let setting = T::settings()
            .iter()
            .find(|s| s.name == *name)
            .ok_or_else(|| ConfigError::new(*name, "is not a setting"))?;
        let parsed: Vec<serde_json::Value> = values
            .iter()
            .map(|v| (setting.parse)(v).map_err(|e| ConfigError::new(*name, e)))
            .collect::<Result<_, _>>()?;
        let value = if setting.repeated {
            serde_json::Value::Array(parsed)
        } else {
            match parsed.into_iter().last() {
                Some(v) => v,
                None => continue,
            }
        };
        map.insert(name.to_string(), value);
    }
    *cfg = serde_json::from_value(tree).map_err(|e| ConfigError::new("flags", e.to_string()))?;
    Ok(())
}

/// Parses `s` as a `T` and serializes it: the parser of a setting whose flag type is `T`.
pub fn parse_as<T>(s: &str) -> Result<serde_json::Value, String>
where
    T: std::str::FromStr + Serialize,
    T::Err: std::fmt::Display,
{
    let v: T = s
        .parse()
        .map_err(|e: T::Err| format!("{s:?} is not valid here: {e}"))?;
    serde_json::to_value(&v).map_err(|e| e.to_string())
}

/// Declares a settings struct, its defaults and its [`Setting`] table from one list of
/// `/// doc` + `name: Type [FlagType] = default;` entries (`[FlagType, repeated]` for a list
/// that each flag adds one element to). Used by the agent and the broker.
#[macro_export]
macro_rules! settings {
    ($config:ident; $( $(#[doc = $doc:literal])* $field:ident : $ty:ty [$arg:ty $(, $repeated:ident)?] = $default:expr ;)*) => {
        /// Settings. See the module documentation for how they are set.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $config {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $config {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $config {
            /// The names of every setting (config-file keys).
            pub fn documented_keys() -> &'static [&'static str] {
                &[$( stringify!($field), )*]
            }
        }

        impl $crate::Settings for $config {
            fn settings() -> &'static [$crate::Setting] {
                &[$( $crate::Setting {
                    name: stringify!($field),
                    doc: concat!($( $doc, "\n", )*),
                    parse: $crate::parse_as::<$arg>,
                    repeated: $crate::settings!(@repeated $($repeated)?),
                }, )*]
            }
        }
    };
    (@repeated repeated) => { true };
    (@repeated) => { false };
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use super::*;

    settings! {
        Demo;
        /// A directory.
        data_dir: PathBuf [PathBuf] = PathBuf::new();
        /// An address.
        addr: SocketAddr [SocketAddr] = "127.0.0.1:1".parse().expect("valid");
        /// A size.
        bytes_max: u64 [u64] = 10;
        /// Maybe a name.
        name: Option<String> [String] = None;
        /// Several tokens.
        tokens: Vec<String> [String, repeated] = Vec::new();
    }

    #[test]
    fn given_values_override_and_lists_collect() {
        let mut d = Demo::default();
        apply(
            &mut d,
            &[
                ("bytes_max", vec!["5".into(), "7".into()]),
                ("name", vec!["x".into()]),
                ("tokens", vec!["a".into(), "b".into()]),
                ("addr", vec!["10.0.0.1:9".into()]),
            ],
        )
        .unwrap();
        assert_eq!(d.bytes_max, 7);
        assert_eq!(d.name.as_deref(), Some("x"));
        assert_eq!(d.tokens, ["a", "b"]);
        assert_eq!(d.addr, "10.0.0.1:9".parse().unwrap());
        assert_eq!(d.data_dir, PathBuf::new(), "not given: kept");
    }

    #[test]
    fn a_bad_value_names_the_setting() {
        let mut d = Demo::default();
        let err = apply(&mut d, &[("bytes_max", vec!["lots".into()])]).unwrap_err();
        assert_eq!(err.field, "bytes_max");
        assert!(
            err.to_string().starts_with("config: bytes_max: \"lots\""),
            "{err}"
        );
        let err = apply(&mut d, &[("addr", vec!["localhost".into()])]).unwrap_err();
        assert_eq!(err.field, "addr");
        assert_eq!(d, Demo::default(), "nothing applied");
    }

    #[test]
    fn the_table_has_every_setting_with_its_doc() {
        let names: Vec<&str> = Demo::settings().iter().map(|s| s.name).collect();
        assert_eq!(names, Demo::documented_keys());
        assert_eq!(Demo::settings()[2].doc.trim(), "A size.");
        assert!(Demo::settings()[4].repeated && !Demo::settings()[3].repeated);
    }

    #[test]
    fn files_refuse_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("runnel-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("demo.toml");
        std::fs::write(&path, "bytes_maxx = 3\n").unwrap();
        let err = from_file::<Demo>(&path).unwrap_err().to_string();
        assert!(err.contains("bytes_maxx"), "{err}");
        std::fs::write(&path, "bytes_max = 3\ntokens = [\"t\"]\n").unwrap();
        let d: Demo = from_file(&path).unwrap();
        assert_eq!((d.bytes_max, d.tokens), (3, vec!["t".to_string()]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
