//! A watch on a key prefix that reports compaction and broken streams as
//! errors, so that callers (the watch cache) resync instead of missing events.

use crate::{KeyValue, KvError, KvStore, Result};

/// One change under the watched prefix.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete {
        key: String,
        /// The value before deletion, when etcd still had it.
        prev: Option<KeyValue>,
        mod_revision: i64,
    },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

pub struct WatchStream {
    kv: KvStore,
    endpoint: String,
    inner: etcd_client::WatchStream,
    start_revision: i64,
}

pub(crate) async fn open(kv: &KvStore, prefix: &str, start_revision: i64) -> Result<WatchStream> {
    let (inner, endpoint) = kv.raw_watch(prefix, start_revision).await?;
    Ok(WatchStream {
        kv: kv.clone(),
        endpoint,
        inner,
        start_revision,
    })
}

impl WatchStream {
    /// The next batch of events and the revision they bring the watcher to.
    /// Errors mean the stream is over: resync (list, then watch again).
    pub async fn next(&mut self) -> Result<(Vec<WatchEvent>, i64)> {
        loop {
            let resp = match self.inner.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    self.kv.report_failed_endpoint(&self.endpoint);
                    return Err(KvError::WatchCanceled(format!(
                        "stream from {} closed",
                        self.endpoint
                    )));
                }
                Err(e) => {
                    self.kv.report_failed_endpoint(&self.endpoint);
                    return Err(KvError::Etcd(e));
                }
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return Err(KvError::Compacted {
                        requested: self.start_revision,
                        compact_revision: resp.compact_revision(),
                    });
                }
                self.kv.report_failed_endpoint(&self.endpoint);
                return Err(KvError::WatchCanceled(resp.cancel_reason().to_string()));
            }
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            if resp.events().is_empty() {
                // Creation acknowledgement or progress notification.
                continue;
            }
            let events = resp
                .events()
                .iter()
                .filter_map(|ev| {
                    let kv = ev.kv()?;
                    Some(match ev.event_type() {
                        etcd_client::EventType::Put => WatchEvent::Put(KeyValue::from(kv)),
                        etcd_client::EventType::Delete => WatchEvent::Delete {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            prev: ev.prev_kv().map(KeyValue::from),
                            mod_revision: kv.mod_revision(),
                        },
                    })
                })
                .collect();
            return Ok((events, revision));
        }
    }
}
