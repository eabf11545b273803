//! `information_schema`, as Postgres answers it: Postgres type names and
//! precisions, primary keys as constraints, and only tables and views
//! (Postgres lists materialized views in `pg_catalog` only).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result;
use datafusion::scalar::ScalarValue;

use super::value::{null, opt_text, text};
use super::{CatalogTable, CatalogTableObject, OWNER, Relation, Rows, Snapshot, Source, column_type};
use crate::types::PgType;

/// The `information_schema` views, by name.
pub(super) fn all() -> Vec<(&'static str, Box<dyn CatalogTableObject>)> {
    vec![
        ("schemata", Box::new(Schemata)),
        ("tables", Box::new(Tables)),
        ("columns", Box::new(Columns)),
        ("views", Box::new(Views)),
        ("table_constraints", Box::new(TableConstraints)),
        ("key_column_usage", Box::new(KeyColumnUsage)),
        ("constraint_column_usage", Box::new(ConstraintColumnUsage)),
        ("referential_constraints", Box::new(Empty(REFERENTIAL_CONSTRAINTS))),
        (
            "check_constraints",
            Box::new(Empty(&["constraint_catalog", "constraint_schema", "constraint_name", "check_clause"])),
        ),
        ("routines", Box::new(Empty(ROUTINES))),
        ("parameters", Box::new(Empty(PARAMETERS))),
        ("table_privileges", Box::new(Empty(TABLE_PRIVILEGES))),
    ]
}

const REFERENTIAL_CONSTRAINTS: &[&str] = &[
    "constraint_catalog",
    "constraint_schema",
    "constraint_name",
    "unique_constraint_catalog",
    "unique_constraint_schema",
    "unique_constraint_name",
    "match_option",
    "update_rule",
    "delete_rule",
];

const ROUTINES: &[&str] = &[
    "specific_catalog",
    "specific_schema",
    "specific_name",
    "routine_catalog",
    "routine_schema",
    "routine_name",
    "routine_type",
    "data_type",
    "type_udt_name",
    "routine_body",
    "routine_definition",
    "external_language",
    "is_deterministic",
];

const PARAMETERS: &[&str] = &[
    "specific_catalog",
    "specific_schema",
    "specific_name",
    "ordinal_position",
    "parameter_mode",
    "parameter_name",
    "data_type",
    "udt_name",
];

const TABLE_PRIVILEGES: &[&str] = &[
    "grantor",
    "grantee",
    "table_catalog",
    "table_schema",
    "table_name",
    "privilege_type",
    "is_grantable",
    "with_hierarchy",
];

fn texts(names: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(names.iter().map(|n| Field::new(*n, DataType::Utf8, true)).collect::<Vec<_>>()))
}

/// Tables and views (not materialized views), as `information_schema` lists relations.
fn listed(snapshot: &Snapshot) -> impl Iterator<Item = &Relation> {
    snapshot.relations.iter().filter(|r| r.relkind != 'm')
}

fn yes_no(v: bool) -> ScalarValue {
    text(if v { "YES" } else { "NO" })
}

fn int4(v: Option<i32>) -> ScalarValue {
    ScalarValue::Int32(v)
}

/// A view with no rows (what we have none of: foreign keys, routines, grants).
#[derive(Debug)]
struct Empty(&'static [&'static str]);

impl CatalogTable for Empty {
    fn schema(&self) -> SchemaRef {
        texts(self.0)
    }

