//! A map's row filter (`where = "stage = 'won' AND amount > 0"`): parsed
//! once with `sqlparser` into a small expression of our own, bound to a
//! source schema's column indexes, and evaluated per row on [`Value`]s with
//! SQL's three-valued logic (a comparison with NULL is unknown, and an
//! unknown filter does not match).
//!
//! Supported: comparisons `= <> != < <= > >=` between a column and a
//! literal (either side), `[NOT] IN (literal, …)`, `IS [NOT] NULL`, `AND`,
//! `OR`, `NOT`, parentheses, a boolean column alone, and string, number
//! (without exponent), boolean and NULL literals. Strings compare byte by
//! byte (not under a collation); dates and timestamps compare with string
//! literals in ISO form (`'2024-01-31'`, `'2024-01-31 12:00:00'`).

use crate::Value;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value as SqlValue};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;
use std::cmp::Ordering;

/// Nesting depth the parser accepts: a config's filter is short; this only
/// stops a pathological one from exhausting the stack.
const RECURSION_LIMIT: usize = 50;

/// A filter expression over columns named `C`: `String` as parsed, `usize`
/// (indexes into a source schema's columns) once bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter<C> {
    And(Box<Filter<C>>, Box<Filter<C>>),
    Or(Box<Filter<C>>, Box<Filter<C>>),
    Not(Box<Filter<C>>),
    /// `column op literal` (a literal on the left is turned around).
    Compare {
        column: C,
        op: CmpOp,
        literal: Literal,
    },
    /// `column [NOT] IN (literals)`.
    In {
        column: C,
        list: Vec<Literal>,
        negated: bool,
    },
    /// `column IS [NOT] NULL`.
    IsNull {
        column: C,
        negated: bool,
    },
    /// A boolean column on its own.
    Column(C),
    /// `TRUE`, `FALSE` or `NULL` on its own.
    Constant(Option<bool>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::NotEq => ord != Ordering::Equal,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::LtEq => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::GtEq => ord != Ordering::Less,
        }
    }

    /// The operator with its operands swapped (`1 < a` is `a > 1`).
    fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::LtEq => CmpOp::GtEq,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::GtEq => CmpOp::LtEq,
            other => other,
        }
    }
}

/// A literal of a filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Literal {
    Null,
    Bool(bool),
    /// A decimal number as written, `-` prefixed when negative
    /// (`12`, `-0.5`).
    Number(String),
    Text(String),
}

impl Literal {
    fn kind(&self) -> &'static str {
        match self {
            Literal::Null => "NULL",
            Literal::Bool(_) => "boolean",
            Literal::Number(_) => "number",
            Literal::Text(_) => "string",
        }
    }
}

/// Why a filter's text is not a filter Callosum evaluates.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterParseError {
    #[error("does not parse as SQL: {0}")]
    Syntax(String),
    #[error("{0} is not supported in a filter; use comparisons (= <> < <= > >=), IN, IS [NOT] NULL, AND, OR, NOT and literals")]
    Unsupported(String),
    #[error("number `{0}` is not supported; write numbers as plain decimals without an exponent")]
    Number(String),
}

/// Why a row cannot be tested. Names the column, never the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterEvalError {
    /// The update did not carry the column's value (PostgreSQL unchanged
    /// TOAST): the filter cannot tell whether the row matches.
    #[error(
        "column `{column}` of the filter was not sent with the update (unchanged TOAST value)"
    )]
    Unchanged { column: String },
    /// The column's value cannot be compared with the literal.
    #[error("the filter compares column `{column}` (a {value_kind} value) with a {literal_kind}")]
    Mismatch {
        column: String,
        value_kind: String,
        literal_kind: &'static str,
    },
}

/// Parses `text` into a filter over column names.
pub fn parse(text: &str) -> Result<Filter<String>, FilterParseError> {
    let syntax = |e: sqlparser::parser::ParserError| FilterParseError::Syntax(e.to_string());
    let mut parser = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(text)
        .map_err(syntax)?;
    let expr = parser.parse_expr().map_err(syntax)?;
    // trailing text is otherwise ignored
    parser.expect_token(&Token::EOF).map_err(syntax)?;
    convert(&expr)
}

