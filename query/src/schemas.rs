//! The SQL namespace: catalog `tidemark` with schema `public` (one table per live datasource,
//! resolved at planning time so spec updates show at once) and schema `sys` (system tables).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::Result;
use tidemark_storage::snapshot::SnapshotSource;

use crate::scope::Scope;
use crate::table::DatasourceTable;

/// The datasources `scope` can see.
#[derive(Debug)]
pub struct DatasourceSchema {
    pub(crate) source: Arc<dyn SnapshotSource>,
    pub(crate) scope: Scope,
}

#[async_trait]
impl SchemaProvider for DatasourceSchema {
    fn table_names(&self) -> Vec<String> {
        self.scope.table_names(self.source.as_ref())
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(
            DatasourceTable::open(name, self.source.clone(), self.scope.clone())
                .map(|t| Arc::new(t) as Arc<dyn TableProvider>),
        )
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|t| t == name)
    }
}

#[derive(Debug)]
pub struct SystemSchema {
    pub(crate) source: Arc<dyn SnapshotSource>,
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        self.source.system_table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(batch) = self.source.system_table(name) else {
            return Ok(None);
        };
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.source.system_table_names().iter().any(|t| t == name)
    }
}
