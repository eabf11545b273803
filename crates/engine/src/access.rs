//! Who may do what: roles, their passwords, relation ownership and grants.
//!
//! ```text
//!   CREATE ROLE / GRANT / REVOKE (session) ──► Access ──► one checksummed file `access` at the
//!   privilege checks (session, Flight) ◄──── snapshot      warehouse root, replaced whole
//!   SCRAM login (server)                ◄──── (AccessState) by every change
//! ```
//!
//! The model is Postgres', cut to what a one-database server needs:
//!
//! - **Roles** with `LOGIN`, `SUPERUSER`, `CREATEROLE`, a password kept
//!   only as a SCRAM-SHA-256 [`Verifier`](scram::Verifier), and membership
//!   in other roles (`GRANT role TO role`; members inherit privileges).
//!   The bootstrap superuser [`BOOTSTRAP_SUPERUSER`] exists from the first
//!   start and cannot be dropped.
//! - **Relations** have an owner (who created them; the bootstrap superuser
//!   for relations created before roles existed) and grants of `SELECT`,
//!   `INSERT`, `UPDATE`, `DELETE` to roles or `PUBLIC`. The owner holds all
//!   four; a superuser passes every check.
//! - **Schemas** have an owner and grants of `CREATE` and `USAGE`; `public`
//!   is owned by the bootstrap superuser, and, as since Postgres 15, only
//!   its owner (or a role granted CREATE) creates relations in it.
//!
//! Every change is written to storage (synced: the warehouse store is
//! durable) before it is visible or acknowledged; a change is one put of
//! the whole state, so a crash leaves the state before or after it. The
//! engine bumps its catalog version on every change, which makes prepared
//! statements plan (and so check privileges) again: a REVOKE takes effect
//! for the next statement of every session.

pub mod scram;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, StatusCode};

/// The superuser that exists from the first start (Postgres' `postgres`),
/// owner of `public` and of relations created before roles existed.
pub const BOOTSTRAP_SUPERUSER: &str = "streamhouse";

/// Its oid, as in Postgres.
pub const BOOTSTRAP_OID: u32 = 10;

/// The pseudo-role every role is a member of.
pub const PUBLIC: &str = "public";

/// The file at the warehouse root that holds the state.
const FILE: &str = "access";

/// A privilege on a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Privilege {
    /// Read rows (queries, `COPY TO`, `SUBSCRIBE`, cursors, time travel, system tables of a table).
    Select,
    /// Add rows (`INSERT`, `COPY FROM`, ingest).
    Insert,
    /// Change rows.
    Update,
    /// Remove rows.
    Delete,
}

impl Privilege {
    /// All four, in Postgres' order.
    pub const ALL: [Privilege; 4] = [Privilege::Select, Privilege::Insert, Privilege::Update, Privilege::Delete];

    /// The SQL keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
        }
    }

    /// Postgres' aclitem letter.
    fn letter(self) -> char {
        match self {
            Privilege::Select => 'r',
            Privilege::Insert => 'a',
            Privilege::Update => 'w',
            Privilege::Delete => 'd',
        }
    }

    /// From a keyword, case-insensitively (`has_table_privilege`'s argument).
    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.keyword().eq_ignore_ascii_case(word.trim()))
    }
}

/// A privilege on a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SchemaPrivilege {
    /// Look up objects in it.
    Usage,
    /// Create relations in it.
    Create,
}

impl SchemaPrivilege {
    /// The SQL keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            SchemaPrivilege::Usage => "USAGE",
            SchemaPrivilege::Create => "CREATE",
        }
    }

    fn letter(self) -> char {
        match self {
            SchemaPrivilege::Usage => 'U',
            SchemaPrivilege::Create => 'C',
        }
    }
}

/// A role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Role {
    /// Its oid (`pg_roles.oid`).
    pub oid: u32,
    /// May log in.
    pub login: bool,
    /// Passes every privilege check.
    pub superuser: bool,
    /// May create, alter and drop roles that are not superusers.
    pub create_role: bool,
    /// The SCRAM-SHA-256 verifier of its password, Postgres' text form.
    pub password: Option<String>,
    /// Roles it is a member of (inherits their privileges).
    pub member_of: BTreeSet<String>,
}