fn unsupported(expr: &Expr) -> FilterParseError {
    let text = expr.to_string();
    let shown: String = text.chars().take(60).collect();
    FilterParseError::Unsupported(format!("`{shown}`"))
}

fn convert(expr: &Expr) -> Result<Filter<String>, FilterParseError> {
    Ok(match expr {
        Expr::Nested(inner) => convert(inner)?,
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And => Filter::And(Box::new(convert(left)?), Box::new(convert(right)?)),
            BinaryOperator::Or => Filter::Or(Box::new(convert(left)?), Box::new(convert(right)?)),
            _ => {
                let op = match op {
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::NotEq,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::LtEq,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::GtEq,
                    _ => return Err(unsupported(expr)),
                };
                match (column(left), column(right)) {
                    (Some(c), None) => Filter::Compare {
                        column: c,
                        op,
                        literal: literal(right)?.ok_or_else(|| unsupported(expr))?,
                    },
                    (None, Some(c)) => Filter::Compare {
                        column: c,
                        op: op.flipped(),
                        literal: literal(left)?.ok_or_else(|| unsupported(expr))?,
                    },
                    _ => return Err(unsupported(expr)),
                }
            }
        },
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr: inner,
        } => Filter::Not(Box::new(convert(inner)?)),
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => Filter::IsNull {
            column: column(inner).ok_or_else(|| unsupported(expr))?,
            negated: matches!(expr, Expr::IsNotNull(_)),
        },
        Expr::InList {
            expr: inner,
            list,
            negated,
        } => Filter::In {
            column: column(inner).ok_or_else(|| unsupported(expr))?,
            list: list
                .iter()
                .map(|e| literal(e)?.ok_or_else(|| unsupported(e)))
                .collect::<Result<_, _>>()?,
            negated: *negated,
        },
        other => {
            if let Some(c) = column(other) {
                Filter::Column(c)
            } else {
                match literal(other)? {
                    Some(Literal::Bool(b)) => Filter::Constant(Some(b)),
                    Some(Literal::Null) => Filter::Constant(None),
                    _ => return Err(unsupported(other)),
                }
            }
        }
    })
}

/// A column reference: `name` or `"Name"` (a qualified name is refused).
fn column(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.clone()),
        Expr::Nested(inner) => column(inner),
        _ => None,
    }
}

/// A literal, `None` when `expr` is not one.
fn literal(expr: &Expr) -> Result<Option<Literal>, FilterParseError> {
    Ok(Some(match expr {
        Expr::Nested(inner) => return literal(inner),
        Expr::Value(v) => match &v.value {
            SqlValue::Null => Literal::Null,
            SqlValue::Boolean(b) => Literal::Bool(*b),
            SqlValue::Number(n, _) => Literal::Number(number(n)?),
            SqlValue::SingleQuotedString(s) => Literal::Text(s.clone()),
            _ => return Ok(None),
        },
        Expr::UnaryOp { op, expr: inner } if *op != UnaryOperator::Not => {
            let negative = match op {
                UnaryOperator::Minus => true,
                UnaryOperator::Plus => false,
                _ => return Ok(None),
            };
            match literal(inner)? {
                Some(Literal::Number(n)) if negative => {
                    Literal::Number(match n.strip_prefix('-') {
                        Some(positive) => positive.to_owned(),
                        None => format!("-{n}"),
                    })
                }
                Some(Literal::Number(n)) => Literal::Number(n),
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    }))
}

fn number(text: &str) -> Result<String, FilterParseError> {
    match parse_decimal(text) {
        Some(_) => Ok(text.to_owned()),
        None => Err(FilterParseError::Number(text.to_owned())),
    }
}

impl Filter<String> {
    /// The column names the filter reads, each once, in first-use order.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit(&mut |c: &String| {
            if !out.contains(&c.as_str()) {
                out.push(c.as_str());
            }
        });
        out
    }

    /// The filter with each column name replaced by `index(name)`; the
    /// first name without an index is the error.
    pub fn bind(&self, index: &impl Fn(&str) -> Option<usize>) -> Result<Filter<usize>, String> {
        let col = |c: &String| index(c).ok_or_else(|| c.clone());
        Ok(match self {
            Filter::And(a, b) => Filter::And(Box::new(a.bind(index)?), Box::new(b.bind(index)?)),
            Filter::Or(a, b) => Filter::Or(Box::new(a.bind(index)?), Box::new(b.bind(index)?)),
            Filter::Not(a) => Filter::Not(Box::new(a.bind(index)?)),
            Filter::Compare {
                column,
                op,
                literal,
            } => Filter::Compare {
                column: col(column)?,
                op: *op,
                literal: literal.clone(),
            },
            Filter::In {
                column,
                list,
                negated,
            } => Filter::In {
                column: col(column)?,
                list: list.clone(),
                negated: *negated,
            },
            Filter::IsNull { column, negated } => Filter::IsNull {
                column: col(column)?,
                negated: *negated,
            },
            Filter::Column(c) => Filter::Column(col(c)?),
            Filter::Constant(b) => Filter::Constant(*b),
        })
    }
}

