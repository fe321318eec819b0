//! Column values as they travel from a source to a sink.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

/// One column value, typed by what the source knows. The sink converts it to
/// the *target column's* type, read from the target's catalog, and fails with
/// an error naming store, table, column and type when it cannot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    /// PostgreSQL unchanged TOAST: the update did not touch this column and
    /// the source did not send its value. Never written as NULL: sinks leave
    /// the column out of the update.
    Unchanged,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Exact decimal in its canonical text form (`-12.50`, `NaN`).
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    Date(NaiveDate),
    Time(NaiveTime),
    Timestamp(NaiveDateTime),
    /// An instant; sinks store it as UTC.
    TimestampTz(DateTime<Utc>),
    /// Canonical lowercase hyphenated form.
    Uuid(String),
    /// JSON document text.
    Json(String),
}

/// The kind of a [`Value`], for error messages and metrics (never the value
/// itself: row values are not logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Null,
    Unchanged,
    Bool,
    Int,
    UInt,
    Float,
    Decimal,
    Text,
    Bytes,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Json,
}

impl Value {
    pub fn kind(&self) -> ValueKind {
        match self {
            Value::Null => ValueKind::Null,
            Value::Unchanged => ValueKind::Unchanged,
            Value::Bool(_) => ValueKind::Bool,
            Value::Int(_) => ValueKind::Int,
            Value::UInt(_) => ValueKind::UInt,
            Value::Float(_) => ValueKind::Float,
            Value::Decimal(_) => ValueKind::Decimal,
            Value::Text(_) => ValueKind::Text,
            Value::Bytes(_) => ValueKind::Bytes,
            Value::Date(_) => ValueKind::Date,
            Value::Time(_) => ValueKind::Time,
            Value::Timestamp(_) => ValueKind::Timestamp,
            Value::TimestampTz(_) => ValueKind::TimestampTz,
            Value::Uuid(_) => ValueKind::Uuid,
            Value::Json(_) => ValueKind::Json,
        }
    }

    pub fn is_unchanged(&self) -> bool {
        matches!(self, Value::Unchanged)
    }
}
