//! The persistent store: one SQLite database at `<state>/hull.db` holding
//! every sandbox record as JSON, keyed by id with a unique name index.
//!
//! Every write commits before the caller returns (WAL mode,
//! `synchronous=NORMAL`: durable across a daemon crash; the last commits can
//! be lost on a power failure, when the sandboxes are gone too).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use hull_api::Sandbox;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt record for sandbox {id}")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What the daemon keeps about a sandbox beyond its API view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub sandbox: Sandbox,
    /// TTL the sandbox was created with (sessions extend by it on activity).
    pub ttl_seconds: Option<u64>,
    /// Start time of `sandbox.pid` (clock ticks since boot).
    #[serde(default)]
    pub start_time: u64,
    /// Seconds since the epoch of the last API call that touched it.
    #[serde(default)]
    pub last_activity: u64,
    /// OOM kills already recorded as events.
    #[serde(default)]
    pub oom_seen: u64,
    /// Ports exposed through the daemon (`ports`), by port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<hull_api::PortExposure>,
    /// The network policy with its secrets (`sandbox.network` is redacted).
    #[serde(default)]
    pub network: hull_api::NetworkPolicy,
    /// The pool slot of its network namespace, while it has one.
    #[serde(default)]
    pub net_slot: Option<u32>,
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS sandboxes (
                 id   TEXT PRIMARY KEY,
                 name TEXT UNIQUE,
                 body TEXT NOT NULL
             );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Insert or replace a record.
    pub fn put(&self, r: &Record) -> Result<(), StoreError> {
        let body = serde_json::to_string(r).map_err(|source| StoreError::Corrupt {
            id: r.sandbox.id.clone(),
            source,
        })?;
        self.conn().execute(
            "INSERT INTO sandboxes (id, name, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, body = excluded.body",
            params![r.sandbox.id, r.sandbox.name, body],
        )?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM sandboxes WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|source| StoreError::Corrupt {
                id: id.into(),
                source,
            })
        })
        .transpose()
    }

    pub fn all(&self) -> Result<Vec<Record>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, body FROM sandboxes ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            out.push(
                serde_json::from_str(&body).map_err(|source| StoreError::Corrupt { id, source })?,
            );
        }
        Ok(out)
    }

    pub fn clear(&self) -> Result<(), StoreError> {
        self.conn().execute("DELETE FROM sandboxes", [])?;
        Ok(())
    }
}
