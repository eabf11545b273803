//! `has_table_privilege` and its siblings, answered from the roles and
//! grants in [`crate::access`] (BI tools call them to decide what to show).
//!
//! Each session registers its own copies ([`RelationOids::privilege_functions`](super::RelationOids::privilege_functions)),
//! which know who "the current user" is for the forms without a user argument.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::scalar::ScalarValue;

use super::Source;
use crate::access::{AccessState, Privilege, SchemaPrivilege};
use crate::catalog::{DEFAULT_SCHEMA, RelationName};
use crate::error::{Error, StatusCode};

/// What a function asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Object {
    Table,
    Column,
    Schema,
    Database,
    Role,
}

/// One privilege function, bound to a session.
#[derive(Debug)]
struct PrivilegeFunction {
    name: &'static str,
    object: Object,
    signature: Signature,
    source: Arc<Source>,
    /// The session's user name.
    user: String,
    /// Whether that name's privileges are checked (`false`: a session with every right).
    checked: bool,
}

impl PartialEq for PrivilegeFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.user == other.user && self.checked == other.checked
    }
}

impl Eq for PrivilegeFunction {}

impl std::hash::Hash for PrivilegeFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.name, &self.user, self.checked).hash(state);
    }
}

/// The functions, bound to a session whose user is `user`.
pub(super) fn functions(source: &Arc<Source>, user: &str, checked: bool) -> Vec<ScalarUDF> {
    let any =
        |arity: &[usize]| Signature::one_of(arity.iter().map(|&n| TypeSignature::Any(n)).collect(), Volatility::Stable);
    [
        ("has_table_privilege", Object::Table, any(&[2, 3])),
        ("has_any_column_privilege", Object::Table, any(&[2, 3])),
        ("has_column_privilege", Object::Column, any(&[3, 4])),
        ("has_schema_privilege", Object::Schema, any(&[2, 3])),
        ("has_database_privilege", Object::Database, any(&[2, 3])),
        ("pg_has_role", Object::Role, any(&[2, 3])),
    ]
    .into_iter()
    .map(|(name, object, signature)| {
        ScalarUDF::new_from_impl(PrivilegeFunction {
            name,
            object,
            signature,
            source: Arc::clone(source),
            user: user.to_string(),
            checked,
        })
    })
    .collect()
}

fn user_error(code: StatusCode, message: String) -> DataFusionError {
    DataFusionError::External(Box::new(Error::new(code, message)))
}

impl ScalarUDFImpl for PrivilegeFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let state = self.source.access.snapshot();
        super::functions::row_by_row(&args, &DataType::Boolean, |values| {
            Ok(ScalarValue::Boolean(self.answer(&state, values)?))
        })
    }
}

impl PrivilegeFunction {
    /// One row's answer; NULL when an argument is NULL.
    fn answer(&self, state: &AccessState, values: &[ScalarValue]) -> Result<Option<bool>> {
        if values.iter().any(ScalarValue::is_null) {
            return Ok(None);
        }
        let object_args = match self.object {
            Object::Column => 3,
            _ => 2,
        };
        let (user, rest) = if values.len() > object_args {
            (self.role_name(state, &values[0])?, &values[1..])
        } else {
            (self.user.clone(), values)
        };
        let privileges = text(rest.last().unwrap_or(&ScalarValue::Null));
        // A session with every right, asking about itself.
        let unchecked = !self.checked && user == self.user;
        if state.role(&user).is_none() && !unchecked {
            return Err(user_error(StatusCode::ObjectNotFound, format!("role \"{user}\" does not exist")));
        }
        let superuser = unchecked || state.is_superuser(&user);
        let mut any = false;
        for word in privileges.split(',') {
            let word = word.trim().to_ascii_lowercase();
            let word = word.strip_suffix("with grant option").map(str::trim).unwrap_or(&word).to_string();
            let held = match self.object {
                Object::Table | Object::Column => {
                    let relation = self.relation(&rest[0])?;
                    match relation {
                        // A system catalog: everyone reads it; nobody writes it.
                        None => {
                            word == "select"
                                && (superuser || !["pg_authid", "pg_shadow"].contains(&text(&rest[0]).as_str()))
                        }
                        Some(name) => match Privilege::parse(&word) {
                            Some(privilege) => {
                                superuser || state.has_privilege(&user, &name.schema, &name.name, privilege)
                            }
                            None if ["truncate", "references", "trigger", "maintain"].contains(&word.as_str()) => {
                                superuser || state.owns(&user, &name.schema, &name.name)
                            }
                            None => return Err(unrecognized(&word)),
                        },
                    }
                }
                Object::Schema => {
                    let schema = self.schema_name(&rest[0]);
                    match word.as_str() {
                        "usage" => superuser || state.has_schema_privilege(&user, &schema, SchemaPrivilege::Usage),
                        "create" => superuser || state.has_schema_privilege(&user, &schema, SchemaPrivilege::Create),
                        _ => return Err(unrecognized(&word)),
                    }
                }
                Object::Database => match word.as_str() {
                    "connect" | "temp" | "temporary" => true,
                    "create" => superuser,
                    _ => return Err(unrecognized(&word)),
                },
                Object::Role => {
                    let role = self.role_name(state, &rest[0])?;
                    match word.as_str() {
                        "member" | "usage" | "set" => superuser || state.has_role(&user, &role),
                        "usage with admin option" | "member with admin option" => superuser,
                        _ => return Err(unrecognized(&word)),
                    }
                }
            };
            any |= held;
        }
        Ok(Some(any))
    }

