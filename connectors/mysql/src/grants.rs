//! The current user's grants, as both `check`s read them.

use callosum_api::{ConnectorError, TableId};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use std::collections::HashSet;

/// The current user's privileges, read from `information_schema` (global,
/// database and table grants); grants held only through a role are not
/// seen.
pub(crate) struct Grants {
    /// `'user'@'host'`, ready to paste into a `GRANT`.
    pub user: String,
    /// `(privilege, database, table)`; `None` database means global, `None`
    /// table database-wide.
    privileges: HashSet<(String, Option<String>, Option<String>)>,
}

impl Grants {
    pub async fn read(conn: &mut Conn, store: &str) -> Result<Grants, ConnectorError> {
        let fail = |e| crate::error::classify(e, store, "reading the user's privileges");
        let user: Option<String> = conn
            .query_first(
                "SELECT CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
                 SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
            )
            .await
            .map_err(fail)?;
        let user = user.unwrap_or_default();
        let rows: Vec<(String, Option<String>, Option<String>)> = conn
            .exec(
                "SELECT PRIVILEGE_TYPE, NULL, NULL FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ? \
                 UNION ALL SELECT PRIVILEGE_TYPE, TABLE_SCHEMA, NULL FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = ? \
                 UNION ALL SELECT PRIVILEGE_TYPE, TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLE_PRIVILEGES WHERE GRANTEE = ?",
                (&user, &user, &user),
            )
            .await
            .map_err(fail)?;
        Ok(Grants {
            user,
            privileges: rows.into_iter().collect(),
        })
    }

    /// Whether `privilege` is granted globally.
    pub fn global(&self, privilege: &str) -> bool {
        self.privileges
            .iter()
            .any(|(p, db, _)| db.is_none() && p == privilege)
    }

    /// Whether `privilege` is granted on `table`: globally, on its database
    /// (a database grant's name may hold `\`-escaped wildcards) or on the
    /// table itself.
    pub fn on_table(&self, privilege: &str, table: &TableId) -> bool {
        self.privileges.iter().any(|(p, db, t)| {
            p == privilege
                && match (db, t) {
                    (None, _) => true,
                    (Some(db), None) => db.replace('\\', "") == table.namespace,
                    (Some(db), Some(t)) => *db == table.namespace && *t == table.name,
                }
        })
    }
}
