//! Which modules a PEFT LoRA config applies to, and with which rank and alpha, by PEFT's own
//! rules: `target_modules` (a list: a module's name or its last dotted parts; a string: a
//! regular expression the whole name matches; `all-linear`), `exclude_modules`,
//! `layers_to_transform` with `layers_pattern`, and `rank_pattern`/`alpha_pattern` (the first
//! key whose regular expression ends the name at a dot boundary).

use regex::Regex;
use serde_json::{Map, Value};

use crate::config::Projection;

/// Module names as PEFT matches them.
#[derive(Debug, Clone)]
enum Modules {
    /// A string: `re.fullmatch`.
    Regex(Regex),
    /// A list: equal to an entry, or ending in `.entry`.
    Names(Vec<String>),
}

impl Modules {
    fn matches(&self, module: &str) -> bool {
        match self {
            Modules::Regex(re) => re.is_match(module),
            Modules::Names(names) => names
                .iter()
                .any(|n| module == n || module.ends_with(&format!(".{n}"))),
        }
    }
}

/// One config's targeting, read from its JSON.
#[derive(Debug, Clone)]
pub struct Targeting {
    target: Modules,
    /// `layers_to_transform` applies only to a list of targets, as in PEFT.
    target_is_list: bool,
    exclude: Option<Modules>,
    layers: Option<Vec<u64>>,
    layer_patterns: Vec<Regex>,
    r: usize,
    alpha: f64,
    rank_pattern: Vec<(Regex, usize)>,
    alpha_pattern: Vec<(Regex, f64)>,
}

/// Why a config cannot be used: the key and the reason.
pub type Refusal = (&'static str, String);

fn compile(key: &'static str, pattern: &str) -> Result<Regex, Refusal> {
    Regex::new(pattern).map_err(|e| (key, format!("invalid regular expression `{pattern}`: {e}")))
}

fn names(key: &'static str, value: &Value) -> Result<Modules, Refusal> {
    match value {
        Value::String(s) => Ok(Modules::Regex(compile(key, &format!("^(?:{s})$"))?)),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Modules::Names)
            .ok_or((key, "expected a string or a list of strings".to_string())),
        _ => Err((key, "expected a string or a list of strings".to_string())),
    }
}

/// `(.*\.)?(key)$` from the start of the name, as PEFT's `get_pattern_key`.
fn pattern_key(key: &'static str, pattern: &str) -> Result<Regex, Refusal> {
    compile(key, &format!(r"^(?:.*\.)?(?:{pattern})$"))
}

fn pattern_map<T>(
    json: &Map<String, Value>,
    key: &'static str,
    value: impl Fn(&Value) -> Option<T>,
    expected: &str,
) -> Result<Vec<(Regex, T)>, Refusal> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = value(v).ok_or_else(|| (key, format!("`{k}`: expected {expected}")))?;
                Ok((pattern_key(key, k)?, v))
            })
            .collect(),
        Some(_) => Err((key, "expected an object".to_string())),
    }
}

fn positive_rank(v: &Value) -> Option<usize> {
    v.as_i64().map(|r| r.max(0) as usize)
}

