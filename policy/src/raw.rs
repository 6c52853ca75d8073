//! Stage 1: TOML text → raw serde structs that mirror the file, with byte spans.
//!
//! The document is parsed with `toml_edit` (the parser inside the `toml` crate), which keeps the
//! span of every key and value. Each table is then decoded on its own, so one bad endpoint does
//! not hide the problems in the next; and unknown keys are found by comparing a table's keys with
//! the fields serde will accept, so every unknown key is reported, not only the first. The raw
//! structs keep `#[serde(deny_unknown_fields)]` as a backstop.
//!
//! Raw fields are deliberately loose (`Option`, strings, `i64`): a missing field, a zero port or
//! an unknown protocol is a *validation* error found in stage 2 alongside all the others, rather
//! than a serde error that would abandon the table. Only a wrong TOML type stops a table here.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::Deserialize;
use toml::value::Datetime;
use toml::Spanned;
use toml_edit::{ImDocument, InlineTable, Item, Value};

use crate::error::{Diagnostics, ErrorKind};
use crate::text::{one_line, suggest, Quoted};
use crate::{MAX_ENDPOINTS, MAX_GROUPS, MAX_RULES, MAX_TESTS};

/// The `[defaults]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    pub(crate) max_session: Option<Spanned<String>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
    pub(crate) resume_grace: Option<Spanned<String>>,
    pub(crate) zone: Option<Spanned<String>>,
}

/// The `[dicom]` table: DICOM settings of the whole policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDicom {
    /// User → the calling AE titles the user's workstation presents (`{user.ae}` in a rule's
    /// `calling_ae`).
    pub(crate) ae_titles: Option<BTreeMap<String, Vec<Spanned<String>>>>,
}

/// One `[[endpoints]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) site: Option<Spanned<String>>,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) port: Option<Spanned<i64>>,
    pub(crate) ports: Option<Spanned<String>>,
    pub(crate) protocol: Option<Spanned<String>>,
    pub(crate) egress: Option<Spanned<String>>,
    pub(crate) labels: Option<Vec<Spanned<String>>>,
    pub(crate) description: Option<Spanned<String>>,
    pub(crate) local_port: Option<Spanned<i64>>,
    pub(crate) tls_verify: Option<Spanned<bool>>,
    pub(crate) upstream_host: Option<Spanned<String>>,
    pub(crate) request_audit: Option<Spanned<String>>,
    pub(crate) called_ae: Option<Spanned<String>>,
}

/// One `[[groups]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) claim: Option<Spanned<String>>,
    pub(crate) values: Option<Vec<Spanned<String>>>,
    pub(crate) users: Option<Vec<Spanned<String>>>,
    pub(crate) description: Option<Spanned<String>>,
}

/// A rule's `device` table: what the client device must be.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    pub(crate) registered: Option<Spanned<bool>>,
    pub(crate) approved: Option<Spanned<bool>>,
    pub(crate) user_verified: Option<Spanned<bool>>,
    pub(crate) posture: Option<BTreeMap<String, Spanned<StringOrList>>>,
}

/// A rule's `auth` table: how strongly and how recently the user signed in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub(crate) mfa: Option<Spanned<bool>>,
    pub(crate) max_age: Option<Spanned<String>>,
}

/// A rule's `source` table: which client networks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub(crate) allow: Option<Vec<Spanned<String>>>,
    pub(crate) deny: Option<Vec<Spanned<String>>>,
}

/// A posture fact's accepted values: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StringOrList {
    One(String),
    Many(Vec<String>),
}

/// One `[[rules]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub(crate) id: Option<Spanned<String>>,
    pub(crate) effect: Option<Spanned<String>>,
    pub(crate) description: Option<Spanned<String>>,
    pub(crate) groups: Option<Vec<Spanned<String>>>,
    pub(crate) users: Option<Vec<Spanned<String>>>,
    pub(crate) endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) endpoint_labels: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) egress: Option<Spanned<String>>,
    pub(crate) methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) paths: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) zone: Option<Spanned<String>>,
    pub(crate) windows: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) valid_from: Option<Spanned<Datetime>>,
    pub(crate) valid_until: Option<Spanned<Datetime>>,
    pub(crate) device: Option<RawDevice>,
    pub(crate) auth: Option<RawAuth>,
    pub(crate) source: Option<RawSource>,
    pub(crate) report_only: Option<Vec<Spanned<String>>>,
    pub(crate) max_session: Option<Spanned<String>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
    pub(crate) resume_grace: Option<Spanned<String>>,
    pub(crate) require_justification: Option<Spanned<bool>>,
    pub(crate) dicom_services: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) calling_ae: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Device facts in a test case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTestDevice {
    pub(crate) registered: Option<bool>,
    pub(crate) approved: Option<bool>,
    pub(crate) user_verified: Option<bool>,
    pub(crate) posture: Option<BTreeMap<String, String>>,
}

