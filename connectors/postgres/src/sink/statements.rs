//! The statements of one plan step: multi-row `VALUES`, `unnest` arrays and
//! binary `COPY` upserts, deletes by key and key updates, each built from
//! the target table and the step's column map ([`Ctx`]).

use super::*;

/// What a statement builder needs to know about its table.
pub(super) struct Ctx<'a> {
    pub(super) store: &'a str,
    pub(super) table: &'a TargetTable,
    pub(super) map: &'a ColumnMap,
}

impl Ctx<'_> {
    pub(super) fn column(&self, s: usize) -> &TargetColumn {
        &self.table.columns[self.map.target[s]]
    }

    pub(super) fn ident(&self, s: usize) -> String {
        quote_ident(&self.column(s).name)
    }

    /// Encodes source column `s`'s value into `out`; `false` for NULL.
    pub(super) fn encode(
        &self,
        s: usize,
        value: &Value,
        out: &mut BytesMut,
    ) -> Result<bool, ConnectorError> {
        let column = self.column(s);
        let source = &self.map.schema.columns[s];
        encode(value, &column.ty, &source.source_type, out)
            .map_err(|reason| self.conversion_error(s, value, reason))
    }

    /// A statement failed in the server with a data exception (`22…`) or
    /// a check violation (`23514`): a type's input function (for columns
    /// whose values travel as text, [`PgType::ViaText`], or enums) or a
    /// domain's check refused a value. Names the columns whose type the
    /// server's message mentions; for a data exception naming none, every
    /// column sent as text. Never the value (the message is only searched
    /// for type names).
    pub(super) fn name_refusing_columns(
        &self,
        err: ConnectorError,
        code: &str,
        message: &str,
    ) -> ConnectorError {
        let data_exception = code.starts_with("22");
        if !data_exception && code != "23514" {
            return err;
        }
        let db_message = Some(message);
        let all: Vec<&TargetColumn> = (0..self.map.target.len()).map(|s| self.column(s)).collect();
        let text_columns: Vec<&TargetColumn> =
            all.iter().copied().filter(|c| c.via_text()).collect();
        // the server's message names the type it refused a value of:
        // `invalid input syntax for type inet: …`, `invalid input value for
        // enum deal_stage: …`, `value for domain positive violates …`
        let mentioned = |c: &&TargetColumn| {
            let Some(m) = db_message else { return false };
            let parsed = c.via_text() || c.ty == PgType::Enum;
            [c.display.as_str(), c.base_name.as_str()].iter().any(|t| {
                let element = t.strip_suffix("[]");
                m.contains(&format!("domain {t} "))
                    || (parsed && m.contains(&format!(" {t}:")))
                    || (parsed && element.is_some_and(|e| m.contains(&format!(" {e}:"))))
                    || (parsed && element.is_some() && m.starts_with("malformed array literal"))
                    || (parsed && t.ends_with("range") && m.starts_with("malformed range literal"))
            })
        };
        let named: Vec<&TargetColumn> = all.iter().copied().filter(mentioned).collect();
        let columns = if !named.is_empty() {
            named
        } else if data_exception && !text_columns.is_empty() {
            text_columns
        } else {
            return err;
        };
        let list: Vec<String> = columns
            .iter()
            .map(|c| format!("`{}` ({})", c.name, c.display))
            .collect();
        let hint = err.hint.clone();
        let mut out = ConnectorError::new(
            err.kind,
            format!(
                "{}: the server refused a value of column {} of `{}` for its type",
                err.message,
                list.join(" or "),
                self.table.id
            ),
        )
        .with_hint(hint.unwrap_or_else(|| {
            format!(
                "make the source's values valid for the column's type (an enum label the type \
                 lacks: `ALTER TYPE … ADD VALUE`), or change the type of the column in `{}`",
                self.table.id
            )
        }));
        out.source = err.source;
        out
    }

    pub(super) fn conversion_error(
        &self,
        s: usize,
        value: &Value,
        reason: Reason,
    ) -> ConnectorError {
        let column = self.column(s);
        let source = &self.map.schema.columns[s];
        ConnectorError::new(
            ErrorKind::Conversion,
            format!(
                "postgres store `{}`: cannot write column `{}` of `{}` (target type {}) from source \
                 `{}` column of type {} ({:?} value): {reason}",
                self.store,
                column.name,
                self.table.id,
                column.display,
                self.map.schema.table,
                source.source_type,
                value.kind(),
            ),
        )
        .with_hint(format!(
            "change the type of `{}`.`{}` to one that holds the source's values, or fix the source row",
            self.table.id, column.name
        ))
    }

    /// ` ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c, …` for the present
    /// non-key columns (`DO NOTHING` when there are none). The key is the
    /// map's: the primary key, or the unique key that holds the source's key.
    pub(super) fn on_conflict(&self, present: &[usize]) -> String {
        let mut sql = String::from(" ON CONFLICT (");
        for (n, &k) in self.map.key_targets.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            sql.push_str(&quote_ident(&self.table.columns[k].name));
        }
        sql.push(')');
        let updates: Vec<String> = present
            .iter()
            .filter(|&&s| !self.map.key_targets.contains(&self.map.target[s]))
            .map(|&s| {
                let c = self.ident(s);
                format!("{c}=EXCLUDED.{c}")
            })
            .collect();
        if updates.is_empty() {
            sql.push_str(" DO NOTHING");
        } else {
            sql.push_str(" DO UPDATE SET ");
            sql.push_str(&updates.join(","));
        }
        sql
    }

    pub(super) fn column_list(&self, present: &[usize]) -> String {
        present
            .iter()
            .map(|&s| self.ident(s))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(super) fn insert_head(&self, present: &[usize]) -> String {
        let mut sql = String::from("INSERT INTO ");
        push_table(&mut sql, &self.table.id);
        sql.push_str(" (");
        sql.push_str(&self.column_list(present));
        sql.push(')');
        sql
    }

    /// `$1::type[],$2::type[],…` for the given source columns, numbered
    /// from `first` (`text[]` for columns whose values travel as text).
    pub(super) fn array_params(&self, columns: &[usize], first: usize) -> String {
        columns
            .iter()
            .enumerate()
            .map(|(n, &s)| format!("${}::{}[]", first + n, self.column(s).param_type()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether any of the columns' values travel as text.
    pub(super) fn any_via_text(&self, columns: &[usize]) -> bool {
        columns.iter().any(|&s| self.column(s).via_text())
    }

    /// `SELECT * FROM unnest($1::type[],…)`, or, when some columns' values
    /// travel as text, `SELECT u.c0, u.c1::inet, … FROM unnest(…) AS
    /// u(c0, c1, …)`: an array parameter cannot hold arrays (a target
    /// column of an array type), so the cast is per element.
    pub(super) fn unnest_select(&self, columns: &[usize], first: usize) -> String {
        let params = self.array_params(columns, first);
        if !self.any_via_text(columns) {
            return format!("SELECT * FROM unnest({params})");
        }
        let exprs: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(n, &s)| self.column(s).cast(&format!("u.c{n}")))
            .collect();
        let names: Vec<String> = (0..columns.len()).map(|n| format!("c{n}")).collect();
        format!(
            "SELECT {} FROM unnest({params}) AS u({})",
            exprs.join(","),
            names.join(",")
        )
    }

    /// Parameter `$n`, cast to the column's type when its value travels as
    /// text (`$n::text::inet`).
    pub(super) fn placeholder(&self, s: usize, n: usize) -> String {
        let column = self.column(s);
        if column.via_text() {
            column.cast(&format!("${n}::text"))
        } else {
            format!("${n}")
        }
    }

    /// Replaces `arena` with one binary array per source column of
    /// `columns` (the values of `rows`), and returns each one's range: the
    /// parameters of an `unnest` statement.
    pub(super) fn encode_array_params(
        &self,
        columns: &[usize],
        rows: &[&[Value]],
        arena: &mut BytesMut,
    ) -> Result<Vec<Option<Range<usize>>>, ConnectorError> {
        arena.clear();
        let mut params = Vec::with_capacity(columns.len());
        for &s in columns {
            let start = arena.len();
            self.encode_array(s, rows.iter().copied(), arena)?;
            params.push(Some(start..arena.len()));
        }
        Ok(params)
    }

    /// Appends a one-dimensional binary array of source column `s`'s values
    /// of `rows` to `out`.
    pub(super) fn encode_array<'r>(
        &self,
        s: usize,
        rows: impl ExactSizeIterator<Item = &'r [Value]>,
        out: &mut BytesMut,
    ) -> Result<(), ConnectorError> {
        let start = out.len();
        out.put_i32(1); // dimensions
        out.put_i32(0); // has nulls, patched below
        let element = if self.column(s).via_text() {
            Type::TEXT.oid()
        } else {
            self.column(s).base_oid
        };
        out.put_u32(element);
        out.put_i32(rows.len() as i32);
        out.put_i32(1); // lower bound
        let mut has_null = false;
        for row in rows {
            let at = out.len();
            out.put_i32(0);
            if self.encode(s, &row[s], out)? {
                let len = (out.len() - at - 4) as i32;
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            } else {
                out[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
                has_null = true;
            }
        }
        if has_null {
            out[start + 4..start + 8].copy_from_slice(&1i32.to_be_bytes());
        }
        Ok(())
    }
}

/// Source column indexes whose `present` flag is set.
pub(super) fn present_columns(present: &[bool]) -> Vec<usize> {
    present
        .iter()
        .enumerate()
        .filter(|(_, p)| **p)
        .map(|(s, _)| s)
        .collect()
}

pub(super) async fn upsert_values(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    present: &[bool],
    rows: &[&[Value]],
) -> Result<(), ConnectorError> {
    let columns = present_columns(present);
    let per_statement = (MAX_BIND_PARAMETERS / columns.len().max(1)).clamp(1, MAX_VALUES_ROWS);
    let head = ctx.insert_head(&columns);
    let tail = ctx.on_conflict(&columns);
    let doing = format!("upsert into `{}`", ctx.table.id);
    let mut params: Vec<Option<Range<usize>>> = Vec::new();
    for chunk in rows.chunks(per_statement) {
        let mut sql =
            String::with_capacity(head.len() + tail.len() + chunk.len() * columns.len() * 6);
        sql.push_str(&head);
        sql.push_str(" VALUES ");
        let mut n = 1;
        for (r, _) in chunk.iter().enumerate() {
            if r > 0 {
                sql.push(',');
            }
            sql.push('(');
            for (c, &s) in columns.iter().enumerate() {
                if c > 0 {
                    sql.push(',');
                }
                sql.push_str(&ctx.placeholder(s, n));
                n += 1;
            }
            sql.push(')');
        }
        sql.push_str(&tail);
        conn.arena.clear();
        params.clear();
        for row in chunk {
            for &s in &columns {
                let start = conn.arena.len();
                let written = ctx.encode(s, &row[s], &mut conn.arena)?;
                params.push(written.then(|| start..conn.arena.len()));
            }
        }
        conn.execute(&sql, &params, true, &doing).await?;
    }
    Ok(())
}

pub(super) async fn upsert_unnest(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    present: &[bool],
    rows: &[&[Value]],
) -> Result<(), ConnectorError> {
    let columns = present_columns(present);
    let sql = format!(
        "{} {}{}",
        ctx.insert_head(&columns),
        ctx.unnest_select(&columns, 1),
        ctx.on_conflict(&columns)
    );
    let params = ctx.encode_array_params(&columns, rows, &mut conn.arena)?;
    conn.execute(
        &sql,
        &params,
        true,
        &format!("upsert into `{}`", ctx.table.id),
    )
    .await?;
    Ok(())
}

/// The binary COPY header: signature, flags, header extension length.
pub(super) const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Stages `rows` with a binary `COPY` and merges them with one prepared
/// `INSERT … SELECT … ON CONFLICT`. A staging table used earlier in the
/// same transaction is emptied first (`TRUNCATE`, which costs a new file,
/// is thus paid only by transactions with several merges into one table).
pub(super) async fn upsert_copy(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    stage: &str,
    stage_used: bool,
    present: &[bool],
    rows: &[&[Value]],
) -> Result<(), ConnectorError> {
    let columns = present_columns(present);
    let list = ctx.column_list(&columns);
    let doing = format!("upsert into `{}`", ctx.table.id);
    // Encode everything first: a conversion error never leaves a COPY open.
    conn.arena.clear();
    conn.arena.put_slice(COPY_HEADER);
    for row in rows {
        conn.arena.put_i16(columns.len() as i16);
        for &s in &columns {
            let at = conn.arena.len();
            conn.arena.put_i32(0);
            let len = if ctx.encode(s, &row[s], &mut conn.arena)? {
                (conn.arena.len() - at - 4) as i32
            } else {
                -1
            };
            conn.arena[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    conn.arena.put_i16(-1);
    let data: Bytes = conn.arena.split().freeze();
    if stage_used {
        conn.simple(&format!("TRUNCATE {stage}"), &doing).await?;
    }
    let copy = conn
        .statement(&format!("COPY {stage} ({list}) FROM STDIN (FORMAT binary)"))
        .await?;
    let fail = |e| from_sql_without_values(&conn.store, &doing, e);
    let sink = conn.client.copy_in::<_, Bytes>(&copy).await.map_err(fail)?;
    futures_util::pin_mut!(sink);
    const PIECE: usize = 1 << 20;
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + PIECE).min(data.len());
        sink.send(data.slice(offset..end)).await.map_err(fail)?;
        offset = end;
    }
    sink.as_mut().finish().await.map_err(fail)?;
    let select: Vec<String> = columns
        .iter()
        .map(|&s| ctx.column(s).cast(&ctx.ident(s)))
        .collect();
    let merge = format!(
        "{} SELECT {} FROM {stage}{}",
        ctx.insert_head(&columns),
        select.join(","),
        ctx.on_conflict(&columns)
    );
    conn.execute(&merge, &[], true, &doing).await?;
    Ok(())
}

pub(super) async fn delete_keys(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    keys: &[&[Value]],
) -> Result<(), ConnectorError> {
    let key_sources = &ctx.map.key_sources;
    let mut sql = String::from("DELETE FROM ");
    push_table(&mut sql, &ctx.table.id);
    if ctx.any_via_text(key_sources) {
        sql.push_str(&format!(
            " WHERE ({}) IN ({})",
            ctx.column_list(key_sources),
            ctx.unnest_select(key_sources, 1)
        ));
    } else if let [s] = key_sources.as_slice() {
        sql.push_str(&format!(
            " WHERE {} = ANY({})",
            ctx.ident(*s),
            ctx.array_params(&[*s], 1)
        ));
    } else {
        sql.push_str(&format!(
            " WHERE ({}) IN (SELECT * FROM unnest({}))",
            ctx.column_list(key_sources),
            ctx.array_params(key_sources, 1)
        ));
    }
    let params = ctx.encode_array_params(key_sources, keys, &mut conn.arena)?;
    conn.execute(
        &sql,
        &params,
        true,
        &format!("delete from `{}`", ctx.table.id),
    )
    .await?;
    Ok(())
}

pub(super) async fn update_key(
    conn: &mut Conn,
    ctx: &Ctx<'_>,
    old_key: &[Value],
    row: &[Value],
) -> Result<(), ConnectorError> {
    let mut sql = String::from("UPDATE ");
    push_table(&mut sql, &ctx.table.id);
    sql.push_str(" SET ");
    conn.arena.clear();
    let mut params = Vec::new();
    let mut n = 1;
    for (s, value) in row.iter().enumerate() {
        if value.is_unchanged() {
            continue;
        }
        if n > 1 {
            sql.push(',');
        }
        sql.push_str(&format!("{}={}", ctx.ident(s), ctx.placeholder(s, n)));
        n += 1;
        let start = conn.arena.len();
        let written = ctx.encode(s, value, &mut conn.arena)?;
        params.push(written.then(|| start..conn.arena.len()));
    }
    sql.push_str(" WHERE ");
    for (i, &s) in ctx.map.key_sources.iter().enumerate() {
        if i > 0 {
            sql.push_str(" AND ");
        }
        sql.push_str(&format!("{}={}", ctx.ident(s), ctx.placeholder(s, n)));
        n += 1;
        let start = conn.arena.len();
        let written = ctx.encode(s, &old_key[s], &mut conn.arena)?;
        params.push(written.then(|| start..conn.arena.len()));
    }
    conn.execute(
        &sql,
        &params,
        false,
        &format!("update a key of `{}`", ctx.table.id),
    )
    .await?;
    Ok(())
}

/// A value already in binary form, bound as a parameter of any type.
#[derive(Debug)]
pub(super) struct Raw<'a>(pub(super) Option<&'a [u8]>);

impl ToSql for Raw<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Some(bytes) => {
                out.put_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        // The bytes were encoded for the target column's type, read from
        // the catalog; the statement's parameter has that type.
        true
    }

    to_sql_checked!();
}
