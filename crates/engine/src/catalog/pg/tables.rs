//! The `pg_catalog` relations that describe our objects.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::scalar::ScalarValue;
use datafusion_pg_catalog::pg_catalog::oid_field::{kind, oid_field};

use super::value::{boolean, char, float8, int2, int2_array, int4, null, opt_text, text};
use super::{CatalogTable, CatalogTableObject, OWNER_OID, Relation, Rows, Snapshot, Source, column_type};

/// Our `pg_catalog` tables, by name.
pub(super) fn all() -> Vec<(&'static str, Box<dyn CatalogTableObject>)> {
    vec![
        ("pg_namespace", Box::new(PgNamespace)),
        ("pg_class", Box::new(PgClass)),
        ("pg_attribute", Box::new(PgAttribute)),
        ("pg_constraint", Box::new(PgConstraint)),
        ("pg_index", Box::new(PgIndex)),
        ("pg_attrdef", Box::new(PgAttrdef)),
        ("pg_tables", Box::new(PgTables)),
        ("pg_views", Box::new(PgViews)),
        ("pg_matviews", Box::new(PgMatviews)),
        ("pg_policy", Box::new(PgPolicy)),
        ("pg_settings", Box::new(PgSettings)),
        ("pg_rewrite", Box::new(PgRewrite)),
        ("pg_depend", Box::new(PgDepend)),
        ("pg_collation", Box::new(PgCollation)),
        ("pg_statistic_ext", Box::new(PgStatisticExt)),
    ]
}

/// No row-level security policies; typed as Postgres types them (`polroles`
/// is `oid[]`, which psql's `\d` compares with `ANY`).
#[derive(Debug)]
struct PgPolicy;

impl CatalogTable for PgPolicy {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("oid", kind::OID, false),
            utf8("polname"),
            oid_field("polrelid", kind::REGCLASS, false),
            utf8("polcmd"),
            flag("polpermissive"),
            Field::new("polroles", DataType::new_list(DataType::Int32, true), true),
            utf8("polqual"),
            utf8("polwithcheck"),
        ])
    }

    fn rows(&self, _: &Source, _: &Snapshot, _: &mut Rows) -> Result<()> {
        Ok(())
    }
}

/// No extended statistics objects (`CREATE STATISTICS` does not exist
/// here); typed as Postgres types it (`stxkind` is `char[]`, which psql's
/// `\d` searches with `= any`).
#[derive(Debug)]
struct PgStatisticExt;

impl CatalogTable for PgStatisticExt {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("oid", kind::OID, false),
            oid_field("stxrelid", kind::REGCLASS, false),
            utf8("stxname"),
            oid_field("stxnamespace", kind::OID, false),
            oid_field("stxowner", kind::OID, false),
            int("stxstattarget", DataType::Int32),
            super::int2_array_field("stxkeys"),
            Field::new("stxkind", DataType::new_list(DataType::Utf8, true), true),
            utf8("stxexprs"),
        ])
    }

    fn rows(&self, _: &Source, _: &Snapshot, _: &mut Rows) -> Result<()> {
        Ok(())
    }
}

/// The collations streamhouse has: text compares and sorts by code point,
/// which is Postgres' `C`; `default` and `POSIX` are the same here. (Listing
/// the hundreds of ICU and libc collations of a Postgres install would
/// claim behaviour we do not have, and makes psql's `\d` slow.)
#[derive(Debug)]
struct PgCollation;

impl CatalogTable for PgCollation {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("oid", kind::OID, false),
            utf8("collname"),
            oid_field("collnamespace", kind::OID, false),
            oid_field("collowner", kind::OID, false),
            utf8("collprovider"),
            flag("collisdeterministic"),
            int("collencoding", DataType::Int32),
            utf8("collcollate"),
            utf8("collctype"),
            utf8("colliculocale"),
            utf8("collicurules"),
            utf8("collversion"),
        ])
    }

    fn rows(&self, _: &Source, _: &Snapshot, rows: &mut Rows) -> Result<()> {
        for (oid, name, provider, encoding) in [(100, "default", "d", -1), (950, "C", "c", -1), (951, "POSIX", "c", -1)]
        {
            let locale = if provider == "c" { text(name) } else { null() };
            rows.push(vec![
                int4(oid),
                text(name),
                int4(11),
                int4(OWNER_OID),
                text(provider),
                boolean(true),
                int4(encoding),
                locale.clone(),
                locale,
                null(),
                null(),
                null(),
            ])?;
        }
        Ok(())
    }
}

