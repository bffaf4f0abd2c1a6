//! An in-memory metadata store for tests: ordered maps behind one lock, nothing durable.
//! Flushes return at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::future::BoxFuture;

use super::{
    Batch, BatchOp, Entries, MetaError, MetaTable, MetadataStore, SwapOutcome, Table, TableDump,
};

type Tables = HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A [`MetadataStore`] in memory. One lock covers every table, which makes batches atomic.
#[derive(Clone, Default)]
pub struct MemoryMetaStore {
    tables: Arc<RwLock<Tables>>,
}

impl MemoryMetaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

// No operation panics while holding the lock, so a poisoned lock still guards whole maps.
fn read(tables: &RwLock<Tables>) -> RwLockReadGuard<'_, Tables> {
    tables.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(tables: &RwLock<Tables>) -> RwLockWriteGuard<'_, Tables> {
    tables.write().unwrap_or_else(PoisonError::into_inner)
}

impl MetadataStore for MemoryMetaStore {
    fn reads_quickly(&self) -> bool {
        true
    }

    fn dump(&self, except: &[&str]) -> Result<Vec<TableDump>, MetaError> {
        let tables = read(&self.tables);
        let mut dump: Vec<TableDump> = tables
            .iter()
            .filter(|(name, _)| !except.contains(&name.as_str()))
            .map(|(name, entries)| TableDump {
                name: name.clone(),
                entries: entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect();
        dump.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(dump)
    }

    fn table(&self, name: &str) -> Result<Table, MetaError> {
        if name.is_empty() {
            return Err(MetaError::InvalidTableName {
                name: name.to_owned(),
            });
        }
        write(&self.tables).entry(name.to_owned()).or_default();
        Ok(Arc::new(MemoryTable {
            name: name.to_owned(),
            tables: Arc::clone(&self.tables),
        }))
    }

    fn apply_batch(&self, batch: Batch) -> Result<(), MetaError> {
        if let Some(name) = batch.tables().into_iter().find(|t| t.is_empty()) {
            return Err(MetaError::InvalidTableName {
                name: name.to_owned(),
            });
        }
        let mut tables = write(&self.tables);
        for op in batch.into_ops() {
            match op {
                BatchOp::Insert { table, key, value } => {
                    tables.entry(table).or_default().insert(key, value);
                }
                BatchOp::Remove { table, key } => {
                    tables.entry(table).or_default().remove(&key);
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), MetaError> {
        Ok(())
    }

    fn flush_async(&self) -> BoxFuture<'static, Result<(), MetaError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

struct MemoryTable {
    name: String,
    tables: Arc<RwLock<Tables>>,
}

impl MemoryTable {
    fn with<R>(&self, f: impl FnOnce(&BTreeMap<Vec<u8>, Vec<u8>>) -> R) -> R {
        let tables = read(&self.tables);
        f(&tables[&self.name])
    }

    fn with_mut<R>(&self, f: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>) -> R) -> R {
        let mut tables = write(&self.tables);
        f(tables.get_mut(&self.name).unwrap())
    }
}

impl MetaTable for MemoryTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.with(|t| t.get(key).cloned()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.with_mut(|t| t.insert(key.to_vec(), value.to_vec())))
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.with_mut(|t| t.remove(key)))
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<SwapOutcome, MetaError> {
        Ok(self.with_mut(|t| {
            let current = t.get(key);
            if current.map(Vec::as_slice) != expected {
                return SwapOutcome::Conflict {
                    current: current.cloned(),
                };
            }
            match new {
                Some(value) => t.insert(key.to_vec(), value.to_vec()),
                None => t.remove(key),
            };
            SwapOutcome::Swapped
        }))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries {
        // A copy, so no lock outlives the call.
        let entries: Vec<_> = self.with(|t| {
            t.range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| Ok((k.clone(), v.clone())))
                .collect()
        });
        Box::new(entries.into_iter())
    }

    fn len(&self) -> Result<usize, MetaError> {
        Ok(self.with(BTreeMap::len))
    }

    fn is_empty(&self) -> Result<bool, MetaError> {
        Ok(self.with(BTreeMap::is_empty))
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::contract;
    use super::*;

    #[test]
    fn tables_are_separate_ordered_maps() {
        contract::tables_are_separate_ordered_maps(&MemoryMetaStore::new());
    }

    #[test]
    fn a_dump_holds_every_table_in_order() {
        contract::a_dump_holds_every_table_in_order(&MemoryMetaStore::new());
    }

    #[test]
    fn empty_table_name_is_refused() {
        contract::empty_table_name_is_refused(&MemoryMetaStore::new());
    }

    #[test]
    fn compare_and_swap_reports_conflicts() {
        contract::compare_and_swap_reports_conflicts(&MemoryMetaStore::new());
    }

    #[test]
    fn batches_span_tables() {
        contract::batches_span_tables(&MemoryMetaStore::new());
    }

    #[test]
    fn flushes_return() {
        contract::flushes_return(&MemoryMetaStore::new());
    }
}