/// Ownership and grants of one relation or schema. Grants are kept as
/// Postgres' aclitem letters per grantee (`r` SELECT, `a` INSERT, `w`
/// UPDATE, `d` DELETE; `U` USAGE, `C` CREATE).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
struct Acl {
    owner: String,
    grants: BTreeMap<String, String>,
}

impl Acl {
    fn owned_by(owner: &str) -> Self {
        Self { owner: owner.to_string(), grants: BTreeMap::new() }
    }

    fn has(&self, role: &str, letter: char) -> bool {
        self.grants.get(role).is_some_and(|l| l.contains(letter))
    }

    fn grant(&mut self, role: &str, letter: char) {
        let letters = self.grants.entry(role.to_string()).or_default();
        if !letters.contains(letter) {
            letters.push(letter);
            let mut sorted: Vec<char> = letters.chars().collect();
            sorted.sort_by_key(|c| "rawdUC".find(*c));
            *letters = sorted.into_iter().collect();
        }
    }

    fn revoke(&mut self, role: &str, letter: char) {
        if let Some(letters) = self.grants.get_mut(role) {
            letters.retain(|c| c != letter);
            if letters.is_empty() {
                self.grants.remove(role);
            }
        }
    }

    /// Postgres' `aclitem[]` text: `{owner=arwd/owner,reader=r/owner}`.
    fn acl_text(&self, all: &str) -> String {
        let mut items = vec![format!("{}={all}/{}", self.owner, self.owner)];
        for (role, letters) in &self.grants {
            let who = if role == PUBLIC { "" } else { role.as_str() };
            items.push(format!("{who}={letters}/{}", self.owner));
        }
        format!("{{{}}}", items.join(","))
    }
}

/// Everything [`Access`] stores, as one value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessState {
    roles: BTreeMap<String, Role>,
    next_oid: u32,
    /// By schema, then relation name.
    relations: BTreeMap<String, BTreeMap<String, Acl>>,
    schemas: BTreeMap<String, Acl>,
}

impl Default for AccessState {
    fn default() -> Self {
        let bootstrap = Role {
            oid: BOOTSTRAP_OID,
            login: true,
            superuser: true,
            create_role: true,
            password: None,
            member_of: BTreeSet::new(),
        };
        Self {
            roles: [(BOOTSTRAP_SUPERUSER.to_string(), bootstrap)].into(),
            next_oid: 16384,
            relations: BTreeMap::new(),
            schemas: BTreeMap::new(),
        }
    }
}

impl AccessState {
    /// The role named `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// All roles, by name.
    pub fn roles(&self) -> impl Iterator<Item = (&String, &Role)> {
        self.roles.iter()
    }

    /// Whether `role` is a superuser.
    pub fn is_superuser(&self, role: &str) -> bool {
        self.roles.get(role).is_some_and(|r| r.superuser)
    }