impl<C> Filter<C> {
    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a C)) {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Filter::Not(a) => a.visit(f),
            Filter::Compare { column, .. }
            | Filter::In { column, .. }
            | Filter::IsNull { column, .. }
            | Filter::Column(column) => f(column),
            Filter::Constant(_) => {}
        }
    }
}

impl Filter<usize> {
    /// Whether `row` (values in source column order) matches: `Some(true)`,
    /// `Some(false)`, or `None` (unknown, which does not match). `names`
    /// names the columns in errors. A column of the filter holding
    /// [`Value::Unchanged`] is refused rather than guessed.
    pub fn eval(
        &self,
        row: &[Value],
        names: &[impl AsRef<str>],
    ) -> Result<Option<bool>, FilterEvalError> {
        let mut unchanged = None;
        self.visit(&mut |&c: &usize| {
            if unchanged.is_none() && row[c].is_unchanged() {
                unchanged = Some(c);
            }
        });
        if let Some(c) = unchanged {
            return Err(FilterEvalError::Unchanged {
                column: names[c].as_ref().to_owned(),
            });
        }
        self.eval_known(row, names)
    }

    /// Whether `row` matches (an unknown result does not).
    pub fn matches(
        &self,
        row: &[Value],
        names: &[impl AsRef<str>],
    ) -> Result<bool, FilterEvalError> {
        Ok(self.eval(row, names)? == Some(true))
    }

    fn eval_known(
        &self,
        row: &[Value],
        names: &[impl AsRef<str>],
    ) -> Result<Option<bool>, FilterEvalError> {
        // both sides are evaluated, so a mismatch is refused whatever the
        // other side holds
        Ok(match self {
            Filter::And(a, b) => match (a.eval_known(row, names)?, b.eval_known(row, names)?) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Filter::Or(a, b) => match (a.eval_known(row, names)?, b.eval_known(row, names)?) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Filter::Not(a) => a.eval_known(row, names)?.map(|b| !b),
            Filter::Compare {
                column,
                op,
                literal,
            } => compare(&row[*column], literal)
                .map_err(|()| mismatch(names[*column].as_ref(), &row[*column], literal))?
                .map(|ord| op.holds(ord)),
            Filter::In {
                column,
                list,
                negated,
            } => {
                let value = &row[*column];
                let mut result = Some(false);
                for literal in list {
                    match compare(value, literal)
                        .map_err(|()| mismatch(names[*column].as_ref(), value, literal))?
                    {
                        Some(Ordering::Equal) => result = Some(true),
                        Some(_) => {}
                        None if result == Some(false) => result = None,
                        None => {}
                    }
                }
                if *negated {
                    result.map(|b| !b)
                } else {
                    result
                }
            }
            Filter::IsNull { column, negated } => {
                Some(matches!(row[*column], Value::Null) != *negated)
            }
            Filter::Column(c) => match &row[*c] {
                Value::Null => None,
                Value::Bool(b) => Some(*b),
                other => return Err(mismatch(names[*c].as_ref(), other, &Literal::Bool(true))),
            },
            Filter::Constant(b) => *b,
        })
    }
}

