//! Compatibility of two JSON Schemas, with the rules Confluent's schema registry uses for JSON
//! Schema (`docs/schemas.md`).
//!
//! [`diff`] walks an old and a new schema side by side and lists every [`Difference`], each a
//! [`Rule`] at a JSON pointer into the schemas; a rule is compatible or not (a reader of the new
//! schema still accepts every document the old one accepted, under the content-model reading
//! the registry uses: in an *open* model, one without `additionalProperties: false`, a schema
//! for additional properties or `patternProperties`, a property added may clash with what a
//! writer already put there, so adding one is incompatible and removing one compatible; in a
//! *closed* model it is the other way round). [`check`] applies a [`Mode`] to the versions
//! registered before and lists the incompatible differences as [`Violation`]s.
//!
//! Schemas are read into a small model first, as a validator would: `type` lists become
//! `anyOf` of one schema per type, a schema with several parts (`type` and `enum`, say) an
//! `allOf` of them, `$ref`s to the same document are followed, `true` and `{}` are the empty
//! schema. Drafts 7 and 2020-12 differ only in tuples (`items: [..]` + `additionalItems`
//! against `prefixItems` + `items`) and dependencies (`dependencies` against
//! `dependentRequired` / `dependentSchemas`), both read here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

/// A compatibility mode: which earlier versions a new one is checked against, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// The new schema reads what the latest one accepted (the default).
    Backward,
    /// The new schema reads what every earlier one accepted.
    BackwardTransitive,
    /// The latest schema reads what the new one accepts.
    Forward,
    /// Every earlier schema reads what the new one accepts.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier one.
    FullTransitive,
    /// No check.
    None,
}

impl Mode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [Mode; 7] = [
        Mode::Backward,
        Mode::BackwardTransitive,
        Mode::Forward,
        Mode::ForwardTransitive,
        Mode::Full,
        Mode::FullTransitive,
        Mode::None,
    ];

    /// Its name (`BACKWARD`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Backward => "BACKWARD",
            Mode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Mode::Forward => "FORWARD",
            Mode::ForwardTransitive => "FORWARD_TRANSITIVE",
            Mode::Full => "FULL",
            Mode::FullTransitive => "FULL_TRANSITIVE",
            Mode::None => "NONE",
        }
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Mode::Backward | Mode::BackwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Mode::Forward | Mode::ForwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Mode::BackwardTransitive | Mode::ForwardTransitive | Mode::FullTransitive
        )
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Mode::ALL.iter().map(|m| m.as_str()).collect();
                format!(
                    "{s:?} is not a compatibility mode (one of {})",
                    names.join(", ")
                )
            })
    }
}

macro_rules! rules {
    ($($name:ident = $compatible:literal,)*) => {
        /// A kind of difference between two schemas, named as Confluent's registry names it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types, missing_docs)]
        pub enum Rule { $($name,)* }

        impl Rule {
            /// Its name (`TYPE_NARROWED`, ...).
            pub fn as_str(self) -> &'static str {
                match self { $(Rule::$name => stringify!($name),)* }
            }

            /// Whether a reader of the new schema still reads what the old one accepted.
            pub fn compatible(self) -> bool {
                match self { $(Rule::$name => $compatible,)* }
            }
        }
    };
}

rules! {
    DESCRIPTION_CHANGED = true,
    TITLE_CHANGED = true,
    DEFAULT_CHANGED = true,
    SCHEMA_ADDED = false,
    SCHEMA_REMOVED = true,
    TYPE_EXTENDED = true,
    TYPE_NARROWED = false,
    TYPE_CHANGED = false,
    MAX_LENGTH_ADDED = false,
    MAX_LENGTH_REMOVED = true,
    MAX_LENGTH_INCREASED = true,
    MAX_LENGTH_DECREASED = false,
    MIN_LENGTH_ADDED = false,
    MIN_LENGTH_REMOVED = true,
    MIN_LENGTH_INCREASED = false,
    MIN_LENGTH_DECREASED = true,
    PATTERN_ADDED = false,
    PATTERN_REMOVED = true,
    PATTERN_CHANGED = false,
    MAXIMUM_ADDED = false,
    MAXIMUM_REMOVED = true,
    MAXIMUM_INCREASED = true,
    MAXIMUM_DECREASED = false,
    MINIMUM_ADDED = false,
    MINIMUM_REMOVED = true,
    MINIMUM_INCREASED = false,
    MINIMUM_DECREASED = true,
    EXCLUSIVE_MAXIMUM_ADDED = false,
    EXCLUSIVE_MAXIMUM_REMOVED = true,
    EXCLUSIVE_MAXIMUM_INCREASED = true,
    EXCLUSIVE_MAXIMUM_DECREASED = false,
    EXCLUSIVE_MINIMUM_ADDED = false,
    EXCLUSIVE_MINIMUM_REMOVED = true,
    EXCLUSIVE_MINIMUM_INCREASED = false,
    EXCLUSIVE_MINIMUM_DECREASED = true,
    MULTIPLE_OF_ADDED = false,
    MULTIPLE_OF_REMOVED = true,
    MULTIPLE_OF_REDUCED = true,
    MULTIPLE_OF_EXPANDED = false,
    MULTIPLE_OF_CHANGED = false,
    REQUIRED_ATTRIBUTE_ADDED = false,
    REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED = true,
    REQUIRED_ATTRIBUTE_REMOVED = true,
    DEPENDENCY_ARRAY_ADDED = false,
    DEPENDENCY_ARRAY_REMOVED = true,
    DEPENDENCY_ARRAY_EXTENDED = false,
    DEPENDENCY_ARRAY_NARROWED = true,
    DEPENDENCY_ARRAY_CHANGED = false,
    DEPENDENCY_SCHEMA_ADDED = false,
    DEPENDENCY_SCHEMA_REMOVED = true,
    MAX_PROPERTIES_ADDED = false,
    MAX_PROPERTIES_REMOVED = true,
    MAX_PROPERTIES_INCREASED = true,
    MAX_PROPERTIES_DECREASED = false,
    MIN_PROPERTIES_ADDED = false,
    MIN_PROPERTIES_REMOVED = true,
    MIN_PROPERTIES_INCREASED = false,
    MIN_PROPERTIES_DECREASED = true,
    ADDITIONAL_PROPERTIES_ADDED = true,
    ADDITIONAL_PROPERTIES_REMOVED = false,
    ADDITIONAL_PROPERTIES_EXTENDED = true,
    ADDITIONAL_PROPERTIES_NARROWED = false,
    PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL = false,
    PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL = true,
    PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL = true,
    OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL = true,
    REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL = false,
    REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL = true,
    PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL = false,
    PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL = true,
    PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = true,
    PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = false,
    PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = true,
    PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = false,
    MAX_ITEMS_ADDED = false,
    MAX_ITEMS_REMOVED = true,
    MAX_ITEMS_INCREASED = true,
    MAX_ITEMS_DECREASED = false,
    MIN_ITEMS_ADDED = false,
    MIN_ITEMS_REMOVED = true,
    MIN_ITEMS_INCREASED = false,
    MIN_ITEMS_DECREASED = true,
    UNIQUE_ITEMS_ADDED = false,
    UNIQUE_ITEMS_REMOVED = true,
    ADDITIONAL_ITEMS_ADDED = true,
    ADDITIONAL_ITEMS_REMOVED = false,
    ADDITIONAL_ITEMS_EXTENDED = true,
    ADDITIONAL_ITEMS_NARROWED = false,
    ITEM_ADDED_TO_OPEN_CONTENT_MODEL = false,
    ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL = true,
    ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL = true,
    ITEM_ADDED_TO_CLOSED_CONTENT_MODEL = true,
    ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL = false,
    ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = true,
    ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = false,
    ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = true,
    ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = false,
    ENUM_ARRAY_EXTENDED = true,
    ENUM_ARRAY_NARROWED = false,
    ENUM_ARRAY_CHANGED = false,
    COMBINED_TYPE_EXTENDED = true,
    COMBINED_TYPE_CHANGED = false,
    PRODUCT_TYPE_EXTENDED = false,
    PRODUCT_TYPE_NARROWED = true,
    SUM_TYPE_EXTENDED = true,
    SUM_TYPE_NARROWED = false,
    COMBINED_TYPE_SUBSCHEMAS_CHANGED = false,
    NOT_TYPE_EXTENDED = false,
    NOT_TYPE_NARROWED = true,
    NOT_TYPE_CHANGED = false,
    // Not one of Confluent's: the schemas are too large (or recursive) to compare within
    // [`NODES_MAX`] schemas and [`STEPS_MAX`] comparisons.
    TOO_COMPLEX_TO_CHECK = false,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One difference: a rule at a place in the schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The rule.
    pub rule: Rule,
    /// JSON pointer into the schemas (`""` for the root, `/properties/amount`, ...).
    pub pointer: String,
    /// What changed, for the message (`from number to integer`), or empty.
    pub detail: String,
}