    fn rows(&self, _: &Source, _: &Snapshot, _: &mut Rows) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct Schemata;

impl CatalogTable for Schemata {
    fn schema(&self) -> SchemaRef {
        texts(&[
            "catalog_name",
            "schema_name",
            "schema_owner",
            "default_character_set_catalog",
            "default_character_set_schema",
            "default_character_set_name",
            "sql_path",
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for (_, name) in &snapshot.namespaces {
            rows.push(vec![text(&source.database), text(name), text(OWNER), null(), null(), null(), null()])?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Tables;

impl CatalogTable for Tables {
    fn schema(&self) -> SchemaRef {
        texts(&[
            "table_catalog",
            "table_schema",
            "table_name",
            "table_type",
            "self_referencing_column_name",
            "reference_generation",
            "user_defined_type_catalog",
            "user_defined_type_schema",
            "user_defined_type_name",
            "is_insertable_into",
            "is_typed",
            "commit_action",
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in listed(snapshot) {
            let table = relation.relkind == 'r';
            rows.push(vec![
                text(&source.database),
                text(&relation.schema),
                text(&relation.name),
                text(if table { "BASE TABLE" } else { "VIEW" }),
                null(),
                null(),
                null(),
                null(),
                null(),
                yes_no(table && !relation.is_system()),
                yes_no(false),
                null(),
            ])?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Columns;

/// `information_schema.columns.data_type`: the SQL name without modifiers, `ARRAY` for arrays.
fn data_type_name(ty: &PgType) -> String {
    if crate::types::known_format_type(ty.oid, -1).is_some_and(|name| name.ends_with("[]")) {
        return "ARRAY".into();
    }
    crate::types::known_format_type(ty.oid, -1).unwrap_or_else(|| "USER-DEFINED".into())
}

impl CatalogTable for Columns {
    fn schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = ["table_catalog", "table_schema", "table_name", "column_name"]
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect();
        fields.push(Field::new("ordinal_position", DataType::Int32, true));
        fields.extend(
            ["column_default", "is_nullable", "data_type"].iter().map(|n| Field::new(*n, DataType::Utf8, true)),
        );
        fields.extend(
            [
                "character_maximum_length",
                "character_octet_length",
                "numeric_precision",
                "numeric_precision_radix",
                "numeric_scale",
                "datetime_precision",
            ]
            .iter()
            .map(|n| Field::new(*n, DataType::Int32, true)),
        );
        fields.extend(
            [
                "interval_type",
                "interval_precision",
                "character_set_catalog",
                "character_set_schema",
                "character_set_name",
                "collation_catalog",
                "collation_schema",
                "collation_name",
                "domain_catalog",
                "domain_schema",
                "domain_name",
                "udt_catalog",
                "udt_schema",
                "udt_name",
                "scope_catalog",
                "scope_schema",
                "scope_name",
                "maximum_cardinality",
                "dtd_identifier",
                "is_self_referencing",
                "is_identity",
                "identity_generation",
                "identity_start",
                "identity_increment",
                "identity_maximum",
                "identity_minimum",
                "identity_cycle",
                "is_generated",
                "generation_expression",
                "is_updatable",
            ]
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true)),
        );
        Arc::new(Schema::new(fields))
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in listed(snapshot) {
            for (i, field) in relation.info.schema.fields().iter().enumerate() {
                let ty = column_type(relation, i);
                let (precision, radix, scale) = match ty.oid {
                    21 => (Some(16), Some(2), Some(0)),
                    23 => (Some(32), Some(2), Some(0)),
                    20 => (Some(64), Some(2), Some(0)),
                    700 => (Some(24), Some(2), None),
                    701 => (Some(53), Some(2), None),
                    1700 => match ty.numeric_precision_scale() {
                        Some((p, s)) => (Some(p), Some(10), Some(s)),
                        None => (None, Some(10), None),
                    },
                    _ => (None, None, None),
                };
                let datetime_precision = match ty.oid {
                    1082 => Some(0),
                    1083 | 1114 | 1184 | 1186 => Some(6),
                    _ => None,
                };
                let length = ty.character_length();
                let octets = match ty.oid {
                    25 | 1042 | 1043 => Some(length.map_or(1_073_741_824, |n| n.saturating_mul(4))),
                    _ => None,
                };
                let default = relation.info.defaults.iter().find(|(c, _)| c == field.name()).map(|(_, e)| e.clone());
                let mut row = vec![
                    text(&source.database),
                    text(&relation.schema),
                    text(&relation.name),
                    text(field.name()),
                    int4(i32::try_from(i + 1).ok()),
                    opt_text(default),
                    yes_no(relation.relkind != 'r' || field.is_nullable()),
                    text(data_type_name(&ty)),
                    int4(length),
                    int4(octets),
                    int4(precision),
                    int4(radix),
                    int4(scale),
                    int4(datetime_precision),
                ];
                row.extend([null(), null(), null(), null(), null(), null(), null(), null(), null(), null(), null()]);
                row.extend([text(&source.database), text("pg_catalog"), text(ty.typname())]);
                row.extend([null(), null(), null(), null()]);
                row.push(text((i + 1).to_string()));
                row.extend([yes_no(false), yes_no(false), null(), null(), null(), null(), null(), yes_no(false)]);
                row.extend([text("NEVER"), null(), yes_no(relation.relkind == 'r' && !relation.is_system())]);
                rows.push(row)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Views;

impl CatalogTable for Views {
    fn schema(&self) -> SchemaRef {
        texts(&[
            "table_catalog",
            "table_schema",
            "table_name",
            "view_definition",
            "check_option",
            "is_updatable",
            "is_insertable_into",
            "is_trigger_updatable",
            "is_trigger_deletable",
            "is_trigger_insertable_into",
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in listed(snapshot).filter(|r| r.relkind == 'v') {
            rows.push(vec![
                text(&source.database),
                text(&relation.schema),
                text(&relation.name),
                opt_text(relation.info.definition.clone()),
                text("NONE"),
                yes_no(false),
                yes_no(false),
                yes_no(false),
                yes_no(false),
                yes_no(false),
            ])?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct TableConstraints;

impl CatalogTable for TableConstraints {
    fn schema(&self) -> SchemaRef {
        texts(&[
            "constraint_catalog",
            "constraint_schema",
            "constraint_name",
            "table_catalog",
            "table_schema",
            "table_name",
            "constraint_type",
            "is_deferrable",
            "initially_deferred",
            "enforced",
            "nulls_distinct",
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in listed(snapshot) {
            let Some(key) = relation.key_name() else { continue };
            rows.push(vec![
                text(&source.database),
                text(&relation.schema),
                text(key),
                text(&source.database),
                text(&relation.schema),
                text(&relation.name),
                text("PRIMARY KEY"),
                yes_no(false),
                yes_no(false),
                yes_no(true),
                null(),
            ])?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct KeyColumnUsage;

impl CatalogTable for KeyColumnUsage {
    fn schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = [
            "constraint_catalog",
            "constraint_schema",
            "constraint_name",
            "table_catalog",
            "table_schema",
            "table_name",
            "column_name",
        ]
        .iter()
        .map(|n| Field::new(*n, DataType::Utf8, true))
        .collect();
        fields.push(Field::new("ordinal_position", DataType::Int32, true));
        fields.push(Field::new("position_in_unique_constraint", DataType::Int32, true));
        Arc::new(Schema::new(fields))
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in listed(snapshot) {
            let Some(key) = relation.key_name() else { continue };
            for (n, column) in relation.key_columns().into_iter().enumerate() {
                rows.push(vec![
                    text(&source.database),
                    text(&relation.schema),
                    text(&key),
                    text(&source.database),
                    text(&relation.schema),
                    text(&relation.name),
                    text(column),
                    int4(i32::try_from(n + 1).ok()),
                    null(),
                ])?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ConstraintColumnUsage;

impl CatalogTable for ConstraintColumnUsage {
    fn schema(&self) -> SchemaRef {
        texts(&[
            "table_catalog",
            "table_schema",
            "table_name",
            "column_name",
            "constraint_catalog",
            "constraint_schema",
            "constraint_name",
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in listed(snapshot) {
            let Some(key) = relation.key_name() else { continue };
            for column in relation.key_columns() {
                rows.push(vec![
                    text(&source.database),
                    text(&relation.schema),
                    text(&relation.name),
                    text(column),
                    text(&source.database),
                    text(&relation.schema),
                    text(&key),
                ])?;
            }
        }
        Ok(())
    }
}
