//! `pg_roles`, `pg_user`, `pg_authid` and `pg_auth_members`, from the
//! roles in [`crate::access`]. Passwords show as `********` except in
//! `pg_authid`, which only superusers may read (the session checks that).

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result;
use datafusion_pg_catalog::pg_catalog::oid_field::{kind, oid_field};
use std::sync::Arc;

use super::value::{boolean, int4, null, opt_text, text};
use super::{CatalogTable, CatalogTableObject, Rows, Snapshot, Source};

/// The tables, by name.
pub(super) fn all() -> Vec<(&'static str, Box<dyn CatalogTableObject>)> {
    vec![
        ("pg_roles", Box::new(PgRoles { authid: false })),
        ("pg_authid", Box::new(PgRoles { authid: true })),
        ("pg_user", Box::new(PgUser)),
        ("pg_shadow", Box::new(PgUser)),
        ("pg_auth_members", Box::new(PgAuthMembers)),
    ]
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn flag(name: &str) -> Field {
    Field::new(name, DataType::Boolean, true)
}

/// `pg_roles` (password masked) or `pg_authid` (the verifier).
#[derive(Debug)]
struct PgRoles {
    authid: bool,
}

impl CatalogTable for PgRoles {
    fn schema(&self) -> SchemaRef {
        let mut fields = vec![
            utf8("rolname"),
            flag("rolsuper"),
            flag("rolinherit"),
            flag("rolcreaterole"),
            flag("rolcreatedb"),
            flag("rolcanlogin"),
            flag("rolreplication"),
            Field::new("rolconnlimit", DataType::Int32, true),
            utf8("rolpassword"),
            Field::new(
                "rolvaliduntil",
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            flag("rolbypassrls"),
            Field::new("rolconfig", DataType::new_list(DataType::Utf8, true), true),
            oid_field("oid", kind::OID, false),
        ];
        if self.authid {
            // pg_authid has oid first and no rolconfig.
            fields.retain(|f| f.name() != "rolconfig");
            let oid = fields.pop().expect("oid");
            fields.insert(0, oid);
        }
        Arc::new(Schema::new(fields))
    }

    fn rows(&self, source: &Source, _: &Snapshot, rows: &mut Rows) -> Result<()> {
        let access = source.access.snapshot();
        for (name, role) in access.roles() {
            let password = match (&role.password, self.authid) {
                (Some(verifier), true) => text(verifier),
                (Some(_), false) => text("********"),
                (None, _) => null(),
            };
            let oid = int4(role.oid as i32);
            let mut row = vec![
                text(name),
                boolean(role.superuser),
                boolean(true),
                boolean(role.create_role || role.superuser),
                boolean(role.superuser),
                boolean(role.login),
                boolean(role.superuser),
                int4(-1),
                password,
                null(),
                boolean(role.superuser),
                null(),
                oid.clone(),
            ];
            if self.authid {
                row.remove(11);
                row.pop();
                row.insert(0, oid);
            }
            rows.push(row)?;
        }
        Ok(())
    }
}

/// `pg_user`: roles that can log in.
#[derive(Debug)]
struct PgUser;

impl CatalogTable for PgUser {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            utf8("usename"),
            oid_field("usesysid", kind::OID, false),
            flag("usecreatedb"),
            flag("usesuper"),
            flag("userepl"),
            flag("usebypassrls"),
            utf8("passwd"),
            Field::new(
                "valuntil",
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("useconfig", DataType::new_list(DataType::Utf8, true), true),
        ]))
    }

    fn rows(&self, source: &Source, _: &Snapshot, rows: &mut Rows) -> Result<()> {
        let access = source.access.snapshot();
        for (name, role) in access.roles().filter(|(_, r)| r.login) {
            rows.push(vec![
                text(name),
                int4(role.oid as i32),
                boolean(role.superuser),
                boolean(role.superuser),
                boolean(role.superuser),
                boolean(role.superuser),
                opt_text(role.password.as_ref().map(|_| "********")),
                null(),
                null(),
            ])?;
        }
        Ok(())
    }
}

/// `pg_auth_members`: who is a member of which role.
#[derive(Debug)]
struct PgAuthMembers;

impl CatalogTable for PgAuthMembers {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            oid_field("oid", kind::OID, false),
            oid_field("roleid", kind::OID, false),
            oid_field("member", kind::OID, false),
            oid_field("grantor", kind::OID, false),
            flag("admin_option"),
            flag("inherit_option"),
            flag("set_option"),
        ]))
    }

    fn rows(&self, source: &Source, _: &Snapshot, rows: &mut Rows) -> Result<()> {
        let access = source.access.snapshot();
        let mut n = 0;
        for (_, member) in access.roles() {
            for parent in &member.member_of {
                let Some(role) = access.role(parent) else { continue };
                n += 1;
                rows.push(vec![
                    int4(20000 + n),
                    int4(role.oid as i32),
                    int4(member.oid as i32),
                    int4(crate::access::BOOTSTRAP_OID as i32),
                    boolean(false),
                    boolean(true),
                    boolean(true),
                ])?;
            }
        }
        Ok(())
    }
}
