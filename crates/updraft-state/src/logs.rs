//! Function logs: a bounded, durable tail per function in `logs.redb`.
//!
//! Logs live in their own database so that a burst of log writes never waits
//! behind (or poisons) registry transactions. Callers batch entries: one
//! transaction per batch, not per line.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use updraft_core::LogEntry;

use crate::error::StateError;

const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");

/// Entries kept per function; older ones are dropped.
pub const LOG_ENTRIES_PER_FUNCTION_MAX: u64 = 2000;

/// Durable per-function log tails.
pub struct LogStore {
    db: Database,
    /// Next sequence number per function (loaded lazily from the table).
    next_seq: Mutex<HashMap<String, u64>>,
}

impl LogStore {
    pub fn open(data_dir: &Path) -> Result<LogStore, StateError> {
        std::fs::create_dir_all(data_dir)?;
        let db = Database::create(data_dir.join("logs.redb"))?;
        // Creating the tables is idempotent, so it need not wait for a sync:
        // a crash before the next durable commit just creates them again.
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        txn.open_table(LOGS)?;
        txn.commit()?;
        migrate_to_tenant_keys(&db)?;
        Ok(LogStore {
            db,
            next_seq: Mutex::new(HashMap::new()),
        })
    }

    /// Appends a batch of `(function, entry)` in one transaction and trims
    /// each touched function to [`LOG_ENTRIES_PER_FUNCTION_MAX`].
    pub fn append(&self, batch: &[(String, LogEntry)]) -> Result<(), StateError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut next_seq = self
            .next_seq
            .lock()
            .map_err(|_| StateError::storage("log sequence lock poisoned"))?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LOGS)?;
            let mut touched: HashMap<&str, (u64, u64)> = HashMap::new();
            for (name, entry) in batch {
                let seq = match next_seq.get(name) {
                    Some(seq) => *seq,
                    None => last_seq(&table, name)?.map_or(0, |s| s + 1),
                };
                table.insert((name.as_str(), seq), serde_json::to_vec(entry)?.as_slice())?;
                next_seq.insert(name.clone(), seq + 1);
                touched.entry(name.as_str()).or_insert((seq, seq)).1 = seq;
            }
            for (name, (first_new, last)) in touched {
                let keep_from = (last + 1).saturating_sub(LOG_ENTRIES_PER_FUNCTION_MAX);
                // Entries before `first_new` - MAX were trimmed by earlier batches.
                let from = first_new.saturating_sub(LOG_ENTRIES_PER_FUNCTION_MAX);
                for seq in from..keep_from {
                    table.remove((name, seq))?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The last `n` entries of a function, oldest first.
    pub fn tail(&self, name: &str, n: usize) -> Result<Vec<LogEntry>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let mut out = Vec::new();
        for entry in table.range((name, 0)..=(name, u64::MAX))?.rev().take(n) {
            let (_, value) = entry?;
            out.push(serde_json::from_slice(value.value())?);
        }
        out.reverse();
        Ok(out)
    }

    /// Drops every entry of a function.
    pub fn delete_function(&self, name: &str) -> Result<(), StateError> {
        let mut next_seq = self
            .next_seq
            .lock()
            .map_err(|_| StateError::storage("log sequence lock poisoned"))?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LOGS)?;
            table.retain_in((name, 0)..=(name, u64::MAX), |_, _| false)?;
        }
        txn.commit()?;
        next_seq.remove(name);
        Ok(())
    }
}

/// Moves the logs of functions from before tenants existed (keys without
/// `/`) under the `local` tenant's keys, as the registry does.
fn migrate_to_tenant_keys(db: &Database) -> Result<(), StateError> {
    let mut old = Vec::new();
    {
        let txn = db.begin_read()?;
        for entry in txn.open_table(LOGS)?.iter()? {
            let (key, value) = entry?;
            let (name, seq) = key.value();
            if !name.contains('/') {
                old.push((name.to_string(), seq, value.value().to_vec()));
            }
        }
    }
    if old.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(LOGS)?;
        for (name, seq, value) in &old {
            table.remove((name.as_str(), *seq))?;
            let key = updraft_core::function_key(updraft_core::LOCAL_TENANT, name);
            table.insert((key.as_str(), *seq), value.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

fn last_seq(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    name: &str,
) -> Result<Option<u64>, StateError> {
    Ok(table
        .range((name, 0)..=(name, u64::MAX))?
        .next_back()
        .transpose()?
        .map(|(key, _)| key.value().1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use updraft_core::LogStream;

    fn entry(i: u64) -> LogEntry {
        LogEntry::new(i, "inv", LogStream::Stderr, &format!("line {i}"))
    }

    #[test]
    fn bounded_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let logs = LogStore::open(dir.path()).unwrap();
            let batch: Vec<_> = (0..LOG_ENTRIES_PER_FUNCTION_MAX + 10)
                .map(|i| ("t/f".to_string(), entry(i)))
                .collect();
            logs.append(&batch).unwrap();
            logs.append(&[("t/g".to_string(), entry(7))]).unwrap();
        }
        let logs = LogStore::open(dir.path()).unwrap();
        logs.append(&[("t/f".to_string(), entry(99_999))]).unwrap();
        let all = logs.tail("t/f", usize::MAX).unwrap();
        assert_eq!(all.len() as u64, LOG_ENTRIES_PER_FUNCTION_MAX);
        assert_eq!(all.last().unwrap().message, "line 99999");
        assert_eq!(all.first().unwrap().message, "line 11");
        assert_eq!(logs.tail("t/g", 5).unwrap().len(), 1);
        logs.delete_function("t/f").unwrap();
        assert!(logs.tail("t/f", 5).unwrap().is_empty());
        assert_eq!(logs.tail("t/g", 5).unwrap().len(), 1);
    }

    #[test]
    fn logs_from_before_tenants_move_to_local() {
        let dir = tempfile::tempdir().unwrap();
        LogStore::open(dir.path())
            .unwrap()
            .append(&[("old".to_string(), entry(1))])
            .unwrap();
        let logs = LogStore::open(dir.path()).unwrap();
        assert_eq!(logs.tail("local/old", 5).unwrap().len(), 1);
        assert!(logs.tail("old", 5).unwrap().is_empty());
    }
}