/// One `[[tests]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTest {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) user: Option<Spanned<String>>,
    pub(crate) groups: Option<Vec<Spanned<String>>>,
    pub(crate) claims: Option<BTreeMap<String, Vec<String>>>,
    pub(crate) endpoint: Option<Spanned<String>>,
    pub(crate) method: Option<Spanned<String>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) web_session: Option<Spanned<bool>>,
    pub(crate) calling_ae: Option<Spanned<String>>,
    pub(crate) dicom_service: Option<Spanned<String>>,
    pub(crate) ae_titles: Option<Vec<String>>,
    pub(crate) at: Option<Spanned<Datetime>>,
    pub(crate) zone: Option<Spanned<String>>,
    pub(crate) source: Option<Spanned<String>>,
    pub(crate) device: Option<RawTestDevice>,
    pub(crate) mfa: Option<Spanned<bool>>,
    pub(crate) signed_in_ago: Option<Spanned<String>>,
    pub(crate) justification: Option<Spanned<String>>,
    pub(crate) expect: Option<Spanned<String>>,
    pub(crate) rule: Option<Spanned<String>>,
    pub(crate) reason_contains: Option<Spanned<String>>,
}

/// A decoded table and where it starts (its `[[header]]`, or the `{` of an inline table).
#[derive(Debug)]
pub(crate) struct Located<T> {
    /// Which file of the policy it is in (position in the list of sources).
    pub(crate) file: usize,
    pub(crate) at: usize,
    /// 1-based position within its section, to name tables that have no valid name.
    pub(crate) ordinal: usize,
    pub(crate) value: T,
    /// Keys whose values had the wrong type: already reported, and dropped from `value`, so
    /// stage 2 must not call them missing.
    pub(crate) invalid_keys: Vec<String>,
}

impl<T> Located<T> {
    pub(crate) fn is_invalid(&self, key: &str) -> bool {
        self.invalid_keys.iter().any(|k| k == key)
    }
}

/// Everything stage 1 could decode, from one file or from every file of a directory.
#[derive(Debug, Default)]
pub(crate) struct RawDocument {
    pub(crate) defaults: Vec<Located<RawDefaults>>,
    pub(crate) dicom: Vec<Located<RawDicom>>,
    pub(crate) groups: Vec<Located<RawGroup>>,
    pub(crate) endpoints: Vec<Located<RawEndpoint>>,
    pub(crate) rules: Vec<Located<RawRule>>,
    pub(crate) tests: Vec<Located<RawTest>>,
    /// Names written in endpoint tables that failed to decode. Rules that name them are not
    /// reported as referencing an unknown endpoint: the real problem was already reported.
    pub(crate) undecoded_endpoint_names: Vec<String>,
    /// The same for groups.
    pub(crate) undecoded_group_names: Vec<String>,
    /// The same for rules (tests that name them are not reported).
    pub(crate) undecoded_rule_ids: Vec<String>,
    /// `[[endpoints]]` and `[[rules]]` tables written, decoded or not: a policy whose rules
    /// all have errors is not also reported as having no rules.
    pub(crate) endpoint_tables: usize,
    pub(crate) rule_tables: usize,
    /// Top-level `deny_all = …` of each file that writes it: (file, position, value).
    pub(crate) deny_all: Vec<(usize, usize, bool)>,
}

const TOP_LEVEL_KEYS: [&str; 7] = [
    "deny_all",
    "defaults",
    "dicom",
    "groups",
    "endpoints",
    "rules",
    "tests",
];

