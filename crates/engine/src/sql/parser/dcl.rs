//! Roles and privileges: `CREATE | ALTER | DROP ROLE | USER`, `GRANT`,
//! `REVOKE`, in Postgres' grammar (the parts a one-database server has;
//! the rest is 0A000 naming the clause).

use datafusion::sql::sqlparser::tokenizer::Token;

use super::super::statement::{Grant, Granted, Privilege, RoleOptions, SchemaPrivilege, Statement};
use super::super::{ident_value, table_reference};
use super::{DialectParser, is_word};
use crate::error::{Error, Result};

impl DialectParser<'_> {
    /// `CREATE ROLE | USER | GROUP` is next (CREATE not consumed).
    pub(super) fn create_role_ahead(&self) -> bool {
        ["role", "user", "group"].iter().any(|w| is_word(self.parser.peek_nth_token_ref(1), w))
            && !is_word(self.parser.peek_nth_token_ref(2), "mapping")
    }

    /// `ALTER | DROP ROLE | USER | GROUP` is next (the verb not consumed).
    pub(super) fn role_statement_ahead(&self) -> bool {
        ["role", "user", "group"].iter().any(|w| is_word(self.parser.peek_nth_token_ref(1), w))
            && !is_word(self.parser.peek_nth_token_ref(2), "mapping")
    }

    fn word_is(&self, word: &str) -> bool {
        is_word(self.parser.peek_token_ref(), word)
    }

    fn take_word(&mut self, word: &str) -> bool {
        if self.word_is(word) {
            self.parser.next_token();
            return true;
        }
        false
    }

    fn at_end(&self) -> bool {
        matches!(self.parser.peek_token_ref().token, Token::EOF | Token::SemiColon)
    }

    fn role_name(&mut self) -> Result<String> {
        Ok(ident_value(&self.parser.parse_identifier()?))
    }

    /// `CREATE` (next) `ROLE | USER | GROUP [IF NOT EXISTS] name [[WITH] options]`.
    pub(super) fn create_role(&mut self) -> Result<Statement> {
        self.parser.next_token();
        let user = self.take_word("user");
        if !user && !self.take_word("role") {
            self.take_word("group");
        }
        let if_not_exists = self.take_word("if") && {
            if !(self.take_word("not") && self.take_word("exists")) {
                return self.parser.expected_ref("NOT EXISTS", self.parser.peek_token_ref())?;
            }
            true
        };
        let name = self.role_name()?;
        let mut options = self.role_options()?;
        if user && options.login.is_none() {
            options.login = Some(true);
        }
        Ok(Statement::CreateRole { name, if_not_exists, options })
    }

    /// `ALTER` (next) `ROLE | USER | GROUP name [WITH] options`.
    pub(super) fn alter_role(&mut self) -> Result<Statement> {
        self.parser.next_token();
        self.parser.next_token();
        let name = match &self.parser.peek_token_ref().token {
            Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("current_user") => {
                self.parser.next_token();
                "current_user".to_string()
            }
            _ => self.role_name()?,
        };
        if self.word_is("rename") || self.word_is("set") || self.word_is("reset") {
            return Err(Error::unsupported(format!(
                "ALTER ROLE … {} is not supported: ALTER ROLE changes LOGIN, SUPERUSER, CREATEROLE and PASSWORD",
                self.parser.peek_token_ref()
            )));
        }
        let options = self.role_options()?;
        Ok(Statement::AlterRole { name, options })
    }

    /// `DROP` (next) `ROLE | USER | GROUP [IF EXISTS] name, …`.
    pub(super) fn drop_role(&mut self) -> Result<Statement> {
        self.parser.next_token();
        self.parser.next_token();
        let if_exists = self.take_word("if") && {
            if !self.take_word("exists") {
                return self.parser.expected_ref("EXISTS", self.parser.peek_token_ref())?;
            }
            true
        };
        let mut names = vec![self.role_name()?];
        while self.parser.consume_token(&Token::Comma) {
            names.push(self.role_name()?);
        }
        Ok(Statement::DropRole { names, if_exists })
    }

    /// `[WITH] option …` up to the end of the statement.
    fn role_options(&mut self) -> Result<RoleOptions> {
        let mut options = RoleOptions::default();
        self.take_word("with");
        while !self.at_end() {
            let token = self.parser.next_token();
            let Token::Word(word) = &token.token else {
                return self.parser.expected("a role option (LOGIN, SUPERUSER, CREATEROLE, PASSWORD …)", token)?;
            };
            match word.value.to_ascii_lowercase().as_str() {
                "login" => options.login = Some(true),
                "nologin" => options.login = Some(false),
                "superuser" => options.superuser = Some(true),
                "nosuperuser" => options.superuser = Some(false),
                "createrole" => options.create_role = Some(true),
                "nocreaterole" => options.create_role = Some(false),
                // Defaults that change nothing here.
                "inherit" | "nocreatedb" | "noreplication" | "nobypassrls" => {}
                "encrypted" | "password" => {
                    if word.value.eq_ignore_ascii_case("encrypted") && !self.take_word("password") {
                        return self.parser.expected_ref("PASSWORD after ENCRYPTED", self.parser.peek_token_ref())?;
                    }
                    let token = self.parser.next_token();
                    options.password = Some(match &token.token {
                        Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => Some(s.clone()),
                        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("null") => None,
                        _ => return self.parser.expected("a password string or NULL", token)?,
                    });
                }
                "in" => {
                    if !(self.take_word("role") || self.take_word("group")) {
                        return self.parser.expected_ref("ROLE after IN", self.parser.peek_token_ref())?;
                    }
                    options.in_roles.push(self.role_name()?);
                    while self.parser.consume_token(&Token::Comma) {
                        options.in_roles.push(self.role_name()?);
                    }
                }
                other => {
                    return Err(Error::unsupported(format!(
                        "role option {} is not supported: streamhouse roles have LOGIN, SUPERUSER, CREATEROLE, \
                         PASSWORD and IN ROLE",
                        other.to_ascii_uppercase()
                    )));
                }
            }
        }
        Ok(options)
    }

    /// `GRANT` or `REVOKE` (next).
    pub(super) fn grant(&mut self) -> Result<Statement> {
        let grant = is_word(&self.parser.next_token(), "grant");
        if !grant && self.take_word("grant") {
            return Err(Error::unsupported("REVOKE GRANT OPTION FOR is not supported: there is no grant option"));
        }
        if !grant && self.take_word("admin") {
            return Err(Error::unsupported("REVOKE ADMIN OPTION FOR is not supported: there is no admin option"));
        }
        // A list of privilege words or role names, then ON (privileges) or TO/FROM (roles).
        let mut words = Vec::new();
        loop {
            let token = self.parser.next_token();
            let Token::Word(word) = &token.token else {
                return self.parser.expected("a privilege or a role name", token)?;
            };
            let mut text = ident_value(&datafusion::sql::sqlparser::ast::Ident {
                value: word.value.clone(),
                quote_style: word.quote_style,
                span: token.span,
            });
            if word.quote_style.is_none() && text == "all" {
                self.take_word("privileges");
            }
            if self.parser.peek_token_ref().token == Token::LParen {
                return Err(Error::unsupported(format!(
                    "column privileges ({} (columns)) are not supported: grant on the whole relation",
                    text.to_ascii_uppercase()
                )));
            }
            if word.quote_style.is_some() {
                text = format!("\"{text}");
            }
            words.push(text);
            if !self.parser.consume_token(&Token::Comma) {
                break;
            }
        }
        let what = if self.take_word("on") {
            self.granted_on(&words)?
        } else {
            let roles = words.into_iter().map(|w| w.trim_start_matches('"').to_string()).collect();
            Granted::Roles(roles)
        };
        let preposition = if grant { "to" } else { "from" };
        if !self.take_word(preposition) {
            return self.parser.expected_ref(&preposition.to_ascii_uppercase(), self.parser.peek_token_ref())?;
        }
        let mut grantees = vec![self.grantee()?];
        while self.parser.consume_token(&Token::Comma) {
            grantees.push(self.grantee()?);
        }
        if grant && self.take_word("with") {
            return Err(Error::unsupported(format!(
                "GRANT … WITH {} OPTION is not supported: only owners and superusers grant",
                self.parser.peek_token_ref().to_string().to_ascii_uppercase()
            )));
        }
        if self.take_word("granted") {
            return Err(Error::unsupported("GRANTED BY is not supported"));
        }
        if !grant && self.take_word("cascade") {
            return Err(Error::unsupported("REVOKE … CASCADE is not supported: there are no grant options to cascade"));
        }
        let _ = !grant && self.take_word("restrict");
        Ok(Statement::Grant(Box::new(Grant { grant, what, grantees })))
    }

    /// What follows `ON`, for the privilege words already read.
    fn granted_on(&mut self, words: &[String]) -> Result<Granted> {
        if self.take_word("schema") {
            let mut privileges = Vec::new();
            for word in words {
                match word.as_str() {
                    "all" => privileges.extend([SchemaPrivilege::Usage, SchemaPrivilege::Create]),
                    "usage" => privileges.push(SchemaPrivilege::Usage),
                    "create" => privileges.push(SchemaPrivilege::Create),
                    other => return Err(invalid_privilege(other, "schema")),
                }
            }
            let mut schemas = vec![self.role_name()?];
            while self.parser.consume_token(&Token::Comma) {
                schemas.push(self.role_name()?);
            }
            return Ok(Granted::Schemas { privileges, schemas });
        }
        for other in ["database", "function", "procedure", "routine", "sequence", "language", "type", "domain"] {
            if self.word_is(other) {
                return Err(Error::unsupported(format!(
                    "privileges on {} are not supported: streamhouse grants on tables, views and schemas",
                    other.to_ascii_uppercase()
                )));
            }
        }
        let mut privileges = Vec::new();
        for word in words {
            match word.as_str() {
                "all" => privileges.extend(Privilege::ALL),
                other => match Privilege::parse(other) {
                    Some(privilege) => privileges.push(privilege),
                    None if ["truncate", "references", "trigger", "maintain"].contains(&other) => {
                        return Err(Error::unsupported(format!(
                            "the {} privilege is not supported: grant SELECT, INSERT, UPDATE, DELETE or ALL",
                            other.to_ascii_uppercase()
                        )));
                    }
                    None => return Err(invalid_privilege(other, "table")),
                },
            }
        }
        if self.take_word("all") {
            let kind_ok = self.take_word("tables") || self.take_word("views") || {
                let mv = self.take_word("materialized");
                mv && self.take_word("views")
            };
            if !kind_ok || !self.take_word("in") || !self.take_word("schema") {
                return self.parser.expected_ref("ALL TABLES IN SCHEMA", self.parser.peek_token_ref())?;
            }
            let mut schemas = vec![self.role_name()?];
            while self.parser.consume_token(&Token::Comma) {
                schemas.push(self.role_name()?);
            }
            return Ok(Granted::AllTablesIn { privileges, schemas });
        }
        let _ = self.take_word("table") || self.take_word("view") || {
            let mv = self.take_word("materialized");
            mv && self.take_word("view")
        };
        let mut relations = vec![table_reference(&self.parser.parse_object_name(false)?)?];
        while self.parser.consume_token(&Token::Comma) {
            relations.push(table_reference(&self.parser.parse_object_name(false)?)?);
        }
        Ok(Granted::Relations { privileges, relations })
    }

    /// A grantee: `[GROUP] role`, `PUBLIC`, `CURRENT_USER`, `SESSION_USER`, `CURRENT_ROLE`.
    fn grantee(&mut self) -> Result<String> {
        self.take_word("group");
        let token = self.parser.peek_token_ref();
        if let Token::Word(w) = &token.token
            && w.quote_style.is_none()
            && ["public", "current_user", "session_user", "current_role"]
                .contains(&w.value.to_ascii_lowercase().as_str())
        {
            let value = w.value.to_ascii_lowercase();
            self.parser.next_token();
            return Ok(if value == "current_role" { "current_user".into() } else { value });
        }
        self.role_name()
    }
}

fn invalid_privilege(word: &str, object: &str) -> Error {
    Error::new(
        crate::error::StatusCode::InvalidArgument,
        format!("invalid privilege type {} for {object}", word.trim_start_matches('"').to_ascii_uppercase()),
    )
}
