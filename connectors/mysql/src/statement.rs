//! Classifies the SQL text of a binlog QUERY_EVENT (pure, no I/O): which
//! statements change rows of a table without row events. `TRUNCATE` is
//! replicated as [`callosum_api::RowChange::Truncate`]; a DML statement
//! (`binlog_format=STATEMENT`/`MIXED` in some session) cannot be replicated
//! and halts capture by name. Only the leading keywords and the table name
//! are read, by a small tokenizer that skips comments and understands
//! backquoted names.

use callosum_api::TableId;

/// What a statement does to rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// `TRUNCATE [TABLE] t`.
    Truncate(TableId),
    /// A DML statement logged as text; `table` is `None` when it cannot be
    /// told (multi-table statements, `WITH …`).
    Dml {
        verb: &'static str,
        table: Option<TableId>,
    },
    /// Anything else (DDL, `SAVEPOINT`, `GRANT`, …).
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// A bare word (`Quoted` is false) or a backquoted name.
    Word {
        text: String,
        quoted: bool,
    },
    Punct(char),
}

impl Token {
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Token::Word { text, quoted: false } if text.eq_ignore_ascii_case(kw))
    }
}

/// The first `limit` tokens of `sql`; stops at a string literal (table
/// names come before any).
fn tokens(sql: &str, limit: usize) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < limit {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            match sql[i + 2..].find("*/") {
                Some(end) => i += end + 4,
                None => break,
            }
        } else if c == b'#' || (c == b'-' && b.get(i + 1) == Some(&b'-')) {
            match sql[i..].find('\n') {
                Some(end) => i += end + 1,
                None => break,
            }
        } else if c == b'`' {
            let mut text = String::new();
            let mut j = i + 1;
            let mut closed = false;
            while j < b.len() {
                if b[j] == b'`' {
                    if b.get(j + 1) == Some(&b'`') {
                        text.push('`');
                        j += 2;
                        continue;
                    }
                    closed = true;
                    j += 1;
                    break;
                }
                let ch = sql[j..].chars().next().unwrap_or('\u{fffd}');
                text.push(ch);
                j += ch.len_utf8();
            }
            if !closed {
                break;
            }
            out.push(Token::Word { text, quoted: true });
            i = j;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
            let mut j = i;
            while j < b.len()
                && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'$' || b[j] >= 0x80)
            {
                j += 1;
            }
            out.push(Token::Word {
                text: sql[i..j].to_string(),
                quoted: false,
            });
            i = j;
        } else if c == b'\'' || c == b'"' {
            break;
        } else {
            out.push(Token::Punct(c as char));
            i += 1;
        }
    }
    out
}

/// `name` or `db.name` at `toks[i..]`; the index after it.
fn table_name(toks: &[Token], i: usize, default_db: &str) -> Option<(TableId, usize)> {
    let Some(Token::Word { text: first, .. }) = toks.get(i) else {
        return None;
    };
    if toks.get(i + 1) == Some(&Token::Punct('.')) {
        let Some(Token::Word { text: second, .. }) = toks.get(i + 2) else {
            return None;
        };
        return Some((TableId::new(first.clone(), second.clone()), i + 3));
    }
    if default_db.is_empty() {
        return None;
    }
    Some((TableId::new(default_db, first.clone()), i + 1))
}

fn skip_kws(toks: &[Token], mut i: usize, kws: &[&str]) -> usize {
    while toks.get(i).is_some_and(|t| kws.iter().any(|k| t.is_kw(k))) {
        i += 1;
    }
    i
}

/// The single table a statement names at `i`, if nothing after it makes
/// the statement a multi-table one.
fn single_table(toks: &[Token], i: usize, default_db: &str) -> Option<TableId> {
    let (table, next) = table_name(toks, i, default_db)?;
    let multi = match toks.get(next) {
        Some(Token::Punct(',')) => true,
        Some(t) => [
            "JOIN",
            "INNER",
            "LEFT",
            "RIGHT",
            "CROSS",
            "STRAIGHT_JOIN",
            "NATURAL",
            "USING",
        ]
        .iter()
        .any(|k| t.is_kw(k)),
        None => false,
    };
    (!multi).then_some(table)
}

