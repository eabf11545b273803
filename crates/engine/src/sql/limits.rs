//! Limits on the shape of a statement, so that no input can exhaust a
//! thread's stack (which aborts the whole process, every client with it)
//! or make planning take quadratic time.
//!
//! sqlparser builds a left-deep chain such as `1 + 1 + … + 1` in a loop,
//! and DataFusion guards its planner's recursion by growing the stack, but
//! much of what runs after parsing recurses over the tree unguarded: the
//! derived `Clone`, `PartialEq`, `Hash` and `Drop` of sqlparser's and
//! DataFusion's expressions, `Expr::to_field` (which also names every
//! subtree, quadratic in the depth), and the evaluation of physical
//! expressions. So a statement is checked in three steps, each before
//! anything deeper can run:
//!
//! 1. [`check_tokens`], before parsing: along every nesting path, the
//!    operators that can chain (`+`, `AND`, `::`, `UNION`, unary minus …)
//!    are at most [`MAX_TOKEN_CHAIN`]. This bounds the depth of whatever
//!    the parser can build, so even dropping the tree is safe.
//! 2. [`shape`], right after parsing: chains of `AND` and of `OR` (the long
//!    ones tools generate, `x = 1 OR x = 2 OR …`) are rebalanced into
//!    trees of logarithmic depth — both are associative in SQL's
//!    three-valued logic, so the value is the same — then the depth of
//!    expressions is at most [`MAX_EXPRESSION_DEPTH`] and of set
//!    operations (`UNION` chains) at most [`MAX_SET_OPERATIONS`].
//!
//! Past a limit the statement fails with 54001 (statement too complex),
//! as Postgres does when its stack depth limit is reached. The walks here
//! are sqlparser's visitors, whose recursion grows the stack on the heap
//! (`recursive-protection`), and loops.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, BinaryOperator, Expr, SetExpr, Visit, VisitMut, Visitor, VisitorMut};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use crate::error::{Error, Result, StatusCode};

/// Chaining operators along one nesting path of the text.
pub const MAX_TOKEN_CHAIN: usize = 20_000;

/// Depth of an expression tree after rebalancing.
pub const MAX_EXPRESSION_DEPTH: usize = 1_000;

/// Set operations (`UNION`, `INTERSECT`, `EXCEPT`) chained in one query.
pub const MAX_SET_OPERATIONS: usize = 500;

fn too_complex(what: &str, limit: usize) -> Error {
    Error::new(
        StatusCode::StatementTooComplex,
        format!(
            "statement too complex: {what} exceeds the limit of {limit}; split it into smaller statements or views"
        ),
    )
}

/// Step 1: bounds the operators that can chain along any nesting path.
///
/// # Errors
/// 54001 past [`MAX_TOKEN_CHAIN`].
pub fn check_tokens(tokens: &[TokenWithSpan]) -> Result<()> {
    // Chaining operators counted at each open nesting level (parentheses,
    // brackets, CASE … END), and their sum along the path.
    let mut levels: Vec<usize> = Vec::new();
    let mut current = 0usize;
    let mut path = 0usize;
    for token in tokens {
        match &token.token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                levels.push(current);
                path += current + 1;
                current = 0;
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if let Some(outer) = levels.pop() {
                    path -= outer + 1;
                    current = outer;
                }
            }
            Token::Comma | Token::SemiColon => current = 0,
            Token::Word(word) => match word.keyword {
                Keyword::CASE => {
                    levels.push(current);
                    path += current + 1;
                    current = 0;
                }
                Keyword::END => {
                    if let Some(outer) = levels.pop() {
                        path -= outer + 1;
                        current = outer;
                    }
                }
                Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::IN
                | Keyword::AT
                | Keyword::COLLATE
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT => current += 1,
                _ => {}
            },
            token if is_neutral(token) => {}
            // Every other token is an operator: binary, unary, `::`, `->` …
            _ => current += 1,
        }
        if path + current > MAX_TOKEN_CHAIN {
            return Err(too_complex("the nesting of operators", MAX_TOKEN_CHAIN));
        }
    }
    Ok(())
}

/// Tokens that never chain: literals, separators, whitespace.
fn is_neutral(token: &Token) -> bool {
    matches!(
        token,
        Token::EOF
            | Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Whitespace(_)
            | Token::Period
            | Token::Colon
            | Token::Assignment
            | Token::Backslash
            | Token::Placeholder(_)
    )
}

/// Step 2 for a statement (or a query, an expression): rebalances
/// `AND`/`OR` chains, then checks the depth of expressions and set
/// operations.
///
/// # Errors
/// 54001 past a limit.
pub fn shape<T: Visit + VisitMut>(node: &mut T) -> Result<()> {
    let _ = VisitMut::visit(node, &mut Rebalance);
    match Visit::visit(&*node, &mut Depth::default()) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(e) => Err(e),
    }
}

/// Rebalances every chain of one associative boolean operator.
struct Rebalance;

impl VisitorMut for Rebalance {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let op = match expr {
            Expr::BinaryOp { op: op @ (BinaryOperator::And | BinaryOperator::Or), left, .. } if matches!(&**left, Expr::BinaryOp { op: inner, .. } if inner == op) => {
                op.clone()
            }
            _ => return ControlFlow::Continue(()),
        };
        // The whole chain's operands in order, in a loop (either side may chain).
        let mut operands = Vec::new();
        let mut pending = vec![std::mem::replace(expr, Expr::value(ast::Value::Null))];
        while let Some(next) = pending.pop() {
            match next {
                Expr::BinaryOp { left, op: inner, right } if inner == op => {
                    pending.push(*right);
                    pending.push(*left);
                }
                other => operands.push(other),
            }
        }
        *expr = balanced(operands, &op);
        ControlFlow::Continue(())
    }
}

/// `operands[0] op operands[1] op …` as a tree of depth log2(n).
fn balanced(mut operands: Vec<Expr>, op: &BinaryOperator) -> Expr {
    if operands.len() == 1 {
        return operands.pop().expect("one operand");
    }
    let right = operands.split_off(operands.len() / 2);
    Expr::BinaryOp { left: Box::new(balanced(operands, op)), op: op.clone(), right: Box::new(balanced(right, op)) }
}

/// Tracks the depth of expressions being visited.
#[derive(Default)]
struct Depth {
    depth: usize,
}

impl Visitor for Depth {
    type Break = Error;

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<Error> {
        self.depth += 1;
        if self.depth > MAX_EXPRESSION_DEPTH {
            return ControlFlow::Break(too_complex("the nesting depth of expressions", MAX_EXPRESSION_DEPTH));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<Error> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &ast::Query) -> ControlFlow<Error> {
        // The set-operation chain, counted in a loop down both sides.
        let mut pending: Vec<&SetExpr> = vec![&query.body];
        let mut operations = 0usize;
        while let Some(body) = pending.pop() {
            if let SetExpr::SetOperation { left, right, .. } = body {
                operations += 1;
                if operations > MAX_SET_OPERATIONS {
                    return ControlFlow::Break(too_complex("the number of UNION/INTERSECT/EXCEPT", MAX_SET_OPERATIONS));
                }
                pending.push(left);
                pending.push(right);
            }
        }
        ControlFlow::Continue(())
    }
}
