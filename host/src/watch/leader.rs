//! Leader election (skafos' `leader_election_ns`): a `coordination.k8s.io/v1` Lease, or a
//! ConfigMap record as client-go's legacy lock (annotation
//! `control-plane.alpha.kubernetes.io/leader`). Timing follows client-go: a record is expired
//! when it has not changed for its lease duration as observed by this process; the leader steps
//! down when it could not renew within the renew deadline (before anyone else may take over),
//! and releases the lock on a clean shutdown so a standby takes over at once.

use std::time::{Duration, Instant};

use chrono_lite::now_rfc3339;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Which object holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LockKind {
    /// A `coordination.k8s.io/v1` Lease (the default).
    Lease,
    /// A ConfigMap with a leader annotation (as skafos does).
    Configmap,
}

/// Leader election settings; defaults are client-go's.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the lock object.
    pub namespace: String,
    /// Name of the lock object.
    pub name: String,
    /// This process's identity.
    pub identity: String,
    /// Lease or ConfigMap.
    pub lock: LockKind,
    /// How long a record stays valid without renewal (client-go: 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down (client-go: 10 s).
    pub renew_deadline: Duration,
    /// Interval between attempts (client-go: 2 s).
    pub retry_period: Duration,
}

/// The identity: the Pod name (`HOSTNAME`) with a random suffix when absent.
pub fn default_identity() -> String {
    let suffix = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{:08x}", h.finish() as u32)
    };
    match std::env::var("HOSTNAME") {
        Ok(host) if !host.is_empty() => host,
        _ => format!("kubelisten-{suffix}"),
    }
}

/// The lock record, as client-go's `LeaderElectionRecord`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(default)]
    holder_identity: String,
    #[serde(default)]
    lease_duration_seconds: i64,
    #[serde(default)]
    acquire_time: String,
    #[serde(default)]
    renew_time: String,
    #[serde(default)]
    leader_transitions: i64,
}

const ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

struct Elector {
    config: LeaderConfig,
    client: Client,
    observed: Option<(Record, Instant)>,
}

