//! Settings a user gives as flags or in a TOML file: one struct declares each setting once
//! (clap parses it, serde reads and writes it), and this module holds what every such struct
//! shares: named choices (`--optim paged_adamw_8bit`), defaults taken from the flags'
//! declarations, and merging a file with the flags given on top of it.

use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The defaults of a settings struct, as its flag declarations give them.
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(Command::new("defaults")).no_binary_name(true);
    let matches = command
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("every setting has a default");
    T::from_arg_matches(&matches).expect("defaults parse")
}

/// The TOML key of every setting of `T`, with the aliases it accepts (flag aliases with
/// dashes as underscores).
fn keys<T: Args>() -> Vec<(String, Vec<String>)> {
    let command = T::augment_args(Command::new("keys"));
    command
        .get_arguments()
        .map(|arg| {
            let aliases = arg
                .get_visible_aliases()
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.replace('-', "_"))
                .collect();
            (arg.get_id().to_string(), aliases)
        })
        .collect()
}

/// The TOML file `path` as a table keyed by setting ids (aliases resolved); an unknown key is an
/// error naming it.
fn read_table<T: Args>(path: &Path) -> Result<toml::Table> {
    let known = keys::<T>();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let parsed: toml::Table =
        toml::from_str(&text).map_err(|e| Error::file(path, e.to_string().replace('\n', " ")))?;
    let mut table = toml::Table::new();
    for (key, value) in parsed {
        let id = known
            .iter()
            .find(|(id, aliases)| *id == key || aliases.contains(&key))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                Error::key(
                    path,
                    &key,
                    "not a setting (the flags' names, with underscores)",
                )
            })?;
        table.insert(id, value);
    }
    Ok(table)
}

/// `T` from a table of settings, defaults for the rest; errors name `file` when there is one.
fn from_table<T: DeserializeOwned>(table: toml::Table, file: Option<&Path>) -> Result<T> {
    toml::Value::Table(table).try_into::<T>().map_err(|e| {
        let message = e.to_string().replace('\n', " ");
        match file {
            Some(path) => Error::file(path, message),
            None => Error::invalid(message),
        }
    })
}

/// `T` from the TOML file `path`, defaults for what it does not set.
pub fn from_toml_file<T: Args + DeserializeOwned>(path: &Path) -> Result<T> {
    from_table(read_table::<T>(path)?, Some(path))
}

/// `T` from the TOML file `file` (if any), with every flag given on the command line (`flags`
/// as clap parsed them from `matches`) taking precedence, and defaults for the rest. File keys
/// are the flags' names with underscores (or their aliases); an unknown key is an error naming
/// it.
pub fn from_file_and_flags<T>(file: Option<&Path>, flags: &T, matches: &ArgMatches) -> Result<T>
where
    T: Args + Serialize + DeserializeOwned,
{
    let table = match file {
        Some(path) => read_table::<T>(path)?,
        None => toml::Table::new(),
    };
    from_table_and_flags(table, file, flags, matches)
}

/// `T` from `table` (settings keyed by their ids, as another file format gave them; errors
/// name `file`), with the flags given on the command line over it, as
/// [`from_file_and_flags`].
pub fn from_table_and_flags<T>(
    mut table: toml::Table,
    file: Option<&Path>,
    flags: &T,
    matches: &ArgMatches,
) -> Result<T>
where
    T: Args + Serialize + DeserializeOwned,
{
    let mut flag_table = toml::Table::try_from(flags).map_err(|e| {
        // TOML integers are i64: a larger flag value cannot be one.
        let too_large = keys::<T>().into_iter().find_map(|(id, _)| {
            let raw = matches.get_raw(&id)?;
            raw.filter_map(|v| v.to_str()?.parse::<u64>().ok())
                .find(|&v| v > i64::MAX as u64)
                .map(|v| (id.clone(), v))
        });
        match too_large {
            Some((id, v)) => Error::invalid(format!(
                "--{} {v}: too large (at most {})",
                id.replace('_', "-"),
                i64::MAX
            )),
            None => Error::invalid(format!("the settings cannot be represented: {e}")),
        }
    })?;
    for (id, _) in keys::<T>() {
        if matches.value_source(&id) == Some(ValueSource::CommandLine) {
            match flag_table.remove(&id) {
                Some(value) => table.insert(id, value),
                None => table.remove(&id),
            };
        }
    }
    from_table(table, file)
}

/// `a`, `a or b`, `a, b or c`: the expected values in an error message.
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Declares an enum whose values are written as names: `FromStr` (the canonical name or an
/// alias), `Display` and serde (the canonical name), and `name()`. A bad value reads
/// "unknown WHAT `x`: expected a, b or c".
///
/// ```text
/// named_enum! {
///     /// How A starts.
///     pub enum LoraInit: "LoRA init" {
///         KaimingUniform = "kaiming-uniform" | "kaiming",
///         Gaussian = "gaussian",
///     }
/// }
/// ```
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $canonical:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical name, as flags and files write it.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $canonical),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::error::Error;

            fn from_str(s: &str) -> $crate::error::Result<Self> {
                match s {
                    $($canonical $(| $alias)* => Ok($name::$variant),)+
                    other => Err($crate::error::Error::invalid(format!(
                        "unknown {} `{other}`: expected {}",
                        $what,
                        $crate::settings::one_of(&[$($canonical),+])
                    ))),
                }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let text = <String as ::serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::one_of;

    crate::named_enum! {
        enum Fruit: "fruit" {
            Apple = "apple" | "pomme",
            Pear = "pear",
            Plum = "plum",
        }
    }

    #[test]
    fn names_aliases_and_errors() {
        assert_eq!("pomme".parse::<Fruit>().unwrap(), Fruit::Apple);
        assert_eq!(Fruit::Pear.to_string(), "pear");
        assert_eq!(Fruit::ALL.len(), 3);
        let err = "kiwi".parse::<Fruit>().unwrap_err().to_string();
        assert_eq!(err, "unknown fruit `kiwi`: expected apple, pear or plum");
        assert_eq!(one_of(&["a", "b"]), "a or b");
        let toml: Fruit = serde_json::from_str("\"plum\"").unwrap();
        assert_eq!(toml, Fruit::Plum);
        assert_eq!(serde_json::to_string(&Fruit::Apple).unwrap(), "\"apple\"");
    }
}