impl Targeting {
    /// Read from an `adapter_config.json`; refuses what PEFT refuses.
    pub fn from_json(json: &Map<String, Value>) -> Result<Self, Refusal> {
        let r = json
            .get("r")
            .and_then(Value::as_i64)
            .ok_or(("r", "missing or not an integer".to_string()))?;
        let alpha = json
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or(("lora_alpha", "missing or not a number".to_string()))?;
        let rank_pattern = pattern_map(json, "rank_pattern", positive_rank, "an integer rank")?;
        for r in std::iter::once(r).chain(rank_pattern.iter().map(|(_, r)| *r as i64)) {
            if r <= 0 {
                return Err((
                    if rank_pattern.is_empty() {
                        "r"
                    } else {
                        "r/rank_pattern"
                    },
                    format!("`r` should be a positive integer value but the value passed is {r}"),
                ));
            }
        }
        let alpha_pattern = pattern_map(json, "alpha_pattern", Value::as_f64, "a number")?;
        let (target, target_is_list) = match json.get("target_modules") {
            // PEFT's default for LLaMA models.
            None | Some(Value::Null) => {
                (Modules::Names(vec!["q_proj".into(), "v_proj".into()]), true)
            }
            Some(Value::String(s)) if s.eq_ignore_ascii_case("all-linear") => (
                Modules::Names(Projection::ALL.iter().map(|p| p.name().into()).collect()),
                true,
            ),
            Some(v) => {
                let modules = names("target_modules", v)?;
                let list = matches!(modules, Modules::Names(_));
                (modules, list)
            }
        };
        let exclude = match json.get("exclude_modules") {
            None | Some(Value::Null) => None,
            Some(v) => Some(names("exclude_modules", v)?),
        };
        let layers = match json.get("layers_to_transform") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                Some(vec![n.as_u64().ok_or((
                    "layers_to_transform",
                    "expected a layer index".to_string(),
                ))?])
            }
            Some(Value::Array(items)) if items.is_empty() => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(Value::as_u64)
                    .collect::<Option<Vec<_>>>()
                    .ok_or((
                        "layers_to_transform",
                        "expected a list of layer indices".to_string(),
                    ))?,
            ),
            Some(_) => {
                return Err((
                    "layers_to_transform",
                    "expected an integer or a list of integers".to_string(),
                ));
            }
        };
        let layer_patterns = match json.get("layers_pattern") {
            None | Some(Value::Null) => vec![compile("layers_pattern", r"^.*?\.[^.]*\.(\d+)\.")?],
            Some(Value::String(s)) if s.is_empty() => {
                vec![compile("layers_pattern", r"^.*?\.[^.]*\.(\d+)\.")?]
            }
            Some(Value::String(s)) => vec![compile(
                "layers_pattern",
                &format!(r"^(?:.*?\.)?{s}\.(\d+)\."),
            )?],
            Some(Value::Array(items)) if items.is_empty() => {
                vec![compile("layers_pattern", r"^.*?\.[^.]*\.(\d+)\.")?]
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v.as_str() {
                    Some(s) => compile("layers_pattern", &format!(r"^(?:.*?\.)?{s}\.(\d+)\.")),
                    None => Err(("layers_pattern", "expected strings".to_string())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err((
                    "layers_pattern",
                    "expected a string or a list of strings".to_string(),
                ));
            }
        };
        Ok(Targeting {
            target,
            target_is_list,
            exclude,
            layers,
            layer_patterns,
            r: r as usize,
            alpha,
            rank_pattern,
            alpha_pattern,
        })
    }

    /// Whether PEFT puts an adapter on `module` (e.g. `model.layers.0.self_attn.q_proj`).
    pub fn targets(&self, module: &str) -> bool {
        if self.exclude.as_ref().is_some_and(|e| e.matches(module)) {
            return false;
        }
        if !self.target.matches(module) {
            return false;
        }
        // An exact name in the list skips the layer filter, as in PEFT.
        if let Modules::Names(names) = &self.target
            && names.iter().any(|n| n == module)
        {
            return true;
        }
        match (&self.layers, self.target_is_list) {
            (Some(layers), true) => self
                .layer_patterns
                .iter()
                .find_map(|re| re.captures(module))
                .and_then(|c| c[1].parse::<u64>().ok())
                .is_some_and(|index| layers.contains(&index)),
            _ => true,
        }
    }

    /// The rank PEFT gives `module`: the first matching `rank_pattern` key's, else `r`.
    pub fn rank(&self, module: &str) -> usize {
        self.rank_pattern
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map_or(self.r, |(_, r)| *r)
    }

    /// The alpha PEFT gives `module`: the first matching `alpha_pattern` key's, else
    /// `lora_alpha`.
    pub fn alpha(&self, module: &str) -> f64 {
        self.alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map_or(self.alpha, |(_, a)| *a)
    }

    /// The config's `r` and `lora_alpha`.
    pub fn r_and_alpha(&self) -> (usize, f64) {
        (self.r, self.alpha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn targeting(v: Value) -> Targeting {
        let mut base = json!({"r": 8, "lora_alpha": 16});
        base.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        Targeting::from_json(base.as_object().unwrap()).unwrap()
    }

    const Q0: &str = "model.layers.0.self_attn.q_proj";
    const V1: &str = "model.layers.1.self_attn.v_proj";
    const DOWN1: &str = "model.layers.1.mlp.down_proj";

    #[test]
    fn lists_match_names_and_their_tails() {
        let t = targeting(json!({"target_modules": ["q_proj", "mlp.down_proj"]}));
        assert!(t.targets(Q0) && t.targets(DOWN1) && !t.targets(V1));
        // "proj" is no dotted tail of "q_proj".
        assert!(!targeting(json!({"target_modules": ["proj"]})).targets(Q0));
    }

    #[test]
    fn strings_are_whole_name_regexes() {
        let t = targeting(json!({"target_modules": r".*\.(q|v)_proj"}));
        assert!(t.targets(Q0) && t.targets(V1) && !t.targets(DOWN1));
        assert!(!targeting(json!({"target_modules": "q_proj"})).targets(Q0));
        assert!(targeting(json!({"target_modules": "all-linear"})).targets(DOWN1));
    }

    #[test]
    fn layers_exclusions_and_patterns() {
        let t =
            targeting(json!({"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1]}));
        assert!(!t.targets(Q0) && t.targets(V1));
        let t = targeting(
            json!({"target_modules": ["q_proj", "v_proj"], "layers_to_transform": 0, "layers_pattern": "layers"}),
        );
        assert!(t.targets(Q0) && !t.targets(V1));
        let t = targeting(
            json!({"target_modules": ["q_proj", "v_proj"], "exclude_modules": ["layers.0.self_attn.q_proj"]}),
        );
        assert!(!t.targets(Q0) && t.targets(V1));
        let t = targeting(json!({
            "target_modules": ["q_proj", "down_proj"],
            "rank_pattern": {"down_proj": 4, r"layers\.0\.self_attn\.q_proj": 2},
            "alpha_pattern": {"q_proj": 32}
        }));
        assert_eq!((t.rank(Q0), t.rank(DOWN1), t.rank(V1)), (2, 4, 8));
        assert_eq!((t.alpha(Q0), t.alpha(DOWN1)), (32.0, 16.0));
    }

    #[test]
    fn refuses_what_peft_refuses() {
        let refuse = |v: Value| Targeting::from_json(v.as_object().unwrap()).unwrap_err();
        assert_eq!(refuse(json!({"r": 0, "lora_alpha": 16})).0, "r");
        assert!(
            refuse(json!({"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 0}}))
                .1
                .contains("should be a positive integer")
        );
        assert_eq!(
            refuse(json!({"r": 8, "lora_alpha": 16, "target_modules": "("})).0,
            "target_modules"
        );
    }
}