    /// `role`, the roles it is a member of (transitively) and `PUBLIC`.
    pub fn effective_roles(&self, role: &str) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = [role.to_string(), PUBLIC.to_string()].into();
        let mut todo = vec![role.to_string()];
        while let Some(next) = todo.pop() {
            if let Some(r) = self.roles.get(&next) {
                for parent in &r.member_of {
                    if out.insert(parent.clone()) {
                        todo.push(parent.clone());
                    }
                }
            }
        }
        out
    }

    /// Whether `member` is `role` or a member of it (`pg_has_role`).
    pub fn has_role(&self, member: &str, role: &str) -> bool {
        self.is_superuser(member) || self.effective_roles(member).contains(role)
    }

    /// The owner of a relation.
    pub fn owner(&self, schema: &str, name: &str) -> &str {
        self.relations.get(schema).and_then(|r| r.get(name)).map_or(BOOTSTRAP_SUPERUSER, |acl| acl.owner.as_str())
    }

    /// The owner of a schema.
    pub fn schema_owner(&self, schema: &str) -> &str {
        self.schemas.get(schema).map_or(BOOTSTRAP_SUPERUSER, |acl| acl.owner.as_str())
    }

    /// Whether `role` (through its memberships, or as owner or superuser) holds `privilege` on a relation.
    pub fn has_privilege(&self, role: &str, schema: &str, name: &str, privilege: Privilege) -> bool {
        if self.is_superuser(role) {
            return true;
        }
        let roles = self.effective_roles(role);
        let acl = self.relations.get(schema).and_then(|r| r.get(name));
        let owner = acl.map_or(BOOTSTRAP_SUPERUSER, |a| a.owner.as_str());
        roles.contains(owner) || acl.is_some_and(|acl| roles.iter().any(|r| acl.has(r, privilege.letter())))
    }

    /// Whether `role` holds `privilege` on a schema.
    pub fn has_schema_privilege(&self, role: &str, schema: &str, privilege: SchemaPrivilege) -> bool {
        if self.is_superuser(role) {
            return true;
        }
        let roles = self.effective_roles(role);
        let acl = self.schemas.get(schema);
        let owner = acl.map_or(BOOTSTRAP_SUPERUSER, |a| a.owner.as_str());
        if roles.contains(owner) {
            return true;
        }
        // As in Postgres, `public` (and every schema) is usable by everyone
        // unless revoked; only CREATE needs a grant.
        let granted = acl.is_some_and(|acl| roles.iter().any(|r| acl.has(r, privilege.letter())));
        granted || (privilege == SchemaPrivilege::Usage && acl.is_none_or(|acl| !acl.revoked_usage()))
    }

    /// Whether `role` owns the relation (directly, through membership, or as superuser).
    pub fn owns(&self, role: &str, schema: &str, name: &str) -> bool {
        self.is_superuser(role) || self.effective_roles(role).contains(self.owner(schema, name))
    }

    /// Whether `role` owns the schema.
    pub fn owns_schema(&self, role: &str, schema: &str) -> bool {
        self.is_superuser(role) || self.effective_roles(role).contains(self.schema_owner(schema))
    }

    /// `pg_class.relacl` of a relation; `None` while it has only its owner's default.
    pub fn relation_acl(&self, schema: &str, name: &str) -> Option<String> {
        let acl = self.relations.get(schema)?.get(name)?;
        (!acl.grants.is_empty()).then(|| acl.acl_text("arwd"))
    }

    /// `pg_namespace.nspacl` of a schema.
    pub fn schema_acl(&self, schema: &str) -> Option<String> {
        let acl = self.schemas.get(schema)?;
        (!acl.grants.is_empty()).then(|| acl.acl_text("UC"))
    }
}

impl Acl {
    /// `REVOKE USAGE ON SCHEMA s FROM PUBLIC` was run.
    fn revoked_usage(&self) -> bool {
        self.grants.get(PUBLIC).is_some_and(|l| l.contains('-'))
    }
}

/// Options of `CREATE ROLE` / `ALTER ROLE`; `None` leaves a value as it is
/// (ALTER) or takes the default (CREATE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleOptions {
    /// `LOGIN` / `NOLOGIN`.
    pub login: Option<bool>,
    /// `SUPERUSER` / `NOSUPERUSER`.
    pub superuser: Option<bool>,
    /// `CREATEROLE` / `NOCREATEROLE`.
    pub create_role: Option<bool>,
    /// `PASSWORD '…'` (`Some(None)`: `PASSWORD NULL`).
    pub password: Option<Option<String>>,
    /// `IN ROLE r, …`.
    pub in_roles: Vec<String>,
}

/// What a relation grant names: one relation, or all relations of schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationTarget {
    /// Schema.
    pub schema: String,
    /// Relation.
    pub name: String,
}

/// The roles, ownership and grants of a warehouse, loaded once and kept in
/// memory; every change is stored before it is applied.
#[derive(Debug)]
pub struct Access {
    store: Option<Arc<dyn ObjectStore>>,
    state: RwLock<Arc<AccessState>>,
    /// Serialises changes (read, change, store, publish).
    write: tokio::sync::Mutex<()>,
}

impl Access {
    /// State kept in memory only (engines without a warehouse).
    pub fn in_memory() -> Self {
        Self { store: None, state: RwLock::new(Arc::default()), write: tokio::sync::Mutex::new(()) }
    }