/// `pg_class.oid` of `pg_rewrite` and `pg_class` themselves (`pg_depend.classid`).
const PG_REWRITE_CLASS: i32 = 2618;
const PG_CLASS_CLASS: i32 = 1259;

/// The oid of the `_RETURN` rule of view `relation`.
fn rule_oid(source: &Source, relation: &Relation) -> i32 {
    source.oids.get('w', &relation.schema, &relation.name)
}

/// Each view's (and materialized view's) `_RETURN` rule, as Postgres keeps
/// it: `pg_depend` ties the rule to what the view reads (dbt follows these
/// links to know what `DROP … CASCADE` took with it).
#[derive(Debug)]
struct PgRewrite;

impl CatalogTable for PgRewrite {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("oid", kind::OID, false),
            utf8("rulename"),
            oid_field("ev_class", kind::REGCLASS, false),
            utf8("ev_type"),
            utf8("ev_enabled"),
            flag("is_instead"),
            utf8("ev_qual"),
            utf8("ev_action"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in snapshot.relations.iter().filter(|r| matches!(r.relkind, 'v' | 'm')) {
            rows.push(vec![
                int4(rule_oid(source, relation)),
                text("_RETURN"),
                int4(relation.oid),
                text("1"),
                text("O"),
                boolean(true),
                null(),
                null(),
            ])?;
        }
        Ok(())
    }
}

/// What depends on what: each view's rule on the relations it reads.
#[derive(Debug)]
struct PgDepend;

impl CatalogTable for PgDepend {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("classid", kind::OID, false),
            oid_field("objid", kind::OID, false),
            int("objsubid", DataType::Int32),
            oid_field("refclassid", kind::OID, false),
            oid_field("refobjid", kind::OID, false),
            int("refobjsubid", DataType::Int32),
            utf8("deptype"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in snapshot.relations.iter().filter(|r| matches!(r.relkind, 'v' | 'm')) {
            // The rule belongs to its view ("internal"), and depends on what the view reads.
            rows.push(vec![
                int4(PG_REWRITE_CLASS),
                int4(rule_oid(source, relation)),
                int4(0),
                int4(PG_CLASS_CLASS),
                int4(relation.oid),
                int4(0),
                text("i"),
            ])?;
            for read in &relation.info.reads {
                let Some(target) = snapshot.relations.iter().find(|r| r.schema == read.schema && r.name == read.name)
                else {
                    continue;
                };
                rows.push(vec![
                    int4(PG_REWRITE_CLASS),
                    int4(rule_oid(source, relation)),
                    int4(0),
                    int4(PG_CLASS_CLASS),
                    int4(target.oid),
                    int4(0),
                    text("n"),
                ])?;
            }
        }
        Ok(())
    }
}

/// The run-time parameters streamhouse knows, with their defaults (a
/// session's `SET` shows in `SHOW` and `current_setting`, not here).
#[derive(Debug)]
struct PgSettings;

impl CatalogTable for PgSettings {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            utf8("name"),
            utf8("setting"),
            utf8("unit"),
            utf8("category"),
            utf8("short_desc"),
            utf8("extra_desc"),
            utf8("context"),
            utf8("vartype"),
            utf8("source"),
            utf8("min_val"),
            utf8("max_val"),
            Field::new("enumvals", DataType::new_list(DataType::Utf8, true), true),
            utf8("boot_val"),
            utf8("reset_val"),
            utf8("sourcefile"),
            int("sourceline", DataType::Int32),
            flag("pending_restart"),
        ])
    }

    fn rows(&self, _: &Source, _: &Snapshot, rows: &mut Rows) -> Result<()> {
        for known in crate::settings::KNOWN {
            let context = if known.settable { "user" } else { "internal" };
            rows.push(vec![
                text(known.name),
                text(known.default),
                null(),
                null(),
                text(known.description),
                null(),
                text(context),
                text("string"),
                text("default"),
                null(),
                null(),
                null(),
                text(known.default),
                text(known.default),
                null(),
                null(),
                boolean(false),
            ])?;
        }
        Ok(())
    }
}