    /// A role given by name or oid.
    fn role_name(&self, state: &AccessState, value: &ScalarValue) -> Result<String> {
        match oid(value) {
            Some(oid) => {
                state.roles().find(|(_, r)| i64::from(r.oid) == oid).map(|(n, _)| n.clone()).ok_or_else(|| {
                    user_error(StatusCode::ObjectNotFound, format!("role with OID {oid} does not exist"))
                })
            }
            None => Ok(text(value)),
        }
    }

    /// A user relation given by (possibly qualified, quoted) name or oid;
    /// `None` for a system catalog.
    fn relation(&self, value: &ScalarValue) -> Result<Option<RelationName>> {
        let (schema, name) = match oid(value) {
            Some(oid) => match i32::try_from(oid).ok().and_then(|o| self.source.oids.lookup(o)) {
                Some((_, schema, name)) => (schema, name),
                None if oid < 16384 => return Ok(None),
                None => {
                    return Err(user_error(
                        StatusCode::TableNotFound,
                        format!("relation with OID {oid} does not exist"),
                    ));
                }
            },
            None => {
                let parts = super::split_qualified(&text(value));
                match parts.as_slice() {
                    [name] => (DEFAULT_SCHEMA.to_string(), name.clone()),
                    [schema, name] => (schema.clone(), name.clone()),
                    _ => {
                        return Err(user_error(
                            StatusCode::InvalidArgument,
                            format!("improper relation name: {}", text(value)),
                        ));
                    }
                }
            }
        };
        let name = RelationName { schema, name };
        if self.source.catalog.relation_kind(&name).is_some() {
            return Ok(Some(name));
        }
        if crate::catalog::SYSTEM_SCHEMAS.contains(&name.schema.as_str()) || name.schema == DEFAULT_SCHEMA {
            // `pg_class` unqualified, or `pg_catalog.pg_class`: a system catalog, unless no such table exists.
            if self.source.is_system_relation(&name.name) {
                return Ok(None);
            }
        }
        Err(user_error(StatusCode::TableNotFound, format!("relation \"{}\" does not exist", name.name)))
    }

    fn schema_name(&self, value: &ScalarValue) -> String {
        match oid(value).and_then(|o| i32::try_from(o).ok()) {
            Some(11) => "pg_catalog".into(),
            Some(2200) => DEFAULT_SCHEMA.into(),
            Some(13000) => "information_schema".into(),
            Some(oid) => self.source.oids.lookup(oid).map(|(_, _, name)| name).unwrap_or_default(),
            None => text(value),
        }
    }
}

fn unrecognized(word: &str) -> DataFusionError {
    user_error(StatusCode::InvalidParameterValue, format!("unrecognized privilege type: \"{word}\""))
}

fn oid(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::UInt32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok(),
        _ => None,
    }
}

fn text(value: &ScalarValue) -> String {
    match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => s.clone(),
        other => other.to_string(),
    }
}
