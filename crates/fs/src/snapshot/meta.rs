//! Snapshot metadata: one SQLite database per store, shared by every
//! backend.
//!
//! Each snapshot is a row with a numeric id that never changes (backends
//! name their storage by it, so `commit`, which changes key and kind, moves
//! no files) and is never reused (`AUTOINCREMENT`), a unique key, a kind, a
//! parent id (a foreign key, so a parent cannot disappear under its
//! children) and timestamps; labels are rows of their own.
//!
//! A backend works in a [`Tx`]: [`MetaStore::write`] locks the store's one
//! connection and opens an immediate transaction; the backend checks and
//! changes rows, moves its files in step, then calls [`Tx::commit`].
//! Dropping a `Tx` without committing rolls it back. Every check the
//! contract needs (key free, parent committed, no children) is here, so
//! backends only do file work.
//!
//! Durability: WAL mode with `synchronous=NORMAL`, like the sandbox store:
//! a committed transaction survives the process being killed; after a power
//! failure the last few may be lost.
//!
//! Limits: one connection per store, so operations are serialised; the
//! schema is versioned (`PRAGMA user_version`) and a newer one is refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Info, Kind, LabelChanges, Labels, MAX_LABELS, SnapshotError};

/// The schema this code writes and reads.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
    CREATE TABLE snapshots (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        key     TEXT NOT NULL UNIQUE,
        kind    TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
        parent  INTEGER REFERENCES snapshots(id),
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE INDEX snapshots_by_parent ON snapshots(parent);
    CREATE TABLE labels (
        snapshot INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        name     TEXT NOT NULL,
        value    TEXT NOT NULL,
        PRIMARY KEY (snapshot, name)
    );
";

const SELECT: &str = "SELECT s.id, s.parent, s.key, s.kind, p.key, s.created, s.updated
     FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent";

/// A snapshot's row: its id, its parent's id, and what the API shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: i64,
    pub parent_id: Option<i64>,
    pub info: Info,
}

/// The metadata database of one store.
pub struct MetaStore {
    conn: Mutex<Connection>,
}

impl MetaStore {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        let conn = Connection::open(path)?;
        // Exclusive locking keeps WAL's index in the heap instead of a
        // memory-mapped `-shm` file: on a full filesystem (a full btrfs
        // image) touching an unallocated page of that mapping is SIGBUS,
        // not an error. Only one process opens a store anyway (flock).
        conn.execute_batch(
            "PRAGMA locking_mode=EXCLUSIVE;
             PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA foreign_keys=ON;
             PRAGMA busy_timeout=5000;",
        )?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        match version {
            0 => conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))?,
            SCHEMA_VERSION => {}
            v => {
                return Err(SnapshotError::Corrupt(format!(
                    "{} has schema version {v}; this hull understands {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back (Tx's
        // Drop), so the connection is fine to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock the store and open a write transaction.
    pub fn write(&self) -> Result<Tx<'_>, SnapshotError> {
        let conn = self.lock();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Tx { conn, open: true })
    }

    /// Lock the store and open a read transaction (a consistent view).
    pub fn read(&self) -> Result<Tx<'_>, SnapshotError> {
        let conn = self.lock();
        conn.execute_batch("BEGIN")?;
        Ok(Tx { conn, open: true })
    }
}

/// An open transaction holding the store's lock. Rolled back when dropped
/// uncommitted.
pub struct Tx<'a> {
    conn: MutexGuard<'a, Connection>,
    open: bool,
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

type Row = (i64, Option<i64>, String, String, Option<String>, i64, i64);

/// The columns of [`SELECT`] as a [`Row`].
fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

/// A [`Row`] as a [`Record`], with the labels `labels` gives for its id.
fn to_record(
    row: Row,
    labels: impl FnOnce(i64) -> Result<Labels, SnapshotError>,
) -> Result<Record, SnapshotError> {
    let (id, parent_id, key, kind, parent, created, updated) = row;
    let kind = Kind::parse(&kind)
        .ok_or_else(|| SnapshotError::Corrupt(format!("snapshot {key:?} has kind {kind:?}")))?;
    Ok(Record {
        id,
        parent_id,
        info: Info {
            key,
            kind,
            parent,
            labels: labels(id)?,
            created: u64::try_from(created).unwrap_or(0),
            updated: u64::try_from(updated).unwrap_or(0),
        },
    })
}