/// Parses `text` (file number `file`) and adds every table it can decode to `raw`. Returns
/// `false` when the text is not TOML or a count limit is exceeded; problems are recorded in
/// `diags`, which must be set to the same file.
pub(crate) fn load(
    text: &str,
    file: usize,
    raw: &mut RawDocument,
    diags: &mut Diagnostics,
) -> bool {
    let document = match ImDocument::parse(text) {
        Ok(document) => document,
        Err(e) => {
            diags.push(
                ErrorKind::Syntax,
                e.span().map_or(0, |s| s.start),
                format!("invalid TOML: {}", one_line(e.message())),
                None,
            );
            return false;
        }
    };
    let mut root = document.into_table();

    let unknown: Vec<String> = root
        .iter()
        .map(|(key, _)| key)
        .filter(|key| !TOP_LEVEL_KEYS.contains(key))
        .map(str::to_owned)
        .collect();
    for key in &unknown {
        let at = root.key(key).and_then(|k| k.span()).map_or(0, |s| s.start);
        diags.push_with(ErrorKind::UnknownKey, at, || {
            (
                format!("unknown top-level key `{}`", Quoted(key)),
                Some(unknown_key_hint(key, &TOP_LEVEL_KEYS)),
            )
        });
    }

    if let Some((key_at, item)) = take(&mut root, "deny_all") {
        match item.as_bool() {
            Some(value) => raw.deny_all.push((file, key_at, value)),
            None => diags.push(
                ErrorKind::InvalidType,
                key_at,
                "`deny_all` must be a boolean",
                Some("write `deny_all = true` at the top of the file, before any table".into()),
            ),
        }
    }

    raw.defaults.extend(section(
        &mut root,
        "defaults",
        file,
        diags,
        "write it as a `[defaults]` section",
    ));
    raw.dicom.extend(section(
        &mut root,
        "dicom",
        file,
        diags,
        "write it as a `[dicom]` section with `ae_titles = { \"user\" = [\"AE\"] }`",
    ));

    let mut sections = Vec::new();
    for (section, limit, total) in [
        ("groups", MAX_GROUPS, raw.groups.len()),
        ("endpoints", MAX_ENDPOINTS, raw.endpoints.len()),
        ("rules", MAX_RULES, raw.rules.len()),
        ("tests", MAX_TESTS, raw.tests.len()),
    ] {
        let tables = take(&mut root, section)
            .map(|(key_at, item)| section_tables(item, section, key_at, diags))
            .unwrap_or_default();
        if !within_limit(&tables, limit.saturating_sub(total), limit, section, diags) {
            return false;
        }
        sections.push(tables);
    }
    let mut sections = sections.into_iter();
    let (groups, endpoints, rules, tests) = (
        sections.next().unwrap_or_default(),
        sections.next().unwrap_or_default(),
        sections.next().unwrap_or_default(),
        sections.next().unwrap_or_default(),
    );

    raw.endpoint_tables += endpoints.len();
    raw.rule_tables += rules.len();
    for (index, (at, table)) in groups.into_iter().enumerate() {
        let name = table.get("name").and_then(Value::as_str).map(str::to_owned);
        match decode::<RawGroup>(table, at, &[], diags) {
            Some((value, invalid_keys)) => raw.groups.push(Located {
                file,
                at,
                ordinal: index + 1,
                value,
                invalid_keys,
            }),
            None => raw.undecoded_group_names.extend(name),
        }
    }
    for (index, (at, table)) in endpoints.into_iter().enumerate() {
        let name = table.get("name").and_then(Value::as_str).map(str::to_owned);
        match decode::<RawEndpoint>(table, at, &[], diags) {
            Some((value, invalid_keys)) => raw.endpoints.push(Located {
                file,
                at,
                ordinal: index + 1,
                value,
                invalid_keys,
            }),
            None => raw.undecoded_endpoint_names.extend(name),
        }
    }
    let rule_nested = [
        ("device", struct_fields::<RawDevice>()),
        ("auth", struct_fields::<RawAuth>()),
        ("source", struct_fields::<RawSource>()),
    ];
    for (index, (at, table)) in rules.into_iter().enumerate() {
        let id = table.get("id").and_then(Value::as_str).map(str::to_owned);
        match decode::<RawRule>(table, at, &rule_nested, diags) {
            Some((value, invalid_keys)) => raw.rules.push(Located {
                file,
                at,
                ordinal: index + 1,
                value,
                invalid_keys,
            }),
            None => raw.undecoded_rule_ids.extend(id),
        }
    }
    let test_nested = [("device", struct_fields::<RawTestDevice>())];
    for (index, (at, table)) in tests.into_iter().enumerate() {
        if let Some((value, invalid_keys)) = decode::<RawTest>(table, at, &test_nested, diags) {
            raw.tests.push(Located {
                file,
                at,
                ordinal: index + 1,
                value,
                invalid_keys,
            });
        }
    }
    true
}