fn schema(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn int(name: &str, data_type: DataType) -> Field {
    Field::new(name, data_type, true)
}

fn flag(name: &str) -> Field {
    Field::new(name, DataType::Boolean, true)
}

#[derive(Debug)]
struct PgNamespace;

impl CatalogTable for PgNamespace {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("oid", kind::OID, false),
            utf8("nspname"),
            int("nspowner", DataType::Int32),
            utf8("nspacl"),
            utf8("options"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        let access = source.access.snapshot();
        for (oid, name) in &snapshot.namespaces {
            let owner = access.role(access.schema_owner(name)).map_or(OWNER_OID, |r| r.oid as i32);
            rows.push(vec![int4(*oid), text(name), int4(owner), opt_text(access.schema_acl(name)), null()])?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PgClass;

impl CatalogTable for PgClass {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("oid", kind::OID, false),
            utf8("relname"),
            oid_field("relnamespace", kind::REGNAMESPACE, false),
            oid_field("reltype", kind::REGTYPE, false),
            oid_field("reloftype", kind::REGTYPE, true),
            int("relowner", DataType::Int32),
            int("relam", DataType::Int32),
            int("relfilenode", DataType::Int32),
            int("reltablespace", DataType::Int32),
            int("relpages", DataType::Int32),
            int("reltuples", DataType::Float64),
            int("relallvisible", DataType::Int32),
            oid_field("reltoastrelid", kind::REGCLASS, false),
            flag("relhasindex"),
            flag("relisshared"),
            utf8("relpersistence"),
            utf8("relkind"),
            int("relnatts", DataType::Int16),
            int("relchecks", DataType::Int16),
            flag("relhasrules"),
            flag("relhastriggers"),
            flag("relhassubclass"),
            flag("relrowsecurity"),
            flag("relforcerowsecurity"),
            flag("relispopulated"),
            utf8("relreplident"),
            flag("relispartition"),
            oid_field("relrewrite", kind::REGCLASS, true),
            int("relfrozenxid", DataType::Int32),
            int("relminmxid", DataType::Int32),
            utf8("relacl"),
            Field::new("reloptions", DataType::new_list(DataType::Utf8, true), true),
            utf8("relpartbound"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        let access = source.access.snapshot();
        let row = |oid: i32,
                   name: &str,
                   namespace: i32,
                   relkind: char,
                   columns: usize,
                   has_index: bool,
                   owner: i32,
                   acl: Option<String>| {
            let am = match relkind {
                'r' | 'm' => 2,
                'i' => 403,
                _ => 0,
            };
            vec![
                int4(oid),
                text(name),
                int4(namespace),
                int4(0),
                int4(0),
                int4(owner),
                int4(am),
                int4(if relkind == 'v' { 0 } else { oid }),
                int4(0),
                int4(0),
                float8(-1.0),
                int4(0),
                int4(0),
                boolean(has_index),
                boolean(false),
                char('p'),
                char(relkind),
                int2(i16::try_from(columns).unwrap_or(i16::MAX)),
                int2(0),
                boolean(relkind == 'v'),
                boolean(false),
                boolean(false),
                boolean(false),
                boolean(false),
                boolean(true),
                char(if relkind == 'r' { 'd' } else { 'n' }),
                boolean(false),
                int4(0),
                int4(0),
                int4(0),
                opt_text(acl),
                null(),
                null(),
            ]
        };
        for relation in &snapshot.relations {
            let key = relation.key_columns();
            let (_, owner) = source.owner(&access, relation);
            rows.push(row(
                relation.oid,
                &relation.name,
                relation.namespace,
                relation.relkind,
                relation.info.schema.fields().len(),
                !key.is_empty(),
                owner,
                access.relation_acl(&relation.schema, &relation.name),
            ))?;
            if let (Some(name), Some(index)) = (relation.key_name(), source.key_oid('i', relation)) {
                rows.push(row(index, &name, relation.namespace, 'i', key.len(), false, owner, None))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PgAttribute;

impl CatalogTable for PgAttribute {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("attrelid", kind::REGCLASS, false),
            utf8("attname"),
            oid_field("atttypid", kind::REGTYPE, false),
            int("attstattarget", DataType::Int32),
            int("attlen", DataType::Int16),
            int("attnum", DataType::Int16),
            int("attndims", DataType::Int32),
            int("attcacheoff", DataType::Int32),
            int("atttypmod", DataType::Int32),
            flag("attbyval"),
            utf8("attalign"),
            utf8("attstorage"),
            utf8("attcompression"),
            flag("attnotnull"),
            flag("atthasdef"),
            flag("atthasmissing"),
            utf8("attidentity"),
            utf8("attgenerated"),
            flag("attisdropped"),
            flag("attislocal"),
            int("attinhcount", DataType::Int32),
            int("attcollation", DataType::Int32),
            utf8("attacl"),
            utf8("attoptions"),
            utf8("attfdwoptions"),
            utf8("attmissingval"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in &snapshot.relations {
            let fields = relation.info.schema.fields();
            let mut attribute = |relid: i32, i: usize, num: usize| -> Result<()> {
                let field = &fields[i];
                let ty = column_type(relation, i);
                let has_default = relation.info.defaults.iter().any(|(c, _)| c == field.name());
                let array = matches!(field.data_type(), DataType::List(_) | DataType::LargeList(_));
                let collatable = matches!(ty.oid, 25 | 1042 | 1043);
                rows.push(vec![
                    int4(relid),
                    text(field.name()),
                    int4(ty.oid),
                    int4(-1),
                    int2(ty.typlen()),
                    int2(i16::try_from(num).unwrap_or(i16::MAX)),
                    int4(i32::from(array)),
                    int4(-1),
                    int4(ty.typmod),
                    boolean(ty.by_value()),
                    char(if ty.typlen() == 8 { 'd' } else { 'i' }),
                    char(if ty.typlen() > 0 { 'p' } else { 'x' }),
                    text(""),
                    // Postgres keeps NOT NULL on tables only; a view's columns never have it.
                    boolean(relation.relkind == 'r' && !field.is_nullable()),
                    boolean(has_default),
                    boolean(false),
                    text(""),
                    text(""),
                    boolean(false),
                    boolean(true),
                    int4(0),
                    int4(if collatable { 100 } else { 0 }),
                    null(),
                    null(),
                    null(),
                    null(),
                ])
            };
            for i in 0..fields.len() {
                attribute(relation.oid, i, i + 1)?;
            }
            if let Some(index) = source.key_oid('i', relation) {
                for (n, &i) in relation.info.primary_key.iter().enumerate() {
                    attribute(index, i, n + 1)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PgConstraint;

impl CatalogTable for PgConstraint {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("oid", kind::OID, false),
            utf8("conname"),
            oid_field("connamespace", kind::REGNAMESPACE, false),
            utf8("contype"),
            flag("condeferrable"),
            flag("condeferred"),
            flag("convalidated"),
            oid_field("conrelid", kind::REGCLASS, false),
            oid_field("contypid", kind::REGTYPE, false),
            oid_field("conindid", kind::REGCLASS, false),
            oid_field("conparentid", kind::OID, false),
            oid_field("confrelid", kind::REGCLASS, false),
            utf8("confupdtype"),
            utf8("confdeltype"),
            utf8("confmatchtype"),
            flag("conislocal"),
            int("coninhcount", DataType::Int16),
            flag("connoinherit"),
            super::int2_array_field("conkey"),
            super::int2_array_field("confkey"),
            utf8("conpfeqop"),
            utf8("conppeqop"),
            utf8("conffeqop"),
            utf8("confdelsetcols"),
            utf8("conexclop"),
            utf8("conbin"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in &snapshot.relations {
            let (Some(name), Some(oid), Some(index)) =
                (relation.key_name(), source.key_oid('c', relation), source.key_oid('i', relation))
            else {
                continue;
            };
            rows.push(vec![
                int4(oid),
                text(name),
                int4(relation.namespace),
                char('p'),
                boolean(false),
                boolean(false),
                boolean(true),
                int4(relation.oid),
                int4(0),
                int4(index),
                int4(0),
                int4(0),
                text(" "),
                text(" "),
                text(" "),
                boolean(true),
                int2(0),
                boolean(true),
                key_numbers(relation),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
            ])?;
        }
        Ok(())
    }
}

/// An `oid[]`/`oidvector` value.
fn oid_array(values: Vec<i32>) -> ScalarValue {
    let values: Vec<ScalarValue> = values.into_iter().map(int4).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Int32))
}

/// A primary key's column numbers (`attnum`s), in key order.
fn key_numbers(relation: &Relation) -> ScalarValue {
    int2_array(relation.info.primary_key.iter().map(|&i| i16::try_from(i + 1).unwrap_or(i16::MAX)))
}

#[derive(Debug)]
struct PgIndex;

impl CatalogTable for PgIndex {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("indexrelid", kind::REGCLASS, false),
            oid_field("indrelid", kind::REGCLASS, false),
            int("indnatts", DataType::Int16),
            int("indnkeyatts", DataType::Int16),
            flag("indisunique"),
            flag("indnullsnotdistinct"),
            flag("indisprimary"),
            flag("indisexclusion"),
            flag("indimmediate"),
            flag("indisclustered"),
            flag("indisvalid"),
            flag("indcheckxmin"),
            flag("indisready"),
            flag("indislive"),
            flag("indisreplident"),
            super::int2_array_field("indkey"),
            Field::new("indcollation", DataType::new_list(DataType::Int32, true), true),
            Field::new("indclass", DataType::new_list(DataType::Int32, true), true),
            // int2vector, as int2[] (subscripts from 1, not 0: JDBC's
            // `indoption[pos - 1]` reads NULL for the first column, which it
            // takes as ascending, as every key column here is).
            super::int2_array_field("indoption"),
            utf8("indexprs"),
            utf8("indpred"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in &snapshot.relations {
            let Some(index) = source.key_oid('i', relation) else { continue };
            let columns = i16::try_from(relation.info.primary_key.len()).unwrap_or(i16::MAX);
            rows.push(vec![
                int4(index),
                int4(relation.oid),
                int2(columns),
                int2(columns),
                boolean(true),
                boolean(false),
                boolean(true),
                boolean(false),
                boolean(true),
                boolean(false),
                boolean(true),
                boolean(false),
                boolean(true),
                boolean(true),
                boolean(false),
                key_numbers(relation),
                oid_array(vec![0; relation.info.primary_key.len()]),
                oid_array(vec![0; relation.info.primary_key.len()]),
                int2_array(vec![0; relation.info.primary_key.len()]),
                null(),
                null(),
            ])?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PgAttrdef;

impl CatalogTable for PgAttrdef {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            oid_field("oid", kind::OID, false),
            oid_field("adrelid", kind::REGCLASS, false),
            int("adnum", DataType::Int16),
            utf8("adbin"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        for relation in &snapshot.relations {
            for (column, expression) in &relation.info.defaults {
                let Some(i) = relation.info.schema.index_of(column).ok() else { continue };
                let oid = source.oids.get('d', &relation.schema, &format!("{}.{column}", relation.name));
                rows.push(vec![
                    int4(oid),
                    int4(relation.oid),
                    int2(i16::try_from(i + 1).unwrap_or(i16::MAX)),
                    text(expression),
                ])?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PgTables;

impl CatalogTable for PgTables {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            utf8("schemaname"),
            utf8("tablename"),
            utf8("tableowner"),
            utf8("tablespace"),
            flag("hasindexes"),
            flag("hasrules"),
            flag("hastriggers"),
            flag("rowsecurity"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        let access = source.access.snapshot();
        for relation in snapshot.relations.iter().filter(|r| r.relkind == 'r') {
            rows.push(vec![
                text(&relation.schema),
                text(&relation.name),
                text(source.owner(&access, relation).0),
                null(),
                boolean(!relation.info.primary_key.is_empty()),
                boolean(false),
                boolean(false),
                boolean(false),
            ])?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PgViews;

impl CatalogTable for PgViews {
    fn schema(&self) -> SchemaRef {
        schema(vec![utf8("schemaname"), utf8("viewname"), utf8("viewowner"), utf8("definition")])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        let access = source.access.snapshot();
        for relation in snapshot.relations.iter().filter(|r| r.relkind == 'v') {
            rows.push(vec![
                text(&relation.schema),
                text(&relation.name),
                text(source.owner(&access, relation).0),
                opt_text(relation.info.definition.clone()),
            ])?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PgMatviews;

impl CatalogTable for PgMatviews {
    fn schema(&self) -> SchemaRef {
        schema(vec![
            utf8("schemaname"),
            utf8("matviewname"),
            utf8("matviewowner"),
            utf8("tablespace"),
            flag("hasindexes"),
            flag("ispopulated"),
            utf8("definition"),
        ])
    }

    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()> {
        let access = source.access.snapshot();
        for relation in snapshot.relations.iter().filter(|r| r.relkind == 'm') {
            rows.push(vec![
                text(&relation.schema),
                text(&relation.name),
                text(source.owner(&access, relation).0),
                null(),
                boolean(false),
                boolean(true),
                opt_text(relation.info.definition.clone()),
            ])?;
        }
        Ok(())
    }
}

/// `pg_type` as the crate ships it, with the I/O function columns
/// (`typinput`, `typoutput`, `typreceive`, `typsend`, `typmodin`,
/// `typmodout`, `typanalyze`) as the `regproc` oids Postgres has instead of
/// names (0 for none): drivers compare them with 0 and join them to `pg_proc`.
pub(super) fn pg_type(pg_catalog: &Arc<dyn SchemaProvider>) -> Result<Arc<dyn TableProvider>> {
    let (types, procs) = futures::executor::block_on(async {
        let types = pg_catalog.table("pg_type").await?;
        let procs = pg_catalog.table("pg_proc").await?;
        Ok::<_, DataFusionError>((types, procs))
    })?;
    let (Some(types), Some(procs)) = (types, procs) else {
        return Err(DataFusionError::Internal("pg_catalog has no pg_type or pg_proc".into()));
    };
    let types = static_batches(&types)?;
    let procs = static_batches(&procs)?;
    let mut proc_oids = std::collections::HashMap::new();
    for batch in &procs {
        let (Some(oids), Some(names)) = (
            batch.column_by_name("oid").and_then(|c| c.as_any().downcast_ref::<Int32Array>()),
            batch.column_by_name("proname").and_then(|c| c.as_any().downcast_ref::<StringArray>()),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            proc_oids.entry(names.value(i).to_string()).or_insert(oids.value(i));
        }
    }
    let names: std::collections::HashMap<i32, String> =
        proc_oids.iter().map(|(name, oid)| (*oid, name.clone())).collect();
    let _ = super::PROC_NAMES.set(names);
    const FUNCTIONS: &[&str] =
        &["typinput", "typoutput", "typreceive", "typsend", "typmodin", "typmodout", "typanalyze"];
    let Some(first) = types.first() else {
        return Err(DataFusionError::Internal("pg_type is empty".into()));
    };
    let fields: Vec<Field> = first
        .schema()
        .fields()
        .iter()
        .map(|f| {
            if FUNCTIONS.contains(&f.name().as_str()) {
                oid_field(f.name(), kind::REGPROC, false)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut batches = Vec::with_capacity(types.len());
    for batch in types {
        let columns: Vec<ArrayRef> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                if !FUNCTIONS.contains(&field.name().as_str()) {
                    return Arc::clone(column);
                }
                let names = column.as_any().downcast_ref::<StringArray>();
                let oids: Int32Array = (0..column.len())
                    .map(|i| {
                        let name = names.filter(|n| !n.is_null(i)).map(|n| n.value(i)).unwrap_or("-");
                        Some(proc_oids.get(name).copied().unwrap_or(0))
                    })
                    .collect();
                Arc::new(oids) as ArrayRef
            })
            .collect();
        batches.push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
    }
    Ok(Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![batches])?))
}

/// The rows of one of the crate's static tables.
fn static_batches(table: &Arc<dyn TableProvider>) -> Result<Vec<RecordBatch>> {
    let memory = table
        .downcast_ref::<datafusion::datasource::MemTable>()
        .ok_or_else(|| DataFusionError::Internal("a static pg_catalog table is not in memory".into()))?;
    let mut batches = Vec::new();
    for partition in &memory.batches {
        let partition = partition
            .try_read()
            .map_err(|_| DataFusionError::Internal("a static pg_catalog table is locked".into()))?;
        batches.extend(partition.iter().cloned());
    }
    Ok(batches)
}