    /// Loads the state stored at the root of `store`, or starts with the
    /// bootstrap superuser alone.
    ///
    /// # Errors
    /// A damaged file (XX001, naming it) or a storage failure.
    pub async fn open(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let location = Path::from(FILE);
        let state = match object_store::ObjectStoreExt::get(&store, &location).await {
            Ok(got) => {
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| Error::new(StatusCode::Io, format!("cannot read {location}: {e}")))?;
                streamhouse_storage::frame::decode::<AccessState>(location.as_ref(), &bytes).map_err(Error::from)?
            }
            Err(object_store::Error::NotFound { .. }) => AccessState::default(),
            Err(e) => return Err(Error::new(StatusCode::Io, format!("cannot read {location}: {e}"))),
        };
        Ok(Self { store: Some(store), state: RwLock::new(Arc::new(state)), write: tokio::sync::Mutex::new(()) })
    }

    /// The current state: a consistent snapshot for any number of checks.
    pub fn snapshot(&self) -> Arc<AccessState> {
        Arc::clone(&self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Applies `change` to a copy of the state, stores the copy, then
    /// publishes it. Nothing changes when `change` fails or the store does.
    async fn update<T>(&self, change: impl FnOnce(&mut AccessState) -> Result<T>) -> Result<T> {
        let _guard = self.write.lock().await;
        let mut next = (*self.snapshot()).clone();
        let out = change(&mut next)?;
        if let Some(store) = &self.store {
            let bytes = streamhouse_storage::frame::encode(&next).map_err(Error::from)?;
            let location = Path::from(FILE);
            object_store::ObjectStoreExt::put(store, &location, bytes.into())
                .await
                .map_err(|e| Error::new(StatusCode::Io, format!("cannot write {location}: {e}")))?;
        }
        *self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        Ok(out)
    }

    /// Sets the bootstrap superuser's password if it has none yet; returns
    /// whether it did.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn set_bootstrap_password_once(&self, password: &str) -> Result<bool> {
        if self.snapshot().role(BOOTSTRAP_SUPERUSER).is_some_and(|r| r.password.is_some()) {
            return Ok(false);
        }
        let verifier = scram::Verifier::new(password).to_string();
        self.update(|state| {
            let role = state.roles.get_mut(BOOTSTRAP_SUPERUSER).ok_or_else(|| Error::internal("no bootstrap role"))?;
            if role.password.is_some() {
                return Ok(false);
            }
            role.password = Some(verifier);
            Ok(true)
        })
        .await
    }

    /// `CREATE ROLE name …` by `actor` (`None`: the embedded engine).
    ///
    /// # Errors
    /// 42710 when it exists, 42501 without CREATEROLE, 42704 for an unknown `IN ROLE`.
    pub async fn create_role(&self, actor: Option<&str>, name: &str, options: &RoleOptions) -> Result<()> {
        let verifier = password_verifier(options)?;
        self.update(|state| {
            may_manage_roles(state, actor, options.superuser == Some(true), "create")?;
            if state.roles.contains_key(name) || name == PUBLIC {
                return Err(Error::new(StatusCode::DuplicateObject, format!("role \"{name}\" already exists")));
            }
            for parent in &options.in_roles {
                known_role(state, parent)?;
            }
            let oid = state.next_oid;
            state.next_oid += 1;
            let role = Role {
                oid,
                login: options.login.unwrap_or(false),
                superuser: options.superuser.unwrap_or(false),
                create_role: options.create_role.unwrap_or(false),
                password: verifier.flatten(),
                member_of: options.in_roles.iter().cloned().collect(),
            };
            state.roles.insert(name.to_string(), role);
            Ok(())
        })
        .await
    }

    /// `ALTER ROLE name …`: a role may change its own password; other
    /// changes need CREATEROLE (superuser attributes need a superuser).
    ///
    /// # Errors
    /// 42704 for an unknown role, 42501 without the right.
    pub async fn alter_role(&self, actor: Option<&str>, name: &str, options: &RoleOptions) -> Result<()> {
        let verifier = password_verifier(options)?;
        self.update(|state| {
            let current = known_role(state, name)?.clone();
            let own_password_only = actor == Some(name)
                && options.login.is_none()
                && options.superuser.is_none()
                && options.create_role.is_none()
                && options.in_roles.is_empty();
            if !own_password_only {
                may_manage_roles(state, actor, current.superuser || options.superuser == Some(true), "alter")?;
            }
            if name == BOOTSTRAP_SUPERUSER && (options.superuser == Some(false) || options.login == Some(false)) {
                return Err(Error::new(
                    StatusCode::InsufficientPrivilege,
                    format!("the bootstrap superuser \"{BOOTSTRAP_SUPERUSER}\" must stay a superuser that can log in"),
                ));
            }
            let role = state.roles.get_mut(name).ok_or_else(|| Error::internal("role vanished"))?;
            if let Some(login) = options.login {
                role.login = login;
            }
            if let Some(superuser) = options.superuser {
                role.superuser = superuser;
            }
            if let Some(create_role) = options.create_role {
                role.create_role = create_role;
            }
            if let Some(verifier) = verifier {
                role.password = verifier;
            }
            Ok(())
        })
        .await
    }

    /// `DROP ROLE name`: refused while it owns relations or schemas (2BP01),
    /// as in Postgres; its grants and memberships go with it.
    ///
    /// # Errors
    /// 42704 unless `if_exists`, 42501 without the right, 2BP01 while it owns objects.
    pub async fn drop_role(&self, actor: Option<&str>, name: &str, if_exists: bool) -> Result<bool> {
        self.update(|state| {
            let Some(role) = state.roles.get(name) else {
                if if_exists {
                    return Ok(false);
                }
                return Err(unknown_role(name));
            };
            may_manage_roles(state, actor, role.superuser, "drop")?;
            if name == BOOTSTRAP_SUPERUSER {
                return Err(Error::new(
                    StatusCode::InsufficientPrivilege,
                    format!("the bootstrap superuser \"{BOOTSTRAP_SUPERUSER}\" cannot be dropped"),
                ));
            }
            if actor == Some(name) {
                return Err(Error::new(StatusCode::ObjectNotInPrerequisiteState, "current user cannot be dropped"));
            }
            let owned: Vec<String> = state
                .relations
                .iter()
                .flat_map(|(schema, relations)| {
                    relations.iter().filter(|(_, acl)| acl.owner == name).map(move |(n, _)| format!("{schema}.{n}"))
                })
                .chain(state.schemas.iter().filter(|(_, acl)| acl.owner == name).map(|(s, _)| format!("schema {s}")))
                .collect();
            if !owned.is_empty() {
                return Err(Error::new(
                    StatusCode::DependentObjectsStillExist,
                    format!(
                        "role \"{name}\" cannot be dropped because some objects depend on it: it owns {} (drop them \
                         or have a superuser drop them first)",
                        owned.join(", ")
                    ),
                ));
            }
            state.roles.remove(name);
            for role in state.roles.values_mut() {
                role.member_of.remove(name);
            }
            for acl in state.relations.values_mut().flat_map(BTreeMap::values_mut).chain(state.schemas.values_mut()) {
                acl.grants.remove(name);
            }
            Ok(true)
        })
        .await
    }

    /// `GRANT role TO member` / `REVOKE role FROM member`.
    ///
    /// # Errors
    /// 42704 for an unknown role, 42501 without the right, 0LP01-like
    /// 42P17 for a circular membership.
    pub async fn set_membership(&self, actor: Option<&str>, role: &str, member: &str, grant: bool) -> Result<()> {
        self.update(|state| {
            let target = known_role(state, role)?.clone();
            known_role(state, member)?;
            may_manage_roles(state, actor, target.superuser, "grant membership in")?;
            if grant && (role == member || state.effective_roles(role).contains(member)) {
                return Err(Error::new(
                    StatusCode::InvalidArgument,
                    format!("role \"{member}\" is a member of role \"{role}\": the membership would be circular"),
                ));
            }
            let entry = state.roles.get_mut(member).ok_or_else(|| Error::internal("role vanished"))?;
            if grant {
                entry.member_of.insert(role.to_string());
            } else {
                entry.member_of.remove(role);
            }
            Ok(())
        })
        .await
    }

    /// `GRANT | REVOKE privileges ON relations TO | FROM grantees` by `actor`,
    /// who must own every relation (or be a superuser).
    ///
    /// # Errors
    /// 42501 naming the first relation the actor does not own, 42704 for an unknown grantee.
    pub async fn set_relation_privileges(
        &self,
        actor: Option<&str>,
        relations: &[RelationTarget],
        privileges: &[Privilege],
        grantees: &[String],
        grant: bool,
    ) -> Result<()> {
        self.update(|state| {
            known_grantees(state, grantees)?;
            for target in relations {
                if let Some(actor) = actor
                    && !state.owns(actor, &target.schema, &target.name)
                {
                    return Err(Error::new(
                        StatusCode::InsufficientPrivilege,
                        format!(
                            "permission denied for table {}.{}: only its owner ({}) or a superuser may grant or \
                             revoke privileges on it",
                            target.schema,
                            target.name,
                            state.owner(&target.schema, &target.name)
                        ),
                    ));
                }
                let owner = state.owner(&target.schema, &target.name).to_string();
                let acl = state
                    .relations
                    .entry(target.schema.clone())
                    .or_default()
                    .entry(target.name.clone())
                    .or_insert_with(|| Acl::owned_by(&owner));
                for grantee in grantees {
                    for privilege in privileges {
                        if grant {
                            acl.grant(grantee, privilege.letter());
                        } else {
                            acl.revoke(grantee, privilege.letter());
                        }
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// `GRANT | REVOKE {CREATE | USAGE} ON SCHEMA s TO | FROM grantees`.
    ///
    /// # Errors
    /// 42501 unless the actor owns the schema, 42704 for an unknown grantee.
    pub async fn set_schema_privileges(
        &self,
        actor: Option<&str>,
        schema: &str,
        privileges: &[SchemaPrivilege],
        grantees: &[String],
        grant: bool,
    ) -> Result<()> {
        self.update(|state| {
            known_grantees(state, grantees)?;
            if let Some(actor) = actor
                && !state.owns_schema(actor, schema)
            {
                return Err(Error::new(
                    StatusCode::InsufficientPrivilege,
                    format!("permission denied for schema {schema}: only its owner or a superuser may grant on it"),
                ));
            }
            let owner = state.schema_owner(schema).to_string();
            let acl = state.schemas.entry(schema.to_string()).or_insert_with(|| Acl::owned_by(&owner));
            for grantee in grantees {
                for privilege in privileges {
                    match (privilege, grant, grantee.as_str()) {
                        // Usage is PUBLIC's by default: revoking it records the revocation.
                        (SchemaPrivilege::Usage, false, PUBLIC) => acl.grant(PUBLIC, '-'),
                        (SchemaPrivilege::Usage, true, PUBLIC) => acl.revoke(PUBLIC, '-'),
                        _ if grant => acl.grant(grantee, privilege.letter()),
                        _ => acl.revoke(grantee, privilege.letter()),
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Records that `owner` created a relation (replacing whatever a dropped
    /// relation of the same name left).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn relation_created(&self, schema: &str, name: &str, owner: &str) -> Result<()> {
        if owner == BOOTSTRAP_SUPERUSER && !self.has_entry(schema, name) {
            // The default owner, and nothing a dropped relation left: nothing to store.
            return Ok(());
        }
        self.update(|state| {
            state.relations.entry(schema.to_string()).or_default().insert(name.to_string(), Acl::owned_by(owner));
            Ok(())
        })
        .await
    }

    /// Forgets a dropped relation's owner and grants.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn relation_dropped(&self, schema: &str, name: &str) -> Result<()> {
        if !self.has_entry(schema, name) {
            return Ok(());
        }
        self.update(|state| {
            if let Some(relations) = state.relations.get_mut(schema) {
                relations.remove(name);
            }
            Ok(())
        })
        .await
    }

    /// Moves a renamed relation's owner and grants to its new name.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn relation_renamed(&self, schema: &str, name: &str, new_name: &str) -> Result<()> {
        if !self.has_entry(schema, name) && !self.has_entry(schema, new_name) {
            return Ok(());
        }
        self.update(|state| {
            let relations = state.relations.entry(schema.to_string()).or_default();
            match relations.remove(name) {
                Some(acl) => {
                    relations.insert(new_name.to_string(), acl);
                }
                None => {
                    relations.remove(new_name);
                }
            }
            Ok(())
        })
        .await
    }

    /// Records that `owner` created a schema.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn schema_created(&self, schema: &str, owner: &str) -> Result<()> {
        self.update(|state| {
            state.schemas.insert(schema.to_string(), Acl::owned_by(owner));
            Ok(())
        })
        .await
    }

    /// Forgets a dropped schema and its relations' grants.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn schema_dropped(&self, schema: &str) -> Result<()> {
        self.update(|state| {
            state.schemas.remove(schema);
            state.relations.remove(schema);
            Ok(())
        })
        .await
    }

    /// Whether a relation has an owner or grants recorded.
    fn has_entry(&self, schema: &str, name: &str) -> bool {
        self.snapshot().relations.get(schema).is_some_and(|r| r.contains_key(name))
    }
}

fn password_verifier(options: &RoleOptions) -> Result<Option<Option<String>>> {
    Ok(match &options.password {
        None => None,
        Some(None) => Some(None),
        Some(Some(password)) if password.is_empty() => {
            return Err(Error::new(
                StatusCode::InvalidParameterValue,
                "empty password: use PASSWORD NULL to remove a role's password",
            ));
        }
        // A verifier given as is (pg_dump's form) is stored as is.
        Some(Some(password)) if scram::Verifier::parse(password).is_some() => Some(Some(password.clone())),
        Some(Some(password)) => Some(Some(scram::Verifier::new(password).to_string())),
    })
}

/// 42704 for the first grantee that is neither a role nor PUBLIC.
fn known_grantees(state: &AccessState, grantees: &[String]) -> Result<()> {
    for grantee in grantees.iter().filter(|g| *g != PUBLIC) {
        known_role(state, grantee)?;
    }
    Ok(())
}

fn known_role<'a>(state: &'a AccessState, name: &str) -> Result<&'a Role> {
    state.roles.get(name).ok_or_else(|| unknown_role(name))
}

/// 42704.
pub fn unknown_role(name: &str) -> Error {
    Error::new(StatusCode::ObjectNotFound, format!("role \"{name}\" does not exist"))
}

/// Whether `actor` may create/alter/drop roles (`superuser_target`: a superuser role is involved).
fn may_manage_roles(state: &AccessState, actor: Option<&str>, superuser_target: bool, verb: &str) -> Result<()> {
    let Some(actor) = actor else { return Ok(()) };
    if state.is_superuser(actor) {
        return Ok(());
    }
    let create_role = state.role(actor).is_some_and(|r| r.create_role);
    if create_role && !superuser_target {
        return Ok(());
    }
    let needs = if superuser_target { "SUPERUSER" } else { "CREATEROLE" };
    Err(Error::new(
        StatusCode::InsufficientPrivilege,
        format!("permission denied to {verb} role: only roles with the {needs} attribute may {verb} such roles"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> RoleOptions {
        RoleOptions { login: Some(true), password: Some(Some("pw".into())), ..RoleOptions::default() }
    }

    #[tokio::test]
    async fn grants_flow_through_membership_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let access = Access::open(Arc::clone(&store)).await.unwrap();
        access.create_role(None, "readers", &RoleOptions::default()).await.unwrap();
        access.create_role(None, "alice", &opts()).await.unwrap();
        access.set_membership(None, "readers", "alice", true).await.unwrap();
        let t = RelationTarget { schema: "public".into(), name: "t".into() };
        access.set_relation_privileges(None, &[t], &[Privilege::Select], &["readers".into()], true).await.unwrap();
        let state = access.snapshot();
        assert!(state.has_privilege("alice", "public", "t", Privilege::Select));
        assert!(!state.has_privilege("alice", "public", "t", Privilege::Insert));
        assert!(state.has_privilege(BOOTSTRAP_SUPERUSER, "public", "t", Privilege::Insert));
        assert!(!state.has_schema_privilege("alice", "public", SchemaPrivilege::Create));
        assert!(state.has_schema_privilege("alice", "public", SchemaPrivilege::Usage));
        assert_eq!(state.relation_acl("public", "t").unwrap(), "{streamhouse=arwd/streamhouse,readers=r/streamhouse}");
        // Stored: a reopen sees the same state.
        let again = Access::open(store).await.unwrap();
        assert_eq!(*again.snapshot(), *state);
        let verifier = scram::Verifier::parse(again.snapshot().role("alice").unwrap().password.as_deref().unwrap());
        assert!(verifier.unwrap().matches_password("pw"));
        // A non-superuser without CREATEROLE cannot create roles; circular membership is refused.
        let e = access.create_role(Some("alice"), "bob", &opts()).await.unwrap_err();
        assert_eq!(e.code(), StatusCode::InsufficientPrivilege);
        let e = access.set_membership(None, "alice", "readers", true).await.unwrap_err();
        assert_eq!(e.code(), StatusCode::InvalidArgument);
        // Owning something blocks DROP ROLE.
        access.relation_created("public", "mine", "alice").await.unwrap();
        let e = access.drop_role(None, "alice", false).await.unwrap_err();
        assert_eq!(e.code(), StatusCode::DependentObjectsStillExist, "{e}");
        access.relation_dropped("public", "mine").await.unwrap();
        assert!(access.drop_role(None, "alice", false).await.unwrap());
        assert!(!access.drop_role(None, "alice", true).await.unwrap());
        let e = access.drop_role(None, BOOTSTRAP_SUPERUSER, false).await.unwrap_err();
        assert_eq!(e.code(), StatusCode::InsufficientPrivilege);
    }
}