/// The single table `[key]` (or `key = { … }`) of the root, decoded as `T`, if written; one
/// that is not a table is reported with `hint`.
fn section<T: DeserializeOwned>(
    root: &mut toml_edit::Table,
    key: &str,
    file: usize,
    diags: &mut Diagnostics,
    hint: &str,
) -> Option<Located<T>> {
    let (key_at, item) = take(root, key)?;
    let Some((at, table)) = into_table(item) else {
        diags.push(
            ErrorKind::InvalidType,
            key_at,
            format!("`{key}` must be a table"),
            Some(hint.to_owned()),
        );
        return None;
    };
    let (value, invalid_keys) = decode::<T>(table, at, &[], diags)?;
    Some(Located {
        file,
        at,
        ordinal: 1,
        value,
        invalid_keys,
    })
}

/// Removes `key` from the root table, returning where the key is written and its item.
fn take(root: &mut toml_edit::Table, key: &str) -> Option<(usize, Item)> {
    let at = root.key(key).and_then(|k| k.span()).map_or(0, |s| s.start);
    root.remove(key).map(|item| (at, item))
}

/// A single table, written either as `[name]` or as `name = { … }`.
fn into_table(item: Item) -> Option<(usize, InlineTable)> {
    match item {
        Item::Table(table) => {
            let at = table.span().map_or(0, |s| s.start);
            Some((at, table.into_inline_table()))
        }
        Item::Value(Value::InlineTable(table)) => {
            let at = table.span().map_or(0, |s| s.start);
            Some((at, table))
        }
        _ => None,
    }
}

/// The tables of an `[[endpoints]]` / `[[rules]]` section, also accepting the inline form
/// `endpoints = [{ … }, { … }]`.
fn section_tables(
    item: Item,
    section: &str,
    key_at: usize,
    diags: &mut Diagnostics,
) -> Vec<(usize, InlineTable)> {
    match item {
        Item::ArrayOfTables(tables) => tables
            .into_iter()
            .map(|table| {
                let at = table.span().map_or(key_at, |s| s.start);
                (at, table.into_inline_table())
            })
            .collect(),
        Item::Value(Value::Array(values)) => values
            .into_iter()
            .filter_map(|value| match value {
                Value::InlineTable(table) => {
                    let at = table.span().map_or(key_at, |s| s.start);
                    Some((at, table))
                }
                other => {
                    diags.push(
                        ErrorKind::InvalidType,
                        other.span().map_or(key_at, |s| s.start),
                        format!("each entry of `{section}` must be a table"),
                        Some(format!(
                            "write each entry under its own `[[{section}]]` header"
                        )),
                    );
                    None
                }
            })
            .collect(),
        _ => {
            diags.push(
                ErrorKind::InvalidType,
                key_at,
                format!("`{section}` must be an array of tables"),
                Some(format!(
                    "write each entry under its own `[[{section}]]` header (double brackets)"
                )),
            );
            Vec::new()
        }
    }
}

/// Whether `tables` fit in what is left (`remaining`) of the policy-wide `limit`.
fn within_limit(
    tables: &[(usize, InlineTable)],
    remaining: usize,
    limit: usize,
    section: &str,
    diags: &mut Diagnostics,
) -> bool {
    match tables.get(remaining) {
        None => true,
        Some((at, _)) => {
            diags.push(
                ErrorKind::LimitExceeded,
                *at,
                format!(
                    "too many {section}: {} (the limit is {limit} in the whole policy)",
                    tables.len() + (limit - remaining)
                ),
                Some("split the deployment or merge similar entries".into()),
            );
            false
        }
    }
}