fn mismatch(column: &str, value: &Value, literal: &Literal) -> FilterEvalError {
    FilterEvalError::Mismatch {
        column: column.to_owned(),
        value_kind: format!("{:?}", value.kind()),
        literal_kind: literal.kind(),
    }
}

/// Orders `value` against `literal`: `Ok(None)` when either is NULL,
/// `Err` when they cannot be compared.
fn compare(value: &Value, literal: &Literal) -> Result<Option<Ordering>, ()> {
    if matches!(value, Value::Null) || *literal == Literal::Null {
        return Ok(None);
    }
    let ord = match (value, literal) {
        (Value::Bool(a), Literal::Bool(b)) => a.cmp(b),
        (Value::Int(i), Literal::Number(n)) => cmp_decimal(&i.to_string(), n),
        (Value::UInt(i), Literal::Number(n)) => cmp_decimal(&i.to_string(), n),
        (Value::Decimal(d), Literal::Number(n)) => match d.as_str() {
            // PostgreSQL orders NaN above every number
            "NaN" | "Infinity" => Ordering::Greater,
            "-Infinity" => Ordering::Less,
            d => cmp_decimal(d, n),
        },
        (Value::Float(f), Literal::Number(n)) => {
            let n: f64 = n.parse().map_err(|_| ())?;
            f.partial_cmp(&n).unwrap_or(Ordering::Greater)
        }
        (Value::Text(s) | Value::Uuid(s), Literal::Text(t)) => s.as_bytes().cmp(t.as_bytes()),
        (Value::Date(d), Literal::Text(t)) => d.cmp(&parse_date(t)?),
        (Value::Timestamp(ts), Literal::Text(t)) => ts.cmp(&parse_timestamp(t)?),
        (Value::TimestampTz(ts), Literal::Text(t)) => ts.cmp(&parse_timestamp_tz(t)?),
        (Value::ZonedTimestamp(ts), Literal::Text(t)) => {
            ts.with_timezone(&Utc).cmp(&parse_timestamp_tz(t)?)
        }
        (Value::Infinity { negative }, Literal::Text(_)) => {
            if *negative {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        _ => return Err(()),
    };
    Ok(Some(ord))
}

fn parse_date(text: &str) -> Result<NaiveDate, ()> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| ())
}

fn parse_timestamp(text: &str) -> Result<NaiveDateTime, ()> {
    let t = text.trim();
    NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| parse_date(t).map(|d| d.and_time(chrono::NaiveTime::MIN)))
        .map_err(|_| ())
}

/// A timestamp with an offset, or without one as UTC.
fn parse_timestamp_tz(text: &str) -> Result<DateTime<Utc>, ()> {
    let t = text.trim();
    DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z")
        .or_else(|_| DateTime::parse_from_rfc3339(t))
        .map(|ts| ts.with_timezone(&Utc))
        .or_else(|_| parse_timestamp(t).map(|ts| ts.and_utc()))
}

/// A decimal's sign, integer digits (no leading zeros) and fraction
/// digits (no trailing zeros); `None` when `text` is not a plain decimal.
fn parse_decimal(text: &str) -> Option<(bool, &str, &str)> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    // -0 is 0
    let negative = negative && !(int.is_empty() && frac.is_empty());
    Some((negative, int, frac))
}

/// Exact order of two plain decimals (both checked by [`parse_decimal`];
/// one that is not orders as 0).
fn cmp_decimal(a: &str, b: &str) -> Ordering {
    let (an, ai, af) = parse_decimal(a).unwrap_or((false, "", ""));
    let (bn, bi, bf) = parse_decimal(b).unwrap_or((false, "", ""));
    let magnitude = ai
        .len()
        .cmp(&bi.len())
        .then_with(|| ai.cmp(bi))
        .then_with(|| af.cmp(bf));
    match (an, bn) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
    }
}

#[cfg(test)]
mod tests;