impl Difference {
    /// `/properties/amount: type narrowed from number to integer`.
    pub fn describe(&self) -> String {
        let words = self.rule.as_str().to_ascii_lowercase().replace('_', " ");
        let at = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        if self.detail.is_empty() {
            format!("{at}: {words}")
        } else {
            format!("{at}: {words} {}", self.detail)
        }
    }
}

/// An incompatible difference found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the schemas.
    pub pointer: String,
    /// The rule broken (`TYPE_NARROWED`).
    pub rule: String,
    /// The version checked against.
    pub against: u32,
    /// `/properties/amount: type narrowed from number to integer (BACKWARD)`.
    pub message: String,
}

/// Checks `new` under `mode` against the earlier versions (oldest first, `(version, schema)`):
/// every incompatible difference, or none. The non-transitive modes check the latest only.
pub fn check(mode: Mode, earlier: &[(u32, &Value)], new: &Value) -> Vec<Violation> {
    let against: Vec<&(u32, &Value)> = if mode.transitive() {
        earlier.iter().rev().collect()
    } else {
        earlier.last().into_iter().collect()
    };
    let mut out = Vec::new();
    for (version, old) in against {
        let mut push = |diffs: Vec<Difference>, direction: &str| {
            for d in diffs.into_iter().filter(|d| !d.rule.compatible()) {
                let label = if mode.transitive() {
                    format!("{mode}, {direction} v{version}")
                } else {
                    mode.to_string()
                };
                out.push(Violation {
                    message: format!("{} ({label})", d.describe()),
                    pointer: d.pointer,
                    rule: d.rule.as_str().to_string(),
                    against: *version,
                });
            }
        };
        if mode.backward() {
            push(diff(old, new), "reading");
        }
        if mode.forward() {
            push(diff(new, old), "read by");
        }
    }
    out
}

/// Every difference from `old` to `new` (as a reader of `new` sees data written under `old`).
pub fn diff(old: &Value, new: &Value) -> Vec<Difference> {
    let (la, lb) = (Loader::new(old), Loader::new(new));
    let (a, b) = (la.load(old, 0), lb.load(new, 0));
    let steps = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut cx = Cx {
        path: Vec::new(),
        diffs: Vec::new(),
        steps: steps.clone(),
    };
    compare(&mut cx, &a, &b, 0);
    if la.nodes.get() > NODES_MAX || lb.nodes.get() > NODES_MAX || steps.get() > STEPS_MAX {
        cx.diffs.push(Difference {
            rule: Rule::TOO_COMPLEX_TO_CHECK,
            pointer: String::new(),
            detail: format!(
                "(more than {NODES_MAX} schemas or {STEPS_MAX} comparisons; simplify it or register it under mode NONE)"
            ),
        });
    }
    cx.diffs
}

/// How deep `$ref`s are followed and schemas compared (recursive schemas stop here).
const DEPTH_MAX: usize = 48;
/// Most schemas read from one document (`$ref`s followed included).
pub const NODES_MAX: usize = 100_000;
/// Most schema comparisons of one check.
pub const STEPS_MAX: usize = 1_000_000;

// ---- the model ----

#[derive(Debug, Clone, PartialEq)]
struct Node {
    title: Option<Value>,
    description: Option<Value>,
    default: Option<Value>,
    body: Body,
}

#[derive(Debug, Clone, PartialEq)]
enum Body {
    Empty,
    False,
    Null,
    Boolean,
    String(Strings),
    Number(Numbers),
    Object(Objects),
    Array(Arrays),
    Enum {
        key: &'static str,
        values: Vec<Value>,
    },
    Combined {
        crit: Crit,
        subs: Vec<Node>,
    },
    Not(Box<Node>),
}

impl Body {
    fn kind(&self) -> &'static str {
        match self {
            Body::Empty => "any",
            Body::False => "false",
            Body::Null => "null",
            Body::Boolean => "boolean",
            Body::String(_) => "string",
            Body::Number(n) if n.integer => "integer",
            Body::Number(_) => "number",
            Body::Object(_) => "object",
            Body::Array(_) => "array",
            Body::Enum { .. } => "enum",
            Body::Combined { crit, .. } => crit.key(),
            Body::Not(_) => "not",
        }
    }

    fn same_kind(&self, other: &Body) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crit {
    All,
    Any,
    One,
}