impl Tx<'_> {
    /// Commit. On error the transaction is rolled back when `self` drops.
    pub fn commit(mut self) -> Result<(), SnapshotError> {
        self.conn.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }

    fn record(&self, row: Row) -> Result<Record, SnapshotError> {
        to_record(row, |id| {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT name, value FROM labels WHERE snapshot = ?1")?;
            let labels = stmt
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Labels, _>>()?;
            Ok(labels)
        })
    }

    fn one(
        &self,
        clause: &str,
        arg: &dyn rusqlite::ToSql,
    ) -> Result<Option<Record>, SnapshotError> {
        let row: Option<Row> = self
            .conn
            .prepare_cached(&format!("{SELECT} WHERE {clause}"))?
            .query_row([arg], read_row)
            .optional()?;
        row.map(|row| self.record(row)).transpose()
    }

    /// The snapshot named `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
        self.one("s.key = ?1", &key)
    }

    /// The snapshot named `key`, or `NotFound`.
    pub fn require(&self, key: &str) -> Result<Record, SnapshotError> {
        self.get(key)?
            .ok_or_else(|| SnapshotError::NotFound { key: key.into() })
    }

    /// The snapshot with row id `id`.
    pub fn by_id(&self, id: i64) -> Result<Record, SnapshotError> {
        self.one("s.id = ?1", &id)?
            .ok_or_else(|| SnapshotError::Corrupt(format!("no snapshot with id {id}")))
    }

    /// `AlreadyExists` unless `key` is free.
    pub fn ensure_free(&self, key: &str) -> Result<(), SnapshotError> {
        let taken: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM snapshots WHERE key = ?1)")?
            .query_row([key], |r| r.get(0))?;
        if taken {
            return Err(SnapshotError::AlreadyExists { key: key.into() });
        }
        Ok(())
    }

    /// Resolve a parent argument: `None` stays `None`; a key must name a
    /// committed snapshot (`NotFound`, `WrongKind` otherwise).
    pub fn committed_parent(&self, parent: Option<&str>) -> Result<Option<Record>, SnapshotError> {
        let Some(key) = parent else { return Ok(None) };
        super::validate_key(key)?;
        let rec = self.require(key)?;
        if rec.info.kind != Kind::Committed {
            return Err(SnapshotError::WrongKind {
                key: key.into(),
                kind: rec.info.kind,
                needs: "a parent must be a committed snapshot",
            });
        }
        Ok(Some(rec))
    }

    /// Row ids of `id` and its ancestors, `id` first.
    pub fn chain(&self, id: i64) -> Result<Vec<i64>, SnapshotError> {
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE c(id, parent, depth) AS (
                 SELECT id, parent, 0 FROM snapshots WHERE id = ?1
                 UNION ALL
                 SELECT s.id, s.parent, c.depth + 1 FROM snapshots s JOIN c ON s.id = c.parent
                 WHERE c.depth < 100000
             )
             SELECT id FROM c ORDER BY depth",
        )?;
        let ids = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        Ok(ids)
    }

    /// Insert a new snapshot; the caller has checked the key is free and
    /// the parent committed.
    pub fn insert(
        &self,
        key: &str,
        kind: Kind,
        parent: Option<&Record>,
        labels: &Labels,
    ) -> Result<Record, SnapshotError> {
        let now = super::now() as i64;
        self.conn
            .prepare_cached(
                "INSERT INTO snapshots (key, kind, parent, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
            )?
            .execute(params![key, kind.as_str(), parent.map(|p| p.id), now])
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    SnapshotError::AlreadyExists { key: key.into() }
                }
                _ => e.into(),
            })?;
        let id = self.conn.last_insert_rowid();
        self.replace_labels(id, labels)?;
        self.by_id(id)
    }

    fn replace_labels(&self, id: i64, labels: &Labels) -> Result<(), SnapshotError> {
        self.conn
            .prepare_cached("DELETE FROM labels WHERE snapshot = ?1")?
            .execute([id])?;
        let mut ins = self
            .conn
            .prepare_cached("INSERT INTO labels (snapshot, name, value) VALUES (?1, ?2, ?3)")?;
        for (k, v) in labels {
            ins.execute(params![id, k, v])?;
        }
        Ok(())
    }

    /// Turn active row `id` into committed `name` with `labels`.
    pub fn commit_active(
        &self,
        id: i64,
        name: &str,
        labels: &Labels,
    ) -> Result<Record, SnapshotError> {
        let now = super::now() as i64;
        self.conn
            .prepare_cached(
                "UPDATE snapshots SET key = ?2, kind = 'committed', created = ?3, updated = ?3
                 WHERE id = ?1 AND kind = 'active'",
            )?
            .execute(params![id, name, now])?;
        self.replace_labels(id, labels)?;
        self.by_id(id)
    }

    /// Keys of the snapshots whose parent is `id`, sorted.
    pub fn children(&self, id: i64) -> Result<Vec<String>, SnapshotError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM snapshots WHERE parent = ?1 ORDER BY key")?;
        let keys = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(keys)
    }

    /// Delete row `id` (and its labels). `InUse` if it has children.
    pub fn delete(&self, rec: &Record) -> Result<(), SnapshotError> {
        let children = self.children(rec.id)?;
        if !children.is_empty() {
            return Err(SnapshotError::InUse {
                key: rec.info.key.clone(),
                children,
            });
        }
        self.conn
            .prepare_cached("DELETE FROM snapshots WHERE id = ?1")?
            .execute([rec.id])?;
        Ok(())
    }

    /// Apply label changes to row `id`.
    pub fn update_labels(&self, id: i64, changes: &LabelChanges) -> Result<Record, SnapshotError> {
        for (name, value) in changes {
            super::validate_label(name, value.as_deref())?;
            match value {
                Some(v) => self
                    .conn
                    .prepare_cached(
                        "INSERT INTO labels (snapshot, name, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT(snapshot, name) DO UPDATE SET value = excluded.value",
                    )?
                    .execute(params![id, name, v])?,
                None => self
                    .conn
                    .prepare_cached("DELETE FROM labels WHERE snapshot = ?1 AND name = ?2")?
                    .execute(params![id, name])?,
            };
        }
        let count: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM labels WHERE snapshot = ?1")?
            .query_row([id], |r| r.get(0))?;
        if count > MAX_LABELS as i64 {
            return Err(SnapshotError::InvalidArgument(format!(
                "the update would leave {count} labels; at most {MAX_LABELS} are allowed"
            )));
        }
        self.conn
            .prepare_cached("UPDATE snapshots SET updated = ?2 WHERE id = ?1")?
            .execute(params![id, super::now() as i64])?;
        self.by_id(id)
    }

    /// Every snapshot, ordered by key.
    pub fn list(&self) -> Result<Vec<Record>, SnapshotError> {
        let mut labels: BTreeMap<i64, Labels> = BTreeMap::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT snapshot, name, value FROM labels")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (id, k, v) = row?;
                labels.entry(id).or_default().insert(k, v);
            }
        }
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT} ORDER BY s.key"))?;
        let rows = stmt
            .query_map([], read_row)?
            .collect::<Result<Vec<Row>, _>>()?;
        rows.into_iter()
            .map(|row| to_record(row, |id| Ok(labels.remove(&id).unwrap_or_default())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&dir.path().join("metadata.db")).unwrap();
        (dir, m)
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn insert_commit_chain_delete() {
        let (_d, m) = store();
        let tx = m.write().unwrap();
        let a = tx
            .insert("a", Kind::Active, None, &labels(&[("x", "1")]))
            .unwrap();
        let base = tx.commit_active(a.id, "base", &Labels::new()).unwrap();
        assert_eq!(base.id, a.id);
        assert_eq!(base.info.kind, Kind::Committed);
        assert!(base.info.labels.is_empty());
        let p = tx.committed_parent(Some("base")).unwrap().unwrap();
        let c = tx
            .insert("c", Kind::Active, Some(&p), &Labels::new())
            .unwrap();
        assert_eq!(c.info.parent.as_deref(), Some("base"));
        assert_eq!(tx.chain(c.id).unwrap(), vec![c.id, base.id]);
        assert!(matches!(
            tx.committed_parent(Some("c")),
            Err(SnapshotError::WrongKind { .. })
        ));
        assert!(matches!(
            tx.ensure_free("c"),
            Err(SnapshotError::AlreadyExists { .. })
        ));
        assert!(matches!(
            tx.insert("c", Kind::View, None, &Labels::new()),
            Err(SnapshotError::AlreadyExists { .. })
        ));
        match tx.delete(&base) {
            Err(SnapshotError::InUse { children, .. }) => assert_eq!(children, vec!["c"]),
            other => panic!("{other:?}"),
        }
        tx.delete(&c).unwrap();
        tx.delete(&base).unwrap();
        tx.commit().unwrap();
        assert!(m.read().unwrap().list().unwrap().is_empty());
    }

    #[test]
    fn rollback_on_drop_and_ids_never_reused() {
        let (_d, m) = store();
        {
            let tx = m.write().unwrap();
            tx.insert("gone", Kind::Active, None, &Labels::new())
                .unwrap();
        }
        assert!(m.read().unwrap().get("gone").unwrap().is_none());
        let tx = m.write().unwrap();
        let a = tx.insert("a", Kind::Active, None, &Labels::new()).unwrap();
        tx.delete(&a).unwrap();
        let b = tx.insert("b", Kind::Active, None, &Labels::new()).unwrap();
        tx.commit().unwrap();
        assert!(b.id > a.id);
    }

    #[test]
    fn labels_update() {
        let (_d, m) = store();
        let tx = m.write().unwrap();
        let a = tx
            .insert(
                "a",
                Kind::View,
                None,
                &labels(&[("keep", "1"), ("drop", "2")]),
            )
            .unwrap();
        let changes: LabelChanges = [
            ("drop".to_string(), None),
            ("new".to_string(), Some("3".to_string())),
            ("keep".to_string(), Some("one".to_string())),
        ]
        .into();
        let a = tx.update_labels(a.id, &changes).unwrap();
        assert_eq!(a.info.labels, labels(&[("keep", "one"), ("new", "3")]));
        let too_many: LabelChanges = (0..MAX_LABELS)
            .map(|i| (format!("l{i}"), Some(String::new())))
            .collect();
        assert!(matches!(
            tx.update_labels(a.id, &too_many),
            Err(SnapshotError::InvalidArgument(_))
        ));
        tx.commit().unwrap();
    }

    #[test]
    fn newer_schema_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        drop(MetaStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        assert!(matches!(
            MetaStore::open(&path),
            Err(SnapshotError::Corrupt(_))
        ));
    }
}
