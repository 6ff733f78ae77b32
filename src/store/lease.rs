//! Leases `<prefix><role>:leader`: which one instance does a role's work (`top`: the
//! top-products refresher; `reconcile`: the scheduled pass). The atomic take-or-renew
//! step is lua/lease.lua.

use std::time::Duration;

use super::{RedisStore, StoreResult};

impl RedisStore {
    /// Takes or renews the lease `<prefix><role>:leader`; true while `owner` holds
    /// it. One instance at a time does a role's work; when it stops renewing,
    /// another takes over after `ttl`.
    pub async fn hold_lease(&self, role: &str, owner: &str, ttl: Duration) -> StoreResult<bool> {
        let mut invocation = self.lease_script.prepare_invoke();
        invocation
            .key(format!("{}{role}:leader", self.prefix))
            .arg(owner)
            .arg(ttl.as_millis() as u64);
        self.run("lease", |mut c| async move {
            invocation.invoke_async::<i64>(&mut c).await.map(|n| n == 1)
        })
        .await
    }
}