impl Elector {
    async fn get(&self) -> Result<Option<(Record, String)>, kube::Error> {
        let ns = &self.config.namespace;
        match self.config.lock {
            LockKind::Lease => {
                let api: Api<Lease> = Api::namespaced(self.client.clone(), ns);
                Ok(api.get_opt(&self.config.name).await?.map(|lease| {
                    let spec = lease.spec.unwrap_or_default();
                    let record = Record {
                        holder_identity: spec.holder_identity.unwrap_or_default(),
                        lease_duration_seconds: spec.lease_duration_seconds.map_or(0, i64::from),
                        acquire_time: spec
                            .acquire_time
                            .map(|t| t.0.to_string())
                            .unwrap_or_default(),
                        renew_time: spec.renew_time.map(|t| t.0.to_string()).unwrap_or_default(),
                        leader_transitions: spec.lease_transitions.map_or(0, i64::from),
                    };
                    (record, lease.metadata.resource_version.unwrap_or_default())
                }))
            }
            LockKind::Configmap => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                Ok(api.get_opt(&self.config.name).await?.map(|cm| {
                    let record = cm
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION))
                        .and_then(|text| serde_json::from_str(text).ok())
                        .unwrap_or_default();
                    (record, cm.metadata.resource_version.unwrap_or_default())
                }))
            }
        }
    }

    /// Creates (rv `None`) or replaces (optimistic concurrency on `rv`) the lock record.
    async fn put(&self, record: &Record, rv: Option<String>) -> Result<(), kube::Error> {
        let ns = &self.config.namespace;
        let meta = ObjectMeta {
            name: Some(self.config.name.clone()),
            namespace: Some(ns.clone()),
            resource_version: rv.clone(),
            ..ObjectMeta::default()
        };
        let pp = PostParams::default();
        match self.config.lock {
            LockKind::Lease => {
                let time = |t: &str| t.parse().ok().map(MicroTime);
                let lease = Lease {
                    metadata: meta,
                    spec: Some(LeaseSpec {
                        holder_identity: Some(record.holder_identity.clone()),
                        lease_duration_seconds: i32::try_from(record.lease_duration_seconds).ok(),
                        acquire_time: time(&record.acquire_time),
                        renew_time: time(&record.renew_time),
                        lease_transitions: i32::try_from(record.leader_transitions).ok(),
                        ..LeaseSpec::default()
                    }),
                };
                let api: Api<Lease> = Api::namespaced(self.client.clone(), ns);
                match rv {
                    None => api.create(&pp, &lease).await.map(drop),
                    Some(_) => api.replace(&self.config.name, &pp, &lease).await.map(drop),
                }
            }
            LockKind::Configmap => {
                let mut meta = meta;
                let text = serde_json::to_string(record).map_err(kube::Error::SerdeError)?;
                meta.annotations = Some([(ANNOTATION.to_string(), text)].into());
                let cm = ConfigMap {
                    metadata: meta,
                    ..ConfigMap::default()
                };
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                match rv {
                    None => api.create(&pp, &cm).await.map(drop),
                    Some(_) => api.replace(&self.config.name, &pp, &cm).await.map(drop),
                }
            }
        }
    }

    /// One attempt to acquire or renew; returns whether this process holds the lock now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = now_rfc3339();
        let me = &self.config.identity;
        let duration = i64::try_from(self.config.lease_duration.as_secs())
            .unwrap_or(15)
            .max(1);
        let Some((current, rv)) = self.get().await? else {
            let record = Record {
                holder_identity: me.clone(),
                lease_duration_seconds: duration,
                acquire_time: now.clone(),
                renew_time: now,
                leader_transitions: 0,
            };
            return match self.put(&record, None).await {
                Ok(()) => Ok(true),
                // Another replica created the lock first: it leads, we stand by.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        // Track when the record last changed, by our own clock.
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != current);
        if changed {
            self.observed = Some((current.clone(), Instant::now()));
        }
        let observed_at = self
            .observed
            .as_ref()
            .map_or_else(Instant::now, |(_, at)| *at);
        let held_by_me = current.holder_identity == *me;
        let lease =
            Duration::from_secs(u64::try_from(current.lease_duration_seconds.max(1)).unwrap_or(15));
        let expired = current.holder_identity.is_empty() || observed_at.elapsed() > lease;
        if !held_by_me && !expired {
            return Ok(false);
        }
        let record = Record {
            holder_identity: me.clone(),
            lease_duration_seconds: duration,
            acquire_time: if held_by_me {
                current.acquire_time.clone()
            } else {
                now.clone()
            },
            renew_time: now,
            leader_transitions: current.leader_transitions + i64::from(!held_by_me),
        };
        match self.put(&record, Some(rv)).await {
            Ok(()) => {
                self.observed = Some((record, Instant::now()));
                Ok(true)
            }
            // Someone else wrote first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives the lock up (holder cleared, 1 s duration) so a standby takes over at once.
    async fn release(&mut self) {
        let Ok(Some((current, rv))) = self.get().await else {
            return;
        };
        if current.holder_identity != self.config.identity {
            return;
        }
        let record = Record {
            holder_identity: String::new(),
            lease_duration_seconds: 1,
            renew_time: now_rfc3339(),
            ..current
        };
        match self.put(&record, Some(rv)).await {
            Ok(()) => tracing::info!(identity = %self.config.identity, "leader lock released"),
            Err(err) => tracing::warn!(error = %err, "cannot release the leader lock"),
        }
    }
}

/// Runs the election until `cancel` (then releases the lock if held) or until leadership is
/// lost (then returns at once). `leader` follows whether this process is the leader.
pub async fn run(
    client: Client,
    config: LeaderConfig,
    leader: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let retry = config.retry_period;
    let renew_deadline = config.renew_deadline;
    let mut elector = Elector {
        config,
        client,
        observed: None,
    };
    let mut last_renewed: Option<Instant> = None;
    loop {
        let attempt = tokio::select! {
            () = cancel.cancelled() => break,
            result = tokio::time::timeout(retry.max(Duration::from_secs(1)) * 2, elector.try_acquire_or_renew()) => result,
        };
        // `Some(false)`: someone else holds the lock; `None`: the attempt itself failed.
        let held = match attempt {
            Ok(Ok(held)) => Some(held),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "leader election attempt failed");
                None
            }
            Err(_) => {
                tracing::warn!("leader election attempt timed out");
                None
            }
        };
        let is_leader = *leader.borrow();
        if is_leader && held == Some(false) {
            tracing::error!(identity = %elector.config.identity, "lost the leadership: another process holds the lock");
            leader.send_replace(false);
            return;
        }
        if held == Some(true) {
            last_renewed = Some(Instant::now());
            if !is_leader {
                tracing::info!(identity = %elector.config.identity, lock = ?elector.config.lock, "became the leader");
                leader.send_replace(true);
            }
        } else if is_leader && last_renewed.is_none_or(|at| at.elapsed() >= renew_deadline) {
            tracing::error!(identity = %elector.config.identity, "lost the leadership: could not renew within the renew deadline");
            leader.send_replace(false);
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(retry) => {}
        }
    }
    if *leader.borrow() {
        elector.release().await;
        leader.send_replace(false);
    }
}

/// RFC 3339 timestamps with microseconds, as the API server expects for MicroTime.
mod chrono_lite {
    pub fn now_rfc3339() -> String {
        k8s_openapi::jiff::Timestamp::now().to_string()
    }
}
