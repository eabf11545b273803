//! `CREATE | ALTER | DROP ROLE`, `GRANT`, `REVOKE`: carried out by
//! [`crate::access::Access`], which checks who may do them and stores them.

use super::{CommandComplete, NoticeSeverity, Output, Session};
use crate::access::{RelationTarget, RoleOptions};
use crate::error::{Error, Result};
use crate::sql::{Grant, Granted};

impl Session {
    /// Registers what depends on who the session is: `current_user`, the
    /// privilege functions, and `table_as_of`'s check.
    pub(super) fn install_identity(&self) {
        let user = self.info.user.clone();
        self.ctx.register_udf(crate::engine::constant_text_udf("current_user", user.clone()));
        for udf in self.engine.inner().relation_oids.privilege_functions(&user, self.info.role.is_some()) {
            self.ctx.register_udf(udf);
        }
        let time_travel = crate::time_travel::TableAsOf::new(std::sync::Arc::clone(self.engine.catalog()));
        let time_travel = match self.info.role {
            // `table_as_of('t', …)` needs SELECT on `t`.
            Some(_) => time_travel.with_check(std::sync::Arc::new(self.table_as_of_check())),
            None => time_travel,
        };
        self.ctx.register_udtf("table_as_of", std::sync::Arc::new(time_travel));
        let viewer = crate::queries::QueryViewer {
            role: self.info.role.clone(),
            access: std::sync::Arc::clone(self.engine.access()),
        };
        self.ctx.state_ref().write().config_mut().set_extension(std::sync::Arc::new(viewer));
    }

    /// Back to the login role, if `SET ROLE` changed it (DISCARD ALL).
    pub(super) fn reset_role(&mut self) -> Result<()> {
        if self.info.role != self.login.1 || self.info.user != self.login.0 {
            self.set_role(None)?;
        }
        Ok(())
    }

    /// `SET ROLE r`: statements run with `r`'s privileges; the login must be
    /// a member of `r` (or a superuser). `SET ROLE NONE` / `RESET ROLE` go back.
    pub(super) fn set_role(&mut self, role: Option<&str>) -> Result<Output> {
        let (login_user, login_role) = self.login.clone();
        match role {
            None => {
                self.info.user = login_user;
                self.info.role = login_role;
            }
            Some(role) => {
                let state = self.engine.access().snapshot();
                if state.role(role).is_none() {
                    return Err(crate::access::unknown_role(role));
                }
                if let Some(login) = &login_role
                    && !state.has_role(login, role)
                {
                    return Err(Error::new(
                        crate::error::StatusCode::InsufficientPrivilege,
                        format!("permission denied to set role \"{role}\": role \"{login}\" is not a member of it"),
                    ));
                }
                self.info.user = role.to_string();
                self.info.role = Some(role.to_string());
            }
        }
        self.install_identity();
        // Plans prepared under the other role are checked again.
        self.engine.bump_catalog_version();
        Ok(Output::Command(CommandComplete::new("SET")))
    }

    /// `current_user` / `session_user` in a role position: this session's user.
    fn resolve_role(&self, name: &str) -> String {
        match name {
            "current_user" | "session_user" => self.info.user.clone(),
            other => other.to_string(),
        }
    }

    pub(super) async fn create_role(
        &mut self,
        name: &str,
        if_not_exists: bool,
        options: &RoleOptions,
    ) -> Result<Output> {
        let access = self.engine.access();
        if if_not_exists && access.snapshot().role(name).is_some() {
            self.notice(NoticeSeverity::Notice, format!("role \"{name}\" already exists, skipping"));
        } else {
            access.create_role(self.checked_role(), name, options).await?;
        }
        Ok(Output::Command(CommandComplete::new("CREATE ROLE")))
    }

    pub(super) async fn alter_role(&mut self, name: &str, options: &RoleOptions) -> Result<Output> {
        let name = self.resolve_role(name);
        self.engine.access().alter_role(self.checked_role(), &name, options).await?;
        self.engine.bump_catalog_version();
        Ok(Output::Command(CommandComplete::new("ALTER ROLE")))
    }

    pub(super) async fn drop_roles(&mut self, names: &[String], if_exists: bool) -> Result<Output> {
        for name in names {
            let dropped = self.engine.access().drop_role(self.checked_role(), name, if_exists).await;
            self.engine.bump_catalog_version();
            if !dropped? {
                self.notice(NoticeSeverity::Notice, format!("role \"{name}\" does not exist, skipping"));
            }
        }
        Ok(Output::Command(CommandComplete::new("DROP ROLE")))
    }

    pub(super) async fn grant(&mut self, grant: &Grant) -> Result<Output> {
        let access = std::sync::Arc::clone(self.engine.access());
        let actor = self.checked_role();
        let grantees: Vec<String> = grant.grantees.iter().map(|g| self.resolve_role(g)).collect();
        let catalog = self.engine.catalog();
        let result = match &grant.what {
            Granted::Relations { privileges, relations } => {
                let mut targets = Vec::with_capacity(relations.len());
                for reference in relations {
                    let name = self.relation_name(reference)?;
                    if catalog.relation_kind(&name).is_none() {
                        return Err(crate::catalog::errors::relation_not_found(&name, crate::sql::RelationKind::Table));
                    }
                    targets.push(RelationTarget { schema: name.schema, name: name.name });
                }
                access.set_relation_privileges(actor, &targets, privileges, &grantees, grant.grant).await
            }
            Granted::AllTablesIn { privileges, schemas } => {
                let mut targets = Vec::new();
                for schema in schemas {
                    if !catalog.schema_names().contains(schema) {
                        return Err(crate::catalog::errors::schema_not_found(schema));
                    }
                    targets.extend(
                        catalog
                            .relation_names(schema)
                            .into_iter()
                            .map(|name| RelationTarget { schema: schema.clone(), name }),
                    );
                }
                access.set_relation_privileges(actor, &targets, privileges, &grantees, grant.grant).await
            }
            Granted::Schemas { privileges, schemas } => {
                for schema in schemas {
                    if !catalog.schema_names().contains(schema) {
                        return Err(crate::catalog::errors::schema_not_found(schema));
                    }
                    access.set_schema_privileges(actor, schema, privileges, &grantees, grant.grant).await?;
                }
                Ok(())
            }
            Granted::Roles(roles) => {
                for role in roles {
                    let role = self.resolve_role(role);
                    for member in &grantees {
                        if member == crate::access::PUBLIC {
                            return Err(Error::invalid("role memberships cannot be granted to PUBLIC"));
                        }
                        access.set_membership(actor, &role, member, grant.grant).await?;
                    }
                }
                Ok(())
            }
        };
        // Prepared statements plan (and so check privileges) again.
        self.engine.bump_catalog_version();
        result?;
        Ok(Output::Command(CommandComplete::new(if grant.grant { "GRANT" } else { "REVOKE" })))
    }
}
