//! Session control: `SET`/`RESET`/`SHOW` of run-time parameters (mirrored
//! into DataFusion's settings where they change results), and the
//! transaction block (`BEGIN`, `COMMIT`, `ROLLBACK`, `SET LOCAL`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{RecordBatch, StringArray};

use super::{
    CommandComplete, NoticeSeverity, Output, Session, TransactionChange, TransactionStatus, batch_stream, text_schema,
    variables,
};
use crate::error::{Error, Result, StatusCode};
use crate::sql::Statement;

/// A savepoint of the open transaction block. Every statement commits on
/// its own, so rolling back to a savepoint is exact only when nothing was
/// written since; otherwise it says what it cannot undo (as ROLLBACK does).
#[derive(Debug, Clone)]
pub(super) struct Savepoint {
    name: String,
    /// Writes of the block when it was set.
    writes: u64,
    /// `SET LOCAL`s of the block when it was set.
    locals: usize,
}

/// The name `SHOW` reports a parameter under (Postgres' spelling, lower-cased).
pub(super) fn show_name(name: &str) -> String {
    variables::canonical_name(name).to_ascii_lowercase()
}

impl Session {
    /// SET, RESET, SHOW, BEGIN, COMMIT, ROLLBACK, DISCARD and the accepted no-ops.
    pub(super) fn control(&mut self, statement: &Statement) -> Result<Output> {
        let status = self.transaction_status();
        match statement {
            Statement::Set { name, value, local } => {
                self.set_variable(name, value, *local)?;
                Ok(Output::Command(CommandComplete::new("SET")))
            }
            Statement::Reset(name) => {
                match name {
                    Some(name) if datafusion_option(name).is_some() => self.reset_datafusion(Some(name))?,
                    Some(name) => {
                        let canonical = self.vars.write().map_err(lock_err)?.reset(name)?;
                        self.apply_to_datafusion(&canonical, None)?;
                    }
                    None => {
                        // As in Postgres, RESET ALL keeps the role (DISCARD ALL resets it).
                        self.vars.write().map_err(lock_err)?.reset_all();
                        self.reset_datafusion(None)?;
                        self.apply_to_datafusion("TimeZone", None)?;
                    }
                }
                Ok(Output::Command(CommandComplete::new("RESET")))
            }
            Statement::Show(name) => {
                let name = show_name(name);
                let value = self.show_variable(&name)?;
                let schema = text_schema(&[name.as_str()]);
                let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(vec![value]))])?;
                Ok(Output::Rows(batch_stream(schema, vec![batch])))
            }
            Statement::ShowAll => {
                let rows = self.vars.read().map_err(lock_err)?.all();
                let schema = text_schema(&["name", "setting", "description"]);
                let column = |i: usize| {
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| match i {
                        0 => r.0.as_str(),
                        1 => r.1.as_str(),
                        _ => r.2.as_str(),
                    }))) as _
                };
                let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column(0), column(1), column(2)])?;
                Ok(Output::Rows(batch_stream(schema, vec![batch])))
            }
            Statement::Begin => {
                if status == TransactionStatus::InBlock {
                    self.notice(NoticeSeverity::Warning, "there is already a transaction in progress");
                    return Ok(Output::Command(CommandComplete::new("BEGIN")));
                }
                self.txn.store(TransactionStatus::InBlock as u8, Ordering::SeqCst);
                self.writes_in_block = 0;
                Ok(Output::Command(CommandComplete {
                    transaction: Some(TransactionChange::Begin),
                    ..CommandComplete::new("BEGIN")
                }))
            }
            Statement::Commit | Statement::Rollback => {
                let rollback = matches!(statement, Statement::Rollback) || status == TransactionStatus::Failed;
                if status == TransactionStatus::Idle {
                    self.notice(NoticeSeverity::Warning, "there is no transaction in progress");
                } else if rollback && self.writes_in_block > 0 {
                    self.notice(
                        NoticeSeverity::Warning,
                        format!(
                            "ROLLBACK cannot undo the {} statement(s) of this block that already succeeded: \
                             streamhouse commits every statement on its own",
                            self.writes_in_block
                        ),
                    );
                }
                self.end_block()?;
                // Cursors end with the block, unless declared WITH HOLD.
                self.cursors.lock().map_err(lock_err)?.retain(|_, c| c.hold);
                Ok(Output::Command(CommandComplete {
                    transaction: Some(TransactionChange::End),
                    ..CommandComplete::new(if rollback { "ROLLBACK" } else { "COMMIT" })
                }))
            }
            Statement::Savepoint(name) => {
                if status == TransactionStatus::Idle {
                    return Err(Error::new(
                        StatusCode::NoActiveTransaction,
                        "SAVEPOINT can only be used in transaction blocks",
                    ));
                }
                self.savepoints.push(Savepoint {
                    name: name.clone(),
                    writes: self.writes_in_block,
                    locals: self.local_restore.len(),
                });
                Ok(Output::Command(CommandComplete::new("SAVEPOINT")))
            }
            Statement::Release(name) => {
                let at = self.savepoint(name, status, "RELEASE SAVEPOINT")?;
                self.savepoints.truncate(at);
                Ok(Output::Command(CommandComplete::new("RELEASE")))
            }
            Statement::RollbackTo(name) => {
                let at = self.savepoint(name, status, "ROLLBACK TO SAVEPOINT")?;
                let Savepoint { writes, locals, .. } = self.savepoints[at];
                // The savepoint stays; the ones after it go.
                self.savepoints.truncate(at + 1);
                let since = self.writes_in_block.saturating_sub(writes);
                if since > 0 {
                    self.notice(
                        NoticeSeverity::Warning,
                        format!(
                            "ROLLBACK TO SAVEPOINT cannot undo the {since} statement(s) that succeeded since                              savepoint \"{name}\": streamhouse commits every statement on its own"
                        ),
                    );
                }
                self.writes_in_block = writes;
                self.restore_locals(locals)?;
                // An error after the savepoint is forgiven, as in Postgres.
                self.txn.store(TransactionStatus::InBlock as u8, Ordering::SeqCst);
                Ok(Output::Command(CommandComplete::new("ROLLBACK")))
            }
            Statement::Discard => {
                self.reset_role()?;
                self.vars.write().map_err(lock_err)?.reset_all();
                self.apply_to_datafusion("TimeZone", None)?;
                Ok(Output::Command(CommandComplete::new("DISCARD ALL")))
            }
            Statement::NoOp(tag) => Ok(Output::Command(CommandComplete::new(*tag))),
            _ => Err(Error::internal("not a session control statement")),
        }
    }

    pub(super) fn end_block(&mut self) -> Result<()> {
        self.txn.store(TransactionStatus::Idle as u8, Ordering::SeqCst);
        self.writes_in_block = 0;
        self.savepoints.clear();
        self.restore_locals(0)
    }

    /// The position of savepoint `name` (the latest of that name), for `command`.
    fn savepoint(&self, name: &str, status: TransactionStatus, command: &str) -> Result<usize> {
        if status == TransactionStatus::Idle {
            return Err(Error::new(
                StatusCode::NoActiveTransaction,
                format!("{command} can only be used in transaction blocks"),
            ));
        }
        self.savepoints
            .iter()
            .rposition(|s| s.name == name)
            .ok_or_else(|| Error::new(StatusCode::InvalidSavepoint, format!("savepoint \"{name}\" does not exist")))
    }

    /// Undoes the `SET LOCAL`s after the first `keep`.
    fn restore_locals(&mut self, keep: usize) -> Result<()> {
        let undo = if keep < self.local_restore.len() { self.local_restore.split_off(keep) } else { vec![] };
        for (name, previous) in undo.into_iter().rev() {
            match previous {
                Some(value) => {
                    self.vars.write().map_err(lock_err)?.set(&name, &value)?;
                    self.apply_to_datafusion(&name, Some(&value))?;
                }
                None => {
                    self.vars.write().map_err(lock_err)?.reset(&name)?;
                    self.apply_to_datafusion(&name, None)?;
                }
            }
        }
        Ok(())
    }

    fn set_variable(&mut self, name: &str, value: &str, local: bool) -> Result<()> {
        self.check_setting_allowed(name, value)?;
        if let Some(option) = datafusion_option(name) {
            let state_ref = self.ctx.state_ref();
            let mut state = state_ref.write();
            return state.config_mut().options_mut().set(option, value).map_err(|e| {
                let err = Error::from(e);
                Error::new(StatusCode::InvalidParameterValue, err.message().to_string())
            });
        }
        if local && self.transaction_status() == TransactionStatus::Idle {
            self.notice(NoticeSeverity::Warning, "SET LOCAL can only be used in transaction blocks");
            return Ok(());
        }
        let previous = self.variable(name);
        let (canonical, value) = self.vars.write().map_err(lock_err)?.set(name, value)?;
        if local {
            self.local_restore.push((canonical.clone(), previous));
        }
        self.apply_to_datafusion(&canonical, Some(&value))
    }

    /// Non-superusers change only the documented session parameters:
    /// `datafusion.*` options (which can change how much of the server a
    /// query takes) are for superusers, and `memory_limit` is capped at
    /// the server's `execution.memory_limit`.
    fn check_setting_allowed(&self, name: &str, value: &str) -> Result<()> {
        let Some(role) = self.restricted_role() else { return Ok(()) };
        if datafusion_option(name).is_some() {
            return Err(Error::new(
                StatusCode::InsufficientPrivilege,
                format!(
                    "permission denied to set parameter \"{name}\": DataFusion options are for superusers (role \
                     \"{role}\" is not one); sessions may set statement_timeout, TimeZone, application_name, \
                     memory_limit, execution_mode and the other parameters SHOW ALL lists"
                ),
            ));
        }
        if variables::canonical_name(name).eq_ignore_ascii_case("memory_limit")
            && let Some(cap) = self.engine.config().memory_limit.bytes()
        {
            let asked = crate::config::ByteSize::parse(value).ok().map(|size| size.bytes());
            if let Some(asked) = asked
                && asked.is_none_or(|bytes| bytes > cap)
            {
                return Err(Error::new(
                    StatusCode::InsufficientPrivilege,
                    format!(
                        "permission denied to set memory_limit to {value}: above the server's execution.memory_limit \
                         ({cap} bytes), which only a superuser may exceed"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Restores a `datafusion.*` option (`None`: all of them) to the value
    /// every session starts with, keeping this session's other values.
    fn reset_datafusion(&self, option: Option<&str>) -> Result<()> {
        let mut restored = self.engine.inner().base.state().config().options().as_ref().clone();
        let state_ref = self.ctx.state_ref();
        let mut state = state_ref.write();
        let options = state.config_mut().options_mut();
        if let Some(option) = option {
            if !restored.entries().iter().any(|e| e.key.eq_ignore_ascii_case(option)) {
                return Err(Error::new(
                    StatusCode::ObjectNotFound,
                    format!("unrecognized configuration parameter \"{option}\""),
                ));
            }
            for current in options.entries() {
                if !current.key.eq_ignore_ascii_case(option)
                    && let Some(value) = &current.value
                {
                    restored.set(&current.key, value)?;
                }
            }
        }
        *options = restored;
        Ok(())
    }

    /// Mirrors parameters that change query results into DataFusion's settings.
    fn apply_to_datafusion(&self, canonical: &str, value: Option<&str>) -> Result<()> {
        if canonical.eq_ignore_ascii_case("TimeZone") {
            let tz = match value {
                None => None,
                Some(v) if v.eq_ignore_ascii_case("utc") || v.eq_ignore_ascii_case("default") => None,
                Some(v) => {
                    let tz = if v.eq_ignore_ascii_case("local") { "UTC" } else { v };
                    tz.parse::<datafusion::arrow::array::timezone::Tz>().map_err(|_| {
                        Error::new(
                            StatusCode::InvalidParameterValue,
                            format!("invalid value for parameter \"TimeZone\": \"{v}\""),
                        )
                    })?;
                    Some(tz.to_string())
                }
            };
            self.ctx.state_ref().write().config_mut().options_mut().execution.time_zone = tz;
        }
        Ok(())
    }

    fn show_variable(&self, name: &str) -> Result<String> {
        if let Some(option) = datafusion_option(name) {
            let state = self.ctx.state();
            return state
                .config()
                .options()
                .entries()
                .into_iter()
                .find(|e| e.key.eq_ignore_ascii_case(option))
                .map(|e| e.value.unwrap_or_default())
                .ok_or_else(|| {
                    Error::new(StatusCode::ObjectNotFound, format!("unrecognized configuration parameter \"{name}\""))
                });
        }
        self.variable(name).ok_or_else(|| {
            Error::new(StatusCode::ObjectNotFound, format!("unrecognized configuration parameter \"{name}\""))
        })
    }
}

pub(super) fn lock_err<T>(_: T) -> Error {
    Error::internal("session variables lock poisoned")
}

fn datafusion_option(name: &str) -> Option<&str> {
    name.len()
        .gt(&"datafusion.".len())
        .then_some(name)
        .filter(|n| n[.."datafusion.".len()].eq_ignore_ascii_case("datafusion."))
}