/// Classifies `sql`, run with `default_db` as the current database (empty:
/// none).
pub fn classify(sql: &str, default_db: &str) -> Statement {
    let toks = tokens(sql, 64);
    let Some(first) = toks.first() else {
        return Statement::Other;
    };
    if first.is_kw("TRUNCATE") {
        let i = skip_kws(&toks, 1, &["TABLE"]);
        return match table_name(&toks, i, default_db) {
            Some((t, _)) => Statement::Truncate(t),
            None => Statement::Other,
        };
    }
    let dml = |verb, table| Statement::Dml { verb, table };
    if first.is_kw("INSERT") || first.is_kw("REPLACE") {
        let verb = if first.is_kw("INSERT") {
            "INSERT"
        } else {
            "REPLACE"
        };
        let i = skip_kws(
            &toks,
            1,
            &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
        );
        return dml(verb, table_name(&toks, i, default_db).map(|(t, _)| t));
    }
    if first.is_kw("UPDATE") {
        let i = skip_kws(&toks, 1, &["LOW_PRIORITY", "IGNORE"]);
        return dml("UPDATE", single_table(&toks, i, default_db));
    }
    if first.is_kw("DELETE") {
        let i = skip_kws(&toks, 1, &["LOW_PRIORITY", "QUICK", "IGNORE"]);
        let table = if toks.get(i).is_some_and(|t| t.is_kw("FROM")) {
            single_table(&toks, i + 1, default_db)
        } else {
            None
        };
        return dml("DELETE", table);
    }
    if first.is_kw("LOAD") {
        let table = toks
            .windows(2)
            .position(|w| w[0].is_kw("INTO") && w[1].is_kw("TABLE"))
            .and_then(|p| table_name(&toks, p + 2, default_db))
            .map(|(t, _)| t);
        return dml("LOAD DATA", table);
    }
    if first.is_kw("WITH") {
        return dml("WITH", None);
    }
    Statement::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(db: &str, name: &str) -> TableId {
        TableId::new(db, name)
    }

    #[test]
    fn truncate_forms() {
        for (sql, want) in [
            ("TRUNCATE TABLE t", t("app", "t")),
            ("truncate t", t("app", "t")),
            ("  /* c */ TRUNCATE `other`.`we``ird`", t("other", "we`ird")),
            ("-- x\nTRUNCATE TABLE db . t2", t("db", "t2")),
            ("# x\ntruncate table `t`", t("app", "t")),
        ] {
            assert_eq!(classify(sql, "app"), Statement::Truncate(want), "{sql}");
        }
        assert_eq!(classify("TRUNCATE TABLE t", ""), Statement::Other);
    }

    #[test]
    fn dml_forms() {
        let d = |verb, table: Option<TableId>| Statement::Dml { verb, table };
        assert_eq!(
            classify("insert low_priority ignore into t (a) values (1)", "app"),
            d("INSERT", Some(t("app", "t")))
        );
        assert_eq!(
            classify("REPLACE `x`.`y` VALUES ('a')", "app"),
            d("REPLACE", Some(t("x", "y")))
        );
        assert_eq!(
            classify("UPDATE t SET a = 1 WHERE id = 2", "app"),
            d("UPDATE", Some(t("app", "t")))
        );
        assert_eq!(
            classify("UPDATE t JOIN u ON t.a = u.a SET t.b = 1", "app"),
            d("UPDATE", None)
        );
        assert_eq!(
            classify("UPDATE t, u SET t.b = 1", "app"),
            d("UPDATE", None)
        );
        assert_eq!(
            classify("DELETE QUICK FROM db.t WHERE a = 1", "app"),
            d("DELETE", Some(t("db", "t")))
        );
        assert_eq!(
            classify("DELETE t FROM t JOIN u ON t.a = u.a", "app"),
            d("DELETE", None)
        );
        assert_eq!(
            classify("LOAD DATA INFILE '/x' INTO TABLE t", "app"),
            d("LOAD DATA", None),
            "the file name ends tokenizing; the table is unknown"
        );
        assert_eq!(
            classify("LOAD DATA LOCAL INFILE x INTO TABLE t", "app"),
            d("LOAD DATA", Some(t("app", "t")))
        );
        assert_eq!(
            classify("WITH c AS (SELECT 1) UPDATE t", "app"),
            d("WITH", None)
        );
    }

    #[test]
    fn other_statements() {
        for sql in [
            "",
            "BEGIN",
            "CREATE TABLE t (a int)",
            "ALTER TABLE t ADD c int",
            "SAVEPOINT a",
            "DROP TABLE t",
            "`unclosed",
            "/* unclosed",
        ] {
            assert_eq!(classify(sql, "app"), Statement::Other, "{sql}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(sql in ".{0,80}", db in "[a-z]{0,4}") {
            let _ = classify(&sql, &db);
        }
    }
}