impl Crit {
    fn key(self) -> &'static str {
        match self {
            Crit::All => "allOf",
            Crit::Any => "anyOf",
            Crit::One => "oneOf",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Strings {
    min_length: Option<f64>,
    max_length: Option<f64>,
    pattern: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Numbers {
    integer: bool,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    multiple_of: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Objects {
    properties: BTreeMap<String, Node>,
    required: BTreeSet<String>,
    /// `additionalProperties: false`.
    closed: bool,
    /// A schema for additional properties (not `true`/`false`/absent).
    additional: Option<Box<Node>>,
    patterns: Vec<(String, Node)>,
    min_properties: Option<f64>,
    max_properties: Option<f64>,
    dependent_required: BTreeMap<String, BTreeSet<String>>,
    dependent_schemas: BTreeMap<String, Node>,
}

impl Objects {
    fn open(&self) -> bool {
        self.patterns.is_empty() && self.additional.is_none() && !self.closed
    }

    /// The schema a property not listed would be checked against, in a partly open model.
    fn partial(&self, name: &str) -> Option<&Node> {
        for (pattern, node) in &self.patterns {
            if regex::Regex::new(pattern).is_ok_and(|r| r.is_match(name)) {
                return Some(node);
            }
        }
        self.additional.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Arrays {
    /// One schema for every item.
    all: Option<Box<Node>>,
    /// Tuple items (`prefixItems`, or draft 7's `items: [..]`).
    tuple: Vec<Node>,
    /// Items past the tuple may not be there (`items: false` / `additionalItems: false`).
    closed: bool,
    /// A schema for items past the tuple.
    additional: Option<Box<Node>>,
    min_items: Option<f64>,
    max_items: Option<f64>,
    unique: bool,
}

impl Arrays {
    fn open(&self) -> bool {
        self.additional.is_none() && !self.closed
    }
}

struct Loader<'a> {
    root: &'a Value,
    nodes: std::cell::Cell<usize>,
}

const STRING_KEYS: [&str; 3] = ["minLength", "maxLength", "pattern"];
const NUMBER_KEYS: [&str; 5] = [
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
];
const OBJECT_KEYS: [&str; 9] = [
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "minProperties",
    "maxProperties",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
];
const ARRAY_KEYS: [&str; 6] = [
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "maxItems",
    "uniqueItems",
];

impl<'a> Loader<'a> {
    fn new(root: &'a Value) -> Self {
        Loader {
            root,
            nodes: std::cell::Cell::new(0),
        }
    }

    fn load(&self, v: &Value, depth: usize) -> Node {
        self.nodes.set(self.nodes.get() + 1);
        let empty = |body| Node {
            title: None,
            description: None,
            default: None,
            body,
        };
        let obj = match v {
            Value::Bool(false) => return empty(Body::False),
            Value::Object(o) if self.nodes.get() <= NODES_MAX => o,
            _ => return empty(Body::Empty),
        };
        if let Some(Value::String(r)) = obj.get("$ref")
            && depth < DEPTH_MAX
            && let Some(target) = self.resolve(r)
        {
            let mut node = self.load(target, depth + 1);
            annotate(&mut node, obj);
            return node;
        }
        let mut parts = Vec::new();
        let types: Vec<&str> = match obj.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => {
                let has = |keys: &[&str]| keys.iter().any(|k| obj.contains_key(*k));
                let mut inferred = Vec::new();
                if has(&OBJECT_KEYS) {
                    inferred.push("object");
                }
                if has(&ARRAY_KEYS) {
                    inferred.push("array");
                }
                if has(&STRING_KEYS) {
                    inferred.push("string");
                }
                if has(&NUMBER_KEYS) {
                    inferred.push("number");
                }
                inferred
            }
        };
        match types.as_slice() {
            [] => {}
            [t] => parts.push(empty(self.typed(t, obj, depth))),
            ts => parts.push(empty(Body::Combined {
                crit: Crit::Any,
                subs: ts
                    .iter()
                    .map(|t| empty(self.typed(t, obj, depth)))
                    .collect(),
            })),
        }
        if let Some(Value::Array(values)) = obj.get("enum") {
            parts.push(empty(Body::Enum {
                key: "enum",
                values: values.clone(),
            }));
        }
        if let Some(c) = obj.get("const") {
            parts.push(empty(Body::Enum {
                key: "const",
                values: vec![c.clone()],
            }));
        }
        for crit in [Crit::All, Crit::Any, Crit::One] {
            if let Some(Value::Array(subs)) = obj.get(crit.key()) {
                parts.push(empty(Body::Combined {
                    crit,
                    subs: subs.iter().map(|s| self.load(s, depth + 1)).collect(),
                }));
            }
        }
        if let Some(n) = obj.get("not") {
            parts.push(empty(Body::Not(Box::new(self.load(n, depth + 1)))));
        }
        let mut node = match parts.len() {
            0 => empty(Body::Empty),
            1 => parts.pop().expect("one part"),
            _ => empty(Body::Combined {
                crit: Crit::All,
                subs: parts,
            }),
        };
        annotate(&mut node, obj);
        node
    }

    fn resolve(&self, r: &str) -> Option<&Value> {
        let pointer = r.strip_prefix('#')?;
        self.root.pointer(pointer)
    }

    fn typed(&self, t: &str, obj: &Map<String, Value>, depth: usize) -> Body {
        let num = |k: &str| obj.get(k).and_then(Value::as_f64);
        match t {
            "null" => Body::Null,
            "boolean" => Body::Boolean,
            "string" => Body::String(Strings {
                min_length: num("minLength"),
                max_length: num("maxLength"),
                pattern: obj.get("pattern").and_then(Value::as_str).map(String::from),
            }),
            "number" | "integer" => Body::Number(Numbers {
                integer: t == "integer",
                minimum: num("minimum"),
                maximum: num("maximum"),
                exclusive_minimum: num("exclusiveMinimum"),
                exclusive_maximum: num("exclusiveMaximum"),
                multiple_of: num("multipleOf"),
            }),
            "object" => Body::Object(self.objects(obj, depth)),
            "array" => Body::Array(self.arrays(obj, depth)),
            _ => Body::Empty,
        }
    }

    fn objects(&self, obj: &Map<String, Value>, depth: usize) -> Objects {
        let sub = |v: &Value| self.load(v, depth + 1);
        let mut o = Objects {
            min_properties: obj.get("minProperties").and_then(Value::as_f64),
            max_properties: obj.get("maxProperties").and_then(Value::as_f64),
            ..Objects::default()
        };
        if let Some(Value::Object(props)) = obj.get("properties") {
            o.properties = props.iter().map(|(k, v)| (k.clone(), sub(v))).collect();
        }
        if let Some(Value::Array(req)) = obj.get("required") {
            o.required = req
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
        }
        match obj.get("additionalProperties") {
            Some(Value::Bool(false)) => o.closed = true,
            Some(Value::Bool(true)) | None => {}
            Some(v) => o.additional = Some(Box::new(sub(v))),
        }
        if let Some(Value::Object(pats)) = obj.get("patternProperties") {
            o.patterns = pats.iter().map(|(k, v)| (k.clone(), sub(v))).collect();
        }
        let deps = [
            obj.get("dependencies"),
            obj.get("dependentRequired"),
            obj.get("dependentSchemas"),
        ];
        for (name, dep) in deps
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flatten()
        {
            match dep {
                Value::Array(names) => {
                    o.dependent_required.insert(
                        name.clone(),
                        names
                            .iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect(),
                    );
                }
                other => {
                    o.dependent_schemas.insert(name.clone(), sub(other));
                }
            }
        }
        o
    }

    fn arrays(&self, obj: &Map<String, Value>, depth: usize) -> Arrays {
        let sub = |v: &Value| self.load(v, depth + 1);
        let mut a = Arrays {
            min_items: obj.get("minItems").and_then(Value::as_f64),
            max_items: obj.get("maxItems").and_then(Value::as_f64),
            unique: obj.get("uniqueItems") == Some(&Value::Bool(true)),
            ..Arrays::default()
        };
        // The schema for items past the tuple: 2020-12's `items` beside `prefixItems`, or
        // draft 7's `additionalItems` beside `items: [..]`.
        let rest = match (obj.get("prefixItems"), obj.get("items")) {
            (Some(Value::Array(tuple)), rest) => {
                a.tuple = tuple.iter().map(sub).collect();
                rest
            }
            (_, Some(Value::Array(tuple))) => {
                a.tuple = tuple.iter().map(sub).collect();
                obj.get("additionalItems")
            }
            (_, Some(all)) => {
                a.all = Some(Box::new(sub(all)));
                None
            }
            (_, None) => None,
        };
        match rest {
            Some(Value::Bool(false)) => a.closed = true,
            Some(Value::Bool(true)) | None => {}
            Some(v) => a.additional = Some(Box::new(sub(v))),
        }
        a
    }
}

fn annotate(node: &mut Node, obj: &Map<String, Value>) {
    for (key, slot) in [
        ("title", &mut node.title),
        ("description", &mut node.description),
        ("default", &mut node.default),
    ] {
        if let Some(v) = obj.get(key) {
            *slot = Some(v.clone());
        }
    }
}

// ---- the comparison ----

struct Cx {
    path: Vec<String>,
    diffs: Vec<Difference>,
    /// Comparisons made, shared with every sub-context.
    steps: std::rc::Rc<std::cell::Cell<usize>>,
}

impl Cx {
    fn add(&mut self, rule: Rule, detail: String) {
        self.diffs.push(Difference {
            rule,
            pointer: self.pointer(),
            detail,
        });
    }

    fn add_at(&mut self, key: &str, rule: Rule, detail: String) {
        self.path.push(key.to_string());
        self.add(rule, detail);
        self.path.pop();
    }

    fn pointer(&self) -> String {
        self.path.iter().map(|p| format!("/{p}")).collect()
    }

    /// A context at the same place whose differences are kept apart.
    fn sub(&self) -> Cx {
        Cx {
            path: self.path.clone(),
            diffs: Vec::new(),
            steps: self.steps.clone(),
        }
    }

    fn compatible(&self) -> bool {
        self.diffs.iter().all(|d| d.rule.compatible())
    }

    fn within<T>(&mut self, key: impl Into<String>, f: impl FnOnce(&mut Cx) -> T) -> T {
        self.path.push(key.into());
        let out = f(self);
        self.path.pop();
        out
    }
}

fn compare(cx: &mut Cx, a: &Node, b: &Node, depth: usize) {
    cx.steps.set(cx.steps.get() + 1);
    if depth > DEPTH_MAX || cx.steps.get() > STEPS_MAX {
        return;
    }
    match (&a.body, &b.body) {
        // A schema that becomes a choice including something that reads it.
        (
            x,
            Body::Combined {
                crit: Crit::Any | Crit::One,
                subs,
            },
        ) if !matches!(x, Body::Combined { .. }) => {
            for s in subs {
                let mut sub = cx.sub();
                compare(&mut sub, a, s, depth + 1);
                if sub.compatible() {
                    cx.diffs.extend(sub.diffs);
                    cx.add(Rule::SUM_TYPE_EXTENDED, format!("from {}", x_kind(x)));
                    return;
                }
            }
        }
        // A conjunction that loses every part but one that the new schema still reads.
        (
            Body::Combined {
                crit: Crit::All,
                subs,
            },
            y,
        ) if !matches!(y, Body::Combined { .. }) => {
            for s in subs {
                let mut sub = cx.sub();
                compare(&mut sub, s, b, depth + 1);
                if sub.compatible() {
                    cx.diffs.extend(sub.diffs);
                    cx.add(Rule::PRODUCT_TYPE_NARROWED, format!("to {}", x_kind(y)));
                    return;
                }
            }
        }
        _ => {}
    }
    if !a.body.same_kind(&b.body) {
        if matches!(a.body, Body::False) || matches!(b.body, Body::Empty) {
            return;
        }
        cx.add(
            Rule::TYPE_CHANGED,
            format!("from {} to {}", a.body.kind(), b.body.kind()),
        );
        return;
    }
    if a.description != b.description {
        cx.add(Rule::DESCRIPTION_CHANGED, String::new());
    }
    if a.title != b.title {
        cx.add(Rule::TITLE_CHANGED, String::new());
    }
    if a.default != b.default {
        cx.add(Rule::DEFAULT_CHANGED, String::new());
    }
    match (&a.body, &b.body) {
        (Body::String(x), Body::String(y)) => strings(cx, x, y),
        (Body::Number(x), Body::Number(y)) => numbers(cx, x, y),
        (Body::Object(x), Body::Object(y)) => objects(cx, x, y, depth),
        (Body::Array(x), Body::Array(y)) => arrays(cx, x, y, depth),
        (Body::Enum { key, values: x }, Body::Enum { values: y, .. }) => enums(cx, key, x, y),
        (Body::Combined { crit: c, subs: x }, Body::Combined { crit: d, subs: y }) => {
            combined(cx, (*c, x), (*d, y), depth)
        }
        (Body::Not(x), Body::Not(y)) => cx.within("not", |cx| {
            let mut sub = cx.sub();
            compare(&mut sub, x, y, depth + 1);
            if sub.diffs.is_empty() {
                return;
            }
            if sub.compatible() {
                cx.add(Rule::NOT_TYPE_EXTENDED, String::new());
            } else {
                let mut back = cx.sub();
                compare(&mut back, y, x, depth + 1);
                let rule = if back.compatible() {
                    Rule::NOT_TYPE_NARROWED
                } else {
                    Rule::NOT_TYPE_CHANGED
                };
                cx.add(rule, String::new());
            }
        }),
        _ => {}
    }
}

fn x_kind(b: &Body) -> &'static str {
    b.kind()
}

fn show(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        return format!("{}", n as i64);
    }
    serde_json::Number::from_f64(n)
        .map(|n| n.to_string())
        .unwrap_or_else(|| n.to_string())
}

/// A bound that is added, removed, raised or lowered: `rules` is (added, removed, increased,
/// decreased).
fn bound(cx: &mut Cx, key: &str, a: Option<f64>, b: Option<f64>, rules: [Rule; 4]) {
    let [added, removed, increased, decreased] = rules;
    match (a, b) {
        (None, Some(y)) => cx.add_at(key, added, format!("({})", show(y))),
        (Some(x), None) => cx.add_at(key, removed, format!("(was {})", show(x))),
        (Some(x), Some(y)) if x < y => {
            cx.add_at(key, increased, format!("from {} to {}", show(x), show(y)))
        }
        (Some(x), Some(y)) if x > y => {
            cx.add_at(key, decreased, format!("from {} to {}", show(x), show(y)))
        }
        _ => {}
    }
}

fn strings(cx: &mut Cx, a: &Strings, b: &Strings) {
    use Rule::*;
    bound(
        cx,
        "maxLength",
        a.max_length,
        b.max_length,
        [
            MAX_LENGTH_ADDED,
            MAX_LENGTH_REMOVED,
            MAX_LENGTH_INCREASED,
            MAX_LENGTH_DECREASED,
        ],
    );
    bound(
        cx,
        "minLength",
        a.min_length,
        b.min_length,
        [
            MIN_LENGTH_ADDED,
            MIN_LENGTH_REMOVED,
            MIN_LENGTH_INCREASED,
            MIN_LENGTH_DECREASED,
        ],
    );
    match (&a.pattern, &b.pattern) {
        (None, Some(p)) => cx.add_at("pattern", PATTERN_ADDED, format!("({p:?})")),
        (Some(p), None) => cx.add_at("pattern", PATTERN_REMOVED, format!("(was {p:?})")),
        (Some(p), Some(q)) if p != q => {
            cx.add_at("pattern", PATTERN_CHANGED, format!("from {p:?} to {q:?}"))
        }
        _ => {}
    }
}

fn numbers(cx: &mut Cx, a: &Numbers, b: &Numbers) {
    use Rule::*;
    bound(
        cx,
        "maximum",
        a.maximum,
        b.maximum,
        [
            MAXIMUM_ADDED,
            MAXIMUM_REMOVED,
            MAXIMUM_INCREASED,
            MAXIMUM_DECREASED,
        ],
    );
    bound(
        cx,
        "minimum",
        a.minimum,
        b.minimum,
        [
            MINIMUM_ADDED,
            MINIMUM_REMOVED,
            MINIMUM_INCREASED,
            MINIMUM_DECREASED,
        ],
    );
    bound(
        cx,
        "exclusiveMaximum",
        a.exclusive_maximum,
        b.exclusive_maximum,
        [
            EXCLUSIVE_MAXIMUM_ADDED,
            EXCLUSIVE_MAXIMUM_REMOVED,
            EXCLUSIVE_MAXIMUM_INCREASED,
            EXCLUSIVE_MAXIMUM_DECREASED,
        ],
    );
    bound(
        cx,
        "exclusiveMinimum",
        a.exclusive_minimum,
        b.exclusive_minimum,
        [
            EXCLUSIVE_MINIMUM_ADDED,
            EXCLUSIVE_MINIMUM_REMOVED,
            EXCLUSIVE_MINIMUM_INCREASED,
            EXCLUSIVE_MINIMUM_DECREASED,
        ],
    );
    match (a.multiple_of, b.multiple_of) {
        (None, Some(y)) => cx.add_at("multipleOf", MULTIPLE_OF_ADDED, format!("({})", show(y))),
        (Some(x), None) => cx.add_at(
            "multipleOf",
            MULTIPLE_OF_REMOVED,
            format!("(was {})", show(x)),
        ),
        (Some(x), Some(y)) if x != y => {
            let rule = if divides(y, x) {
                MULTIPLE_OF_REDUCED
            } else if divides(x, y) {
                MULTIPLE_OF_EXPANDED
            } else {
                MULTIPLE_OF_CHANGED
            };
            cx.add_at(
                "multipleOf",
                rule,
                format!("from {} to {}", show(x), show(y)),
            );
        }
        _ => {}
    }
    if a.integer != b.integer {
        let (rule, detail) = if a.integer {
            (TYPE_EXTENDED, "from integer to number")
        } else {
            (TYPE_NARROWED, "from number to integer")
        };
        cx.add(rule, detail.into());
    }
}

/// Whether `x` is a whole multiple of `d` (with decimal fractions: 0.01 divides 0.02).
fn divides(d: f64, x: f64) -> bool {
    if d == 0.0 {
        return false;
    }
    let q = x / d;
    (q - q.round()).abs() <= 1e-9 * q.abs().max(1.0)
}

fn enums(cx: &mut Cx, key: &str, a: &[Value], b: &[Value]) {
    let has = |set: &[Value], v: &Value| set.contains(v);
    if a.len() == b.len() && a.iter().all(|v| has(b, v)) {
        return;
    }
    let rule = if a.iter().all(|v| has(b, v)) {
        Rule::ENUM_ARRAY_EXTENDED
    } else if b.iter().all(|v| has(a, v)) {
        Rule::ENUM_ARRAY_NARROWED
    } else {
        Rule::ENUM_ARRAY_CHANGED
    };
    let list = |s: &[Value]| {
        let items: Vec<String> = s.iter().map(Value::to_string).collect();
        format!("[{}]", items.join(", "))
    };
    cx.add_at(key, rule, format!("from {} to {}", list(a), list(b)));
}

fn combined(cx: &mut Cx, a: (Crit, &[Node]), b: (Crit, &[Node]), depth: usize) {
    let ((ca, xs), (cb, ys)) = (a, b);
    if ca != cb {
        let detail = format!("from {} to {}", ca.key(), cb.key());
        if cb == Crit::Any {
            cx.add(Rule::COMBINED_TYPE_EXTENDED, detail);
        } else {
            cx.add(Rule::COMBINED_TYPE_CHANGED, detail);
            return;
        }
    }
    let xs = distinct(xs);
    let ys = distinct(ys);
    let detail = format!("from {} to {} {}", xs.len(), ys.len(), cb.key());
    if xs.len() < ys.len() {
        let rule = if cb == Crit::All {
            Rule::PRODUCT_TYPE_EXTENDED
        } else {
            Rule::SUM_TYPE_EXTENDED
        };
        cx.add(rule, detail);
    } else if xs.len() > ys.len() {
        let rule = if cb == Crit::All {
            Rule::PRODUCT_TYPE_NARROWED
        } else {
            Rule::SUM_TYPE_NARROWED
        };
        cx.add(rule, detail);
    }
    // Which new member reads which old one, then the largest matching of the two.
    let fits: Vec<Vec<bool>> = xs
        .iter()
        .map(|x| {
            ys.iter()
                .map(|y| {
                    let mut sub = cx.sub();
                    compare(&mut sub, x, y, depth + 1);
                    sub.compatible()
                })
                .collect()
        })
        .collect();
    let pairs = matching(&fits, ys.len());
    if pairs.len() < xs.len().min(ys.len()) {
        cx.add(
            Rule::COMBINED_TYPE_SUBSCHEMAS_CHANGED,
            format!("(no member of the new {} reads one of the old)", cb.key()),
        );
        return;
    }
    for (i, j) in pairs {
        cx.within(format!("{}/{i}", ca.key()), |cx| {
            compare(cx, xs[i], ys[j], depth + 1)
        });
    }
}

fn distinct(nodes: &[Node]) -> Vec<&Node> {
    let mut out: Vec<&Node> = Vec::new();
    for n in nodes {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The largest matching of old members to new ones they fit (augmenting paths), as
/// `(old, new)` pairs in old order.
fn matching(fits: &[Vec<bool>], right: usize) -> Vec<(usize, usize)> {
    fn augment(
        i: usize,
        fits: &[Vec<bool>],
        seen: &mut [bool],
        owner: &mut [Option<usize>],
    ) -> bool {
        for j in 0..owner.len() {
            if fits[i][j] && !seen[j] {
                seen[j] = true;
                if owner[j].is_none_or(|k| augment(k, fits, seen, owner)) {
                    owner[j] = Some(i);
                    return true;
                }
            }
        }
        false
    }
    let mut owner = vec![None; right];
    for i in 0..fits.len() {
        let mut seen = vec![false; right];
        augment(i, fits, &mut seen, &mut owner);
    }
    let mut pairs: Vec<(usize, usize)> = owner
        .iter()
        .enumerate()
        .filter_map(|(j, i)| i.map(|i| (i, j)))
        .collect();
    pairs.sort();
    pairs
}

fn objects(cx: &mut Cx, a: &Objects, b: &Objects, depth: usize) {
    use Rule::*;
    bound(
        cx,
        "maxProperties",
        a.max_properties,
        b.max_properties,
        [
            MAX_PROPERTIES_ADDED,
            MAX_PROPERTIES_REMOVED,
            MAX_PROPERTIES_INCREASED,
            MAX_PROPERTIES_DECREASED,
        ],
    );
    bound(
        cx,
        "minProperties",
        a.min_properties,
        b.min_properties,
        [
            MIN_PROPERTIES_ADDED,
            MIN_PROPERTIES_REMOVED,
            MIN_PROPERTIES_INCREASED,
            MIN_PROPERTIES_DECREASED,
        ],
    );
    cx.within("additionalProperties", |cx| {
        if a.closed != b.closed {
            if a.closed {
                cx.add(
                    ADDITIONAL_PROPERTIES_ADDED,
                    "(additional properties now allowed)".into(),
                );
            } else {
                cx.add(
                    ADDITIONAL_PROPERTIES_REMOVED,
                    "(additional properties no longer allowed)".into(),
                );
            }
        } else {
            match (&a.additional, &b.additional) {
                (None, Some(_)) => cx.add(ADDITIONAL_PROPERTIES_NARROWED, "(to a schema)".into()),
                (Some(_), None) => cx.add(ADDITIONAL_PROPERTIES_EXTENDED, "(to any value)".into()),
                (Some(x), Some(y)) => compare(cx, x, y, depth + 1),
                (None, None) => {}
            }
        }
    });
    // Dependencies: a property that requires others, or a schema, once present.
    let names: BTreeSet<&String> = a
        .dependent_required
        .keys()
        .chain(b.dependent_required.keys())
        .collect();
    for name in names {
        cx.within(format!("dependencies/{}", escape(name)), |cx| {
            let list = |s: &BTreeSet<String>| format!("{:?}", s.iter().collect::<Vec<_>>());
            match (
                a.dependent_required.get(name),
                b.dependent_required.get(name),
            ) {
                (None, Some(y)) => cx.add(DEPENDENCY_ARRAY_ADDED, format!("({})", list(y))),
                (Some(x), None) => cx.add(DEPENDENCY_ARRAY_REMOVED, format!("(was {})", list(x))),
                (Some(x), Some(y)) if x != y => {
                    let rule = if y.is_superset(x) {
                        DEPENDENCY_ARRAY_EXTENDED
                    } else if x.is_superset(y) {
                        DEPENDENCY_ARRAY_NARROWED
                    } else {
                        DEPENDENCY_ARRAY_CHANGED
                    };
                    cx.add(rule, format!("from {} to {}", list(x), list(y)));
                }
                _ => {}
            }
        });
    }
    let names: BTreeSet<&String> = a
        .dependent_schemas
        .keys()
        .chain(b.dependent_schemas.keys())
        .collect();
    for name in names {
        cx.within(format!("dependencies/{}", escape(name)), |cx| {
            match (a.dependent_schemas.get(name), b.dependent_schemas.get(name)) {
                (None, Some(_)) => cx.add(DEPENDENCY_SCHEMA_ADDED, String::new()),
                (Some(_), None) => cx.add(DEPENDENCY_SCHEMA_REMOVED, String::new()),
                (Some(x), Some(y)) => compare(cx, x, y, depth + 1),
                (None, None) => {}
            }
        });
    }
    // Required: only for properties the old schema declared (a new one is judged below).
    for name in a.required.union(&b.required) {
        cx.within(format!("required/{}", escape(name)), |cx| {
            match (a.required.contains(name), b.required.contains(name)) {
                (false, true) if a.properties.contains_key(name) => {
                    if b.properties.get(name).is_some_and(|p| p.default.is_some()) {
                        cx.add(REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED, String::new());
                    } else {
                        cx.add(REQUIRED_ATTRIBUTE_ADDED, "(without a default)".into());
                    }
                }
                (true, false) => cx.add(REQUIRED_ATTRIBUTE_REMOVED, String::new()),
                _ => {}
            }
        });
    }
    let names: BTreeSet<&String> = a.properties.keys().chain(b.properties.keys()).collect();
    for name in names {
        cx.within(format!("properties/{}", escape(name)), |cx| {
            match (a.properties.get(name), b.properties.get(name)) {
                (Some(x), Some(y)) => compare(cx, x, y, depth + 1),
                (Some(x), None) => {
                    if b.open() {
                        cx.add(PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL, String::new());
                    } else if let Some(p) = b.partial(name) {
                        covered(cx, (x, p), depth, [PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL, PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL]);
                    } else if matches!(x.body, Body::False) {
                        cx.add(PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL, String::new());
                    } else {
                        cx.add(
                            PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL,
                            "(old documents may hold it; additionalProperties is false)".into(),
                        );
                    }
                }
                (None, Some(y)) => {
                    if a.open() {
                        if matches!(y.body, Body::Empty) {
                            cx.add(PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL, String::new());
                        } else {
                            cx.add(
                                PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL,
                                "(old documents may hold it with any value; close the model with additionalProperties: false to add properties)".into(),
                            );
                        }
                        return;
                    }
                    if let Some(p) = a.partial(name) {
                        covered(cx, (p, y), depth, [PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL, PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL]);
                    }
                    if b.required.contains(name) {
                        if y.default.is_some() {
                            cx.add(REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL, String::new());
                        } else {
                            cx.add(
                                REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
                                "(old documents lack it; give it a default or make it optional)".into(),
                            );
                        }
                    } else {
                        cx.add(OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL, String::new());
                    }
                }
                (None, None) => {}
            }
        });
    }
}

fn arrays(cx: &mut Cx, a: &Arrays, b: &Arrays, depth: usize) {
    use Rule::*;
    bound(
        cx,
        "maxItems",
        a.max_items,
        b.max_items,
        [
            MAX_ITEMS_ADDED,
            MAX_ITEMS_REMOVED,
            MAX_ITEMS_INCREASED,
            MAX_ITEMS_DECREASED,
        ],
    );
    bound(
        cx,
        "minItems",
        a.min_items,
        b.min_items,
        [
            MIN_ITEMS_ADDED,
            MIN_ITEMS_REMOVED,
            MIN_ITEMS_INCREASED,
            MIN_ITEMS_DECREASED,
        ],
    );
    if a.unique != b.unique {
        let rule = if a.unique {
            UNIQUE_ITEMS_REMOVED
        } else {
            UNIQUE_ITEMS_ADDED
        };
        cx.add_at("uniqueItems", rule, String::new());
    }
    cx.within("items", |cx| match (&a.all, &b.all) {
        (None, Some(_)) => cx.add(SCHEMA_ADDED, "(items now checked against a schema)".into()),
        (Some(_), None) => cx.add(SCHEMA_REMOVED, String::new()),
        (Some(x), Some(y)) => compare(cx, x, y, depth + 1),
        (None, None) => {}
    });
    if a.tuple.is_empty() && b.tuple.is_empty() {
        return;
    }
    cx.within("additionalItems", |cx| {
        if a.closed != b.closed {
            let rule = if a.closed {
                ADDITIONAL_ITEMS_ADDED
            } else {
                ADDITIONAL_ITEMS_REMOVED
            };
            cx.add(rule, String::new());
        } else {
            match (&a.additional, &b.additional) {
                (None, Some(_)) => cx.add(ADDITIONAL_ITEMS_NARROWED, String::new()),
                (Some(_), None) => cx.add(ADDITIONAL_ITEMS_EXTENDED, String::new()),
                (Some(x), Some(y)) => compare(cx, x, y, depth + 1),
                (None, None) => {}
            }
        }
    });
    for i in 0..a.tuple.len().max(b.tuple.len()) {
        cx.within(format!("items/{i}"), |cx| {
            match (a.tuple.get(i), b.tuple.get(i)) {
                (Some(x), Some(y)) => compare(cx, x, y, depth + 1),
                (Some(x), None) => {
                    if b.open() {
                        cx.add(ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL, String::new());
                    } else if let Some(p) = &b.additional {
                        covered(
                            cx,
                            (x, p),
                            depth,
                            [
                                ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                                ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                            ],
                        );
                    } else {
                        cx.add(ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL, String::new());
                    }
                }
                (None, Some(y)) => {
                    if a.open() {
                        if matches!(y.body, Body::Empty) {
                            cx.add(
                                ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
                                String::new(),
                            );
                        } else {
                            cx.add(ITEM_ADDED_TO_OPEN_CONTENT_MODEL, String::new());
                        }
                    } else if let Some(p) = &a.additional {
                        covered(
                            cx,
                            (p, y),
                            depth,
                            [
                                ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                                ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                            ],
                        );
                    } else {
                        cx.add(ITEM_ADDED_TO_CLOSED_CONTENT_MODEL, String::new());
                    }
                }
                (None, None) => {}
            }
        });
    }
}

/// A property or item added or removed where a partly open model's schema covers it:
/// whether `from` → `to` is compatible decides between `rules` (covered, not covered); the
/// comparison's own differences are kept.
fn covered(cx: &mut Cx, (from, to): (&Node, &Node), depth: usize, rules: [Rule; 2]) {
    let mut sub = cx.sub();
    compare(&mut sub, from, to, depth + 1);
    let ok = sub.compatible();
    cx.diffs.extend(sub.diffs);
    cx.add(if ok { rules[0] } else { rules[1] }, String::new());
}

/// A JSON pointer token (`~` and `/` escaped).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Confluent's documented cases and fixtures (`broker/tests/data/schema_compat_cases.jsonl`,
    /// each with its source): the BACKWARD verdict of old → new, and every difference found.
    #[test]
    fn confluent_cases_give_the_documented_verdict_and_differences() {
        let text = include_str!("../../tests/data/schema_compat_cases.jsonl");
        let mut failures = Vec::new();
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let case: Value = serde_json::from_str(line).unwrap();
            n += 1;
            let found = diff(&case["old"], &case["new"]);
            let mut got: Vec<String> = found
                .iter()
                .map(|d| format!("{} {}", d.rule, d.pointer))
                .collect();
            let mut want: Vec<String> = case["diffs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let d = d.as_str().unwrap();
                    // `RULE #/pointer (note)`: the rule and the pointer, `#/` being the root.
                    let mut parts = d.split_whitespace();
                    let rule = parts.next().unwrap();
                    let pointer = parts.next().unwrap().trim_start_matches('#');
                    let pointer = if pointer == "/" { "" } else { pointer };
                    format!("{rule} {pointer}")
                })
                .collect();
            got.sort();
            want.sort();
            let verdict = found.iter().all(|d| d.rule.compatible());
            let want_verdict = case["bw"].as_bool().unwrap();
            let backward = check(Mode::Backward, &[(1, &case["old"])], &case["new"]);
            if got != want || verdict != want_verdict || backward.is_empty() != want_verdict {
                failures.push(format!(
                    "case {} ({}): verdict {verdict} (want {want_verdict}), differences {got:?} (want {want:?})",
                    case["id"], case["desc"]
                ));
            }
        }
        assert!(n >= 100, "{n} cases");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    fn payment(amount: Value) -> Value {
        json!({"type": "object", "properties": {"amount": amount, "currency": {"type": "string"}}})
    }

    /// Each mode over a type's history: which versions it is checked against, in which
    /// direction, and the message of each violation.
    #[test]
    fn every_mode_checks_its_versions_in_its_direction() {
        let number = payment(json!({"type": "number"}));
        let integer = payment(json!({"type": "integer"}));
        let upto100 = payment(json!({"type": "number", "maximum": 100}));
        let upto200 = payment(json!({"type": "number", "maximum": 200}));
        let string = json!({"type": "string"});
        // v1 takes any number, v2 (registered under NONE) up to 100.
        let history = [(1, &number), (2, &upto100)];
        let one = [(1, &number)];
        let ints = [(1, &integer)];
        type Case<'a> = (Mode, &'a [(u32, &'a Value)], &'a Value, Vec<&'a str>);
        let narrowed = |mode: &str| {
            format!("/properties/amount: type narrowed from number to integer ({mode})")
        };
        let (nb, nf, nfull) = (narrowed("BACKWARD"), narrowed("FORWARD"), narrowed("FULL"));
        let cases: Vec<Case> = vec![
            (Mode::Backward, &one, &integer, vec![&nb]),
            (Mode::Backward, &ints, &number, vec![]),
            (Mode::Forward, &ints, &number, vec![&nf]),
            (Mode::Forward, &one, &integer, vec![]),
            (Mode::Full, &one, &integer, vec![&nfull]),
            (Mode::Full, &ints, &number, vec![&nfull]),
            (Mode::Full, &one, &number, vec![]),
            // Up to 200 reads what v2 (up to 100) accepted ...
            (Mode::Backward, &history, &upto200, vec![]),
            // ... but not what v1 accepted.
            (
                Mode::BackwardTransitive,
                &history,
                &upto200,
                vec![
                    "/properties/amount/maximum: maximum added (200) (BACKWARD_TRANSITIVE, reading v1)",
                ],
            ),
            // v2 cannot read what up to 200 accepts; v1 can.
            (
                Mode::Forward,
                &history,
                &upto200,
                vec!["/properties/amount/maximum: maximum decreased from 200 to 100 (FORWARD)"],
            ),
            (
                Mode::ForwardTransitive,
                &history,
                &upto200,
                vec![
                    "/properties/amount/maximum: maximum decreased from 200 to 100 (FORWARD_TRANSITIVE, read by v2)",
                ],
            ),
            (
                Mode::FullTransitive,
                &history,
                &upto200,
                vec![
                    "/properties/amount/maximum: maximum decreased from 200 to 100 (FULL_TRANSITIVE, read by v2)",
                    "/properties/amount/maximum: maximum added (200) (FULL_TRANSITIVE, reading v1)",
                ],
            ),
            (Mode::None, &history, &string, vec![]),
            // The first version is checked against nothing.
            (Mode::FullTransitive, &[], &upto200, vec![]),
        ];
        for (mode, earlier, new, want) in cases {
            let got: Vec<String> = check(mode, earlier, new)
                .into_iter()
                .map(|v| v.message)
                .collect();
            assert_eq!(got, want, "{mode} against {} versions", earlier.len());
        }
    }

    #[test]
    fn messages_name_the_pointer_the_rule_and_the_change() {
        let open = json!({"properties": {"amount": {"type": "number"}}});
        let renamed = json!({"properties": {"amt": {"type": "number"}}});
        let got: Vec<String> = check(Mode::Backward, &[(1, &open)], &renamed)
            .into_iter()
            .map(|v| v.message)
            .collect();
        assert_eq!(
            got,
            vec![
                "/properties/amt: property added to open content model (old documents may hold it with any value; close the model with additionalProperties: false to add properties) (BACKWARD)"
            ]
        );
        let closed =
            json!({"properties": {"a": {"type": "string"}}, "additionalProperties": false});
        let required = json!({"properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["b"], "additionalProperties": false});
        let v = check(Mode::Backward, &[(3, &closed)], &required);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].pointer, "/properties/b");
        assert_eq!(v[0].rule, "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL");
        assert_eq!(v[0].against, 3);
        let e = json!({"enum": ["a", "b"]});
        let n = json!({"enum": ["a"]});
        assert_eq!(
            check(Mode::Backward, &[(1, &e)], &n)[0].message,
            r#"/enum: enum array narrowed from ["a", "b"] to ["a"] (BACKWARD)"#
        );
    }

    #[test]
    fn recursive_schemas_end() {
        let tree = json!({"$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"});
        assert!(diff(&tree, &tree).is_empty());
        // Two recursive children per node would be 2^48 schemas: the budget stops it.
        let wide = json!({"$defs": {"node": {"type": "object", "properties": {"l": {"$ref": "#/$defs/node"}, "r": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"});
        let d = diff(&wide, &wide);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].rule, Rule::TOO_COMPLEX_TO_CHECK);
    }

    #[test]
    fn modes_parse_by_name() {
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
        }
        let e = "SIDEWAYS".parse::<Mode>().unwrap_err();
        assert!(e.contains("BACKWARD_TRANSITIVE"), "{e}");
    }
}
