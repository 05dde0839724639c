//! Command-line flags for a settings struct: `--config FILE` and one `--setting-name VALUE`
//! per [`Setting`], each also read from `RUNNEL_SETTING_NAME` (see [`with_env_names`]).
//!
//! [`Flags<T>`] is a `clap::Args`, so a binary flattens it into its own commands; its flags
//! are built from `T`'s setting table, not derived, so the settings struct stays free of any
//! argument parser.

use std::marker::PhantomData;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches};

use crate::{ConfigError, Setting, Settings, apply, from_file};

/// The flags of settings struct `T`, as given on a command line.
#[derive(Debug, Clone)]
pub struct Flags<T> {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    given: Vec<(&'static str, Vec<String>)>,
    _settings: PhantomData<fn() -> T>,
}

impl<T> Default for Flags<T> {
    fn default() -> Self {
        Self {
            config: None,
            given: Vec::new(),
            _settings: PhantomData,
        }
    }
}

impl<T: Settings> Flags<T> {
    /// The settings: the file named by `--config` (or the defaults), then the flags given.
    pub fn load(&self) -> Result<T, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => from_file(path)?,
            None => T::default(),
        };
        apply(&mut cfg, &self.given)?;
        Ok(cfg)
    }

    /// Lays the flags given over `cfg` (ignoring `--config`).
    pub fn apply_to(&self, cfg: &mut T) -> Result<(), ConfigError> {
        apply(cfg, &self.given)
    }
}

fn flag_name(s: &Setting) -> &'static str {
    Box::leak(s.name.replace('_', "-").into_boxed_str())
}

fn arg_of(s: &'static Setting) -> Arg {
    let doc = s.doc.trim();
    let summary = doc.split("\n").next().unwrap_or("").trim().to_string();
    let long_help: String = doc.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    let parse = s.parse;
    Arg::new(s.name)
        .long(flag_name(s))
        .value_name("VALUE")
        .help(summary)
        .long_help(long_help)
        .action(if s.repeated {
            ArgAction::Append
        } else {
            ArgAction::Set
        })
        .value_parser(move |v: &str| parse(v).map(|_| v.to_string()))
}

impl<T: Settings> clap::Args for Flags<T> {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help("TOML file with any of the settings below (keys are the field names)")
                .value_parser(clap::value_parser!(PathBuf)),
        );
        T::settings().iter().fold(cmd, |cmd, s| cmd.arg(arg_of(s)))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<T: Settings> FromArgMatches for Flags<T> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(m)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(p) = m.get_one::<PathBuf>("config") {
            self.config = Some(p.clone());
        }
        for s in T::settings() {
            if let Some(values) = m.get_many::<String>(s.name) {
                self.given.retain(|(n, _)| *n != s.name);
                self.given.push((s.name, values.cloned().collect()));
            }
        }
        Ok(())
    }
}

/// Gives every long flag of `cmd` (and its subcommands) the environment variable
/// `RUNNEL_<FLAG_IN_UPPER_SNAKE_CASE>`, so `--data-dir` is also `RUNNEL_DATA_DIR`.
pub fn with_env_names(cmd: Command) -> Command {
    let cmd = cmd.mut_args(|arg| match arg.get_long() {
        Some(long) if long != "help" && long != "version" => {
            let name = format!("RUNNEL_{}", long.replace('-', "_").to_uppercase());
            // A repeatable flag named in the plural also answers to the singular:
            // `--flight-token A --flight-token B`.
            let singular = long
                .strip_suffix('s')
                .filter(|_| matches!(arg.get_action(), ArgAction::Append))
                .map(|s| &*Box::leak(s.to_string().into_boxed_str()));
            let arg = match singular {
                Some(s) => arg.visible_alias(s),
                None => arg,
            };
            arg.env(&*Box::leak(name.into_boxed_str()))
        }
        _ => arg,
    });
    cmd.mut_subcommands(with_env_names)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::{Args, CommandFactory, FromArgMatches, Parser};

    use super::*;

    crate::settings! {
        Demo;
        /// A directory.
        data_dir: PathBuf [PathBuf] = PathBuf::new();
        /// A size, in bytes.
        /// More about it.
        bytes_max: u64 [u64] = 10;
        /// Tokens.
        flight_tokens: Vec<String> [String, repeated] = Vec::new();
    }

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        flags: Flags<Demo>,
    }

    fn parse(args: &[&str]) -> Result<Demo, String> {
        let m = with_env_names(Cli::command())
            .try_get_matches_from(args)
            .map_err(|e| e.to_string())?;
        let cli = Cli::from_arg_matches(&m).map_err(|e| e.to_string())?;
        cli.flags.load().map_err(|e| e.to_string())
    }

    #[test]
    fn flags_set_settings_and_bad_values_name_the_flag() {
        let d = parse(&[
            "x",
            "--data-dir=/tmp/d",
            "--bytes-max",
            "42",
            "--flight-token=a",
            "--flight-tokens=b",
        ])
        .unwrap();
        assert_eq!(d.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(d.bytes_max, 42);
        assert_eq!(d.flight_tokens, ["a", "b"]);
        let err = parse(&["x", "--bytes-max=lots"]).unwrap_err();
        assert!(err.contains("--bytes-max"), "{err}");
        assert!(err.contains("lots"), "{err}");
    }

    #[test]
    fn help_lists_every_setting_with_its_doc() {
        let help = Flags::<Demo>::augment_args(Command::new("x"))
            .render_long_help()
            .to_string();
        for s in ["--config", "--data-dir", "--bytes-max", "--flight-tokens"] {
            assert!(help.contains(s), "{help}");
        }
        assert!(help.contains("A size, in bytes. More about it."), "{help}");
        assert_eq!(Demo::documented_keys().len(), Demo::settings().len());
    }
}