/// Decodes one table into `T`, reporting every key `T` does not define and every value of the
/// wrong type. Returns the decoded value (without the wrongly-typed values) and the keys whose
/// values were dropped, or `None` if an error could not be pinned to a key.
///
/// `nested` lists keys whose values are sub-tables with a fixed set of keys (a rule's `device`,
/// `auth`, `source`), so that unknown keys inside them are reported one by one as well.
fn decode<T: DeserializeOwned>(
    mut table: InlineTable,
    at: usize,
    nested: &[(&str, &'static [&'static str])],
    diags: &mut Diagnostics,
) -> Option<(T, Vec<String>)> {
    for (key, fields) in nested {
        if let Some(Value::InlineTable(sub)) = table.get_mut(key) {
            let unknown: Vec<String> = sub
                .iter()
                .map(|(k, _)| k)
                .filter(|k| !fields.contains(k))
                .map(str::to_owned)
                .collect();
            for name in &unknown {
                let key_at = sub.key(name).and_then(|k| k.span()).map_or(at, |s| s.start);
                diags.push_with(ErrorKind::UnknownKey, key_at, || {
                    (
                        format!("unknown key `{}` in `{key}`", Quoted(name)),
                        Some(unknown_key_hint(name, fields)),
                    )
                });
            }
            sub.retain(|k, _| fields.contains(&k));
        }
    }
    let fields = struct_fields::<T>();
    let unknown: Vec<String> = table
        .iter()
        .map(|(key, _)| key)
        .filter(|key| !fields.contains(key))
        .map(str::to_owned)
        .collect();
    if !unknown.is_empty() {
        for key in &unknown {
            let key_at = table
                .key(key)
                .and_then(|k| k.span())
                .map_or(at, |s| s.start);
            diags.push_with(ErrorKind::UnknownKey, key_at, || {
                (
                    format!("unknown key `{}`", Quoted(key)),
                    Some(unknown_key_hint(key, fields)),
                )
            });
        }
        table.retain(|key, _| fields.contains(&key));
    }

    // serde stops at the first value of the wrong type. Drop that key and decode again, so the
    // other values of the table are still checked; the table has at most `fields.len()` keys
    // left, which bounds the retries.
    let mut invalid_keys = Vec::new();
    loop {
        match T::deserialize(Value::InlineTable(table.clone()).into_deserializer()) {
            Ok(value) => return Some((value, invalid_keys)),
            Err(e) => {
                let error_at = e.span().map_or(at, |s| s.start);
                let key = table
                    .iter()
                    .find(|(_, value)| value.span().is_some_and(|span| span.contains(&error_at)))
                    .map(|(key, _)| key.to_owned());
                let message = one_line(e.message());
                let Some(key) = key else {
                    diags.push(ErrorKind::InvalidType, error_at, message, None);
                    return None;
                };
                let hint = type_hint(&key, &message);
                diags.push(
                    ErrorKind::InvalidType,
                    error_at,
                    format!("`{key}`: {message}"),
                    hint,
                );
                table.remove(&key);
                invalid_keys.push(key);
            }
        }
    }
}

/// A hint for the common type mistakes, recognised from serde's "expected …" wording.
fn type_hint(key: &str, message: &str) -> Option<String> {
    if message.contains("expected a sequence") {
        Some(format!("`{key}` takes a list, such as `{key} = [\"…\"]`"))
    } else if message.contains("expected i64") {
        Some(format!("`{key}` takes a number without quotes"))
    } else if message.contains("expected a string") {
        Some(format!("`{key}` takes text in double quotes"))
    } else if message.contains("expected a boolean") {
        Some(format!("`{key}` takes true or false, without quotes"))
    } else if message.contains("Datetime") || message.contains("datetime") {
        Some(format!(
            "`{key}` takes a TOML date or date-time without quotes, such as `{key} = 2025-02-01` or `{key} = 2025-02-01T09:00:00Z`"
        ))
    } else {
        None
    }
}

fn unknown_key_hint(key: &str, allowed: &[&'static str]) -> String {
    match suggest(key, allowed.iter().copied()) {
        Some(close) => format!("did you mean `{close}`?"),
        None => format!("allowed keys: {}", allowed.join(", ")),
    }
}

/// The field names that `T`'s derived `Deserialize` accepts, exactly as serde lists them.
///
/// A derived struct impl calls `deserialize_struct` with its field list before reading anything;
/// this probe deserializer records that list and stops. Asking serde, rather than keeping a copy
/// of each list by hand, means the unknown-key check can never drift from the structs.
fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("field probe: not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field probe: fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // Always an error by construction; the point is the side effect on `fields`.
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_fields_lists_serde_fields() {
        assert_eq!(
            struct_fields::<RawEndpoint>(),
            [
                "name",
                "site",
                "host",
                "port",
                "ports",
                "protocol",
                "egress",
                "labels",
                "description",
                "local_port",
                "tls_verify",
                "upstream_host",
                "request_audit",
                "called_ae"
            ]
        );
        assert_eq!(
            struct_fields::<RawDefaults>(),
            ["max_session", "idle_timeout", "resume_grace", "zone"]
        );
        assert_eq!(struct_fields::<RawRule>().len(), 24);
        assert_eq!(struct_fields::<RawDevice>().len(), 4);
    }
}
